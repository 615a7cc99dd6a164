"""E2GC against FgGC at comparable FLOPs: one training iteration of MobileNet-V1 and ResNeXt-50 shapes with
their grouped 3×3s of a constant group size G (E2GC) and of a fixed number of groups g (FgGC, the g whose
FF MACs match most nearly), dense and BDWP 2:8: cycles, utilisation, DRAM traffic and estimated energy.

    python benchmarks/e2gc_vs_fggc.py [--preset vcu1525] [--batch 8] [--group-size 4]

Each iteration is timed on the simulator (``nmsat.sw.iteration``, everything on by default); its energy
(``nmsat.sw.energy``, Horowitz ISSCC 2014) counts the programs the timer ran (GEMMs, walks, the norms'
walks) and prices the stream passes' DRAM traffic (elements × arrays read and written); not counted: the
pre-generation (weights only) and the stream passes' arithmetic.  Energy efficiency as the E2GC paper
measures it, images per joule at comparable FLOPs (here: FgGC's energy per iteration over E2GC's), and per
useful MAC (MACs per µJ); the paper reports +10.8% (MobileNet-V1) and +4.73% (ResNeXt-50) over FgGC on a
P100.
Writes benchmarks/results/e2gc_vs_fggc_<preset>_b<batch>_G<G>.md.
"""

import argparse
import os
import time
from pathlib import Path

from nmsat.dataflow.models import build_model, fggc_twin
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.energy import ENERGY_PJ, Counts, count_programs, energy_pj
from nmsat.sw.iteration import Timer, charged_passes, time_iteration


def measure(cfg, core, layers, pattern):
    """(cycles, useful MACs, DRAM bytes, energy µJ) of one iteration."""
    timer = Timer(cfg, core, record=True)
    report = time_iteration(cfg, layers, pattern, core=core, timer=timer)
    counts = Counts()
    for key in timer.calls:  # an interleaved BP + WU stream is timed to compare: its layer's BP and WU are counted
        if key[0] != "interleaved":
            counts += count_programs(cfg, timer.programs[key])
    stream_bytes = sum(p.elements * (p.reads + p.writes) * (2 if p.bf16 else 4)
                       for x, c in zip(layers, report.layers) for p in charged_passes(x, c.norm > 0))
    energy = energy_pj(cfg, counts)
    energy["dram"] += stream_bytes / 8 * ENERGY_PJ["dram_64b"]
    n, m = pattern or (1, 1)
    useful = round(sum(g.macs * (n / m if x.sparse and pattern and g.stage in ("FF", "BP") else 1)
                       for x in layers for g in x.gemms))
    return report.total, useful, counts.dram_read + counts.dram_written + stream_bytes, sum(energy.values()) / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="training batch size (default: %(default)s)")
    parser.add_argument("--group-size", type=int, default=4, help="E2GC's constant group size G (default: %(default)s)")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    core = CoreModel(cfg)
    t0 = time.perf_counter()
    pes = cfg.rows * cfg.cols
    lines = [f"# E2GC (G = {args.group_size}) against FgGC at comparable FLOPs, batch {args.batch}, preset `{cfg.name}` "
             f"({cfg.rows}x{cfg.cols}, {cfg.bus_bytes}-byte port), one training iteration", "",
             "| model | grouping | FF MACs vs E2GC | pattern | cycles | utilisation | DRAM MB | energy mJ | "
             "MACs per µJ | E2GC's images per J over FgGC's | E2GC's speed over FgGC's |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in ("mobilenet_v1", "resnext50"):
        g, ratio = fggc_twin(model, args.group_size, args.batch)
        groupings = [(f"E2GC G = {args.group_size}", dict(group_size=args.group_size, groups=None), 1.0),
                     (f"FgGC g = {g}", dict(group_size=None, groups=g), ratio)]
        for pattern in (None, (2, 8)):
            results = []
            for label, keywords, macs_ratio in groupings:
                layers = build_model(model, args.batch, **keywords)
                cycles, useful, dram, energy = measure(cfg, core, layers, pattern)
                results.append((label, macs_ratio, cycles, useful, dram, energy))
            e2gc_energy, e2gc_cycles = results[0][5], results[0][2]
            for label, macs_ratio, cycles, useful, dram, energy in results:
                versus = ("| | |" if label.startswith("E2GC") else
                          f"| {energy / e2gc_energy - 1:+.1%} | {cycles / e2gc_cycles - 1:+.1%} |")
                lines.append(f"| {model} | {label} | {macs_ratio:.3f} | {'dense' if pattern is None else '2:8'} | "
                             f"{cycles:,} | {useful / (cycles * pes):.1%} | {dram / 1e6:,.0f} | {energy / 1e3:,.2f} | "
                             f"{useful / energy:,.0f} {versus}")
    lines += ["", "Energies: Horowitz, ISSCC 2014 (45 nm), as in nmsat.sw.energy; a relative model of an ASIC, not "
              "the FPGA's power. Utilisation: useful MACs (BDWP's FF and BP at n/m) over cycles × PEs.",
              f"Simulator wall time (timing only): {time.perf_counter() - t0:.1f} s; load average "
              f"{os.getloadavg()[0]:.2f}."]
    out = Path(__file__).parent / "results" / f"e2gc_vs_fggc_{cfg.name}_b{args.batch}_G{args.group_size}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
