"""One grouped 3×3 convolution at several group sizes G: its groups one by one against packed several per
array pass (``nmsat.dataflow.groupconv``) and against group walks (``nmsat.dataflow.groupwalk``: a tile of
channels a walk), dense, on the simulator (timing only).

    python benchmarks/group_conv_packing.py [--preset vcu1525] [--channels 256] [--size 28] [--batch 32]

For each G: the FF, BP and WU cycles of the layer, apart and packed (the timer's choice, ``Timer.packed_groups``:
packed where the planners estimate it faster), walked (``Timer.group_walk`` / ``Timer.group_wu``, forced),
and the array's utilisation (MACs / (cycles · PEs)).  Writes
benchmarks/results/group_conv_packing_<preset>_c<channels>_s<size>_b<batch>.md with the machine's load.
"""

import argparse
import os
import time
from pathlib import Path

from nmsat.dataflow.models import WorkBuilder
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.iteration import Timer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", default="1,2,4,8,16,32", help="group sizes G, comma-separated")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    pes = cfg.rows * cfg.cols
    lines = [f"# A grouped 3x3 convolution, {args.channels} channels at {args.size}x{args.size}, batch {args.batch}, "
             f"preset `{cfg.name}` ({cfg.rows}x{cfg.cols}), dense", "",
             "| G | groups | MACs (FF) | FF apart | FF packed | FF walked | BP apart | BP packed | BP walked | "
             "WU apart | WU packed | WU walked | utilisation apart | utilisation packed | utilisation walked |",
             "|" + "---|" * 15]
    load0 = os.getloadavg()[0]
    start = time.time()
    for group_size in (int(x) for x in args.sizes.split(",")):
        b = WorkBuilder(args.batch)
        b.conv("stem", 3, args.channels, args.size, 3, padding=1, first=True)
        b.conv("grouped", args.channels, args.channels, args.size, 3, padding=1,
               groups=args.channels // group_size)
        b.linear("fc", args.batch, args.channels, 10)
        layer = b.done()[1]
        timer = Timer(cfg, CoreModel(cfg))
        row, apart_total, packed_total, walked_total, macs = {}, 0, 0, 0, 0
        for g in layer.gemms:
            apart = timer.gemm_batch(g.m, g.n, g.k, None, g.stage != "WU", g.count)
            packed = timer.packed_groups(g, g.stage != "WU", True)
            walked = (timer.group_wu(layer.conv, g, force=True) if g.stage == "WU" else
                      timer.group_walk(layer.conv, g.stage, g, force=True))
            row[g.stage] = (apart, packed, walked)
            apart_total += apart
            packed_total += apart if packed is None else packed
            walked_total += (apart if packed is None else packed) if walked is None else walked
            macs += g.macs
        ff_macs = sum(g.macs for g in layer.gemms if g.stage == "FF")
        cells = []
        for stage in ("FF", "BP", "WU"):
            apart, packed, walked = row[stage]
            cells += [f"{apart:,}", "—" if packed is None else f"{packed:,}", "—" if walked is None else f"{walked:,}"]
        lines.append(f"| {group_size} | {args.channels // group_size} | {ff_macs:,} | " + " | ".join(cells) +
                     f" | {macs / (apart_total * pes):.1%} | {macs / (packed_total * pes):.1%} | "
                     f"{macs / (walked_total * pes):.1%} |")
        print(lines[-1], flush=True)
    lines += ["", f"— means the timer keeps the groups apart there (no packing, or not estimated faster), or (walked) "
              f"no group walk exists for that G (it must divide an m of the config dividing rows). "
              f"Wall time {time.time() - start:.0f} s, load average {load0:.2f} at the start and "
              f"{os.getloadavg()[0]:.2f} at the end, {os.cpu_count()} CPUs."]
    out = Path(__file__).parent / "results" / (f"group_conv_packing_{cfg.name}_c{args.channels}_s{args.size}"
                                               f"_b{args.batch}.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
