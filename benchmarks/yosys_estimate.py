"""Yosys resource estimate of the core per preset, against the VCU1525's XCVU9P.

    python benchmarks/yosys_estimate.py [--preset tiny vcu1525] [--hierarchical]

Writes benchmarks/results/yosys_<preset>[_hier].md (and the Yosys log beside it).  ``--hierarchical``
synthesises the PE once and counts it rows × cols times and the rest module by module with the PE as a
black box, and adds a table per unit: no logic is optimised across module ports, so it counts some LUTs
more than a flat run.
The vcu1525 preset takes long (tens of minutes to hours on 2 cores): a
benchmark, not a test.  Targets (brief §4): ≤ 60% LUT and ≤ 80% DSP of the VU9P.
"""

import argparse
import dataclasses
import time
from pathlib import Path

from nmsat.fpga.estimate import VU9P, Estimate, estimate, yosys_command
from nmsat.hw.config import SATConfig
from nmsat.sw.cli import heartbeat


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["tiny"],
                        help="configuration presets to synthesise (default: tiny; vcu1525 takes hours)")
    parser.add_argument("--hierarchical", action="store_true", help="the PE once, times rows x cols")
    parser.add_argument("--array", help="override the presets' array as RxC (buffers and bus kept), e.g. 8x8")
    args = parser.parse_args()
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    for name in args.preset:
        cfg = SATConfig.preset(name)
        if args.array:
            rows, cols = (int(x) for x in args.array.lower().split("x"))
            cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{rows}x{cols}", rows=rows, cols=cols)
            name = cfg.name
        print(f"Yosys ({' '.join(yosys_command())}): synth_xilinx of preset {name} ({cfg.rows}x{cfg.cols}); "
              f"about 2 min at 4x4, 12 min at 8x8, hours at 32x32 on 2 cores", flush=True)
        t0 = time.perf_counter()
        with heartbeat(f"Yosys on {name}", every=30):
            suffix = "_hier" if args.hierarchical else ""
            est = estimate(cfg, log=out_dir / f"yosys_{name}{suffix}.log", hierarchical=args.hierarchical)
        wall = time.perf_counter() - t0
        util = est.utilisation()
        how = ", the PE synthesised once (hierarchical)" if args.hierarchical else ", flat"
        lines = [f"# Yosys estimate, preset `{name}` ({cfg.rows}x{cfg.cols}), synth_xilinx -family xcup{how}", "",
                 "| resource | count | XCVU9P | share |", "|---|---|---|---|"]
        for key, count in (("LUT", est.lut), ("FF", est.ff), ("DSP", est.dsp), ("BRAM36", est.bram36),
                           ("URAM", est.uram)):
            lines.append(f"| {key} | {count:g} | {VU9P[key]} | {util[key]:.2%} |")
        if est.units:
            lines += ["", "| unit | LUT | FF | DSP | BRAM36 |", "|---|---|---|---|---|"]
            for unit, cells in sorted(est.units.items(), key=lambda item: -Estimate(item[0], item[1]).lut):
                e = Estimate(unit, cells)
                lines.append(f"| {unit} | {e.lut:,} | {e.ff:,} | {e.dsp} | {e.bram36:g} |")
        lines += ["", f"Yosys wall time: {wall:.0f} s.", "", "Cells: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(est.cells.items()))]
        text = "\n".join(lines)
        print(text)
        (out_dir / f"yosys_{name}{suffix}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
