"""The PE's cost and logic depth under Yosys (synth_xilinx for UltraScale+), against what 200 MHz allows.

    python benchmarks/pe_logic_depth.py

The PE (``nmsat_pe``, ``nmsat.hw.fp.PipelinedMac``: the product register and the four-stage fp32 adder)
is the module the array repeats rows × cols times.  ``nmsat.fpga.estimate.stage_depths`` gives the
deepest path into each stage's registers in cells (LUTs, wide muxes, the DSP, carry cells; Yosys's own
``ltp -noff`` does not see the mapped FDRE cells as registers).  At 200 MHz on a -2 UltraScale+ a cycle
of 5 ns holds roughly ten LUT levels with their routing (0.4–0.5 ns a level; a carry cell far less;
Vivado's timing report is the authority).
Writes benchmarks/results/pe_logic_depth.md.
"""

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from nmsat.fpga.estimate import parse_stat, stage_depths, yosys_command
from nmsat.hw.core.compute import PE_MODULE
from nmsat.hw.verilog import pe_verilog


#: the PE's register stages, by the names of the nets their registers drive
STAGES = {"product register": ("product", "add.b"), "adder stage 1 (order, exponent difference)": ("sig_x", "sig_y", "diff", "keep_1"),
          "adder stage 2 (alignment: a product, then by 16)": ("y_aligned", "x_ext", "keep_2"),
          "adder stage 3 (add, leading zeros, normalise by 8·k)": ("norm_high", "add.lz", "nonzero", "keep_3"),
          "adder stage 4 (normalise by 0 .. 7 as a product; round; special cases)": ("add.sum",)}


def main():
    pe = pe_verilog()  # the PE does not depend on the preset
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pe.v").write_text(pe)
        t0 = time.perf_counter()
        out = subprocess.run([*yosys_command(), "-p", f"read_verilog pe.v; synth_xilinx -family xcup -noiopad "
                              f"-flatten -top {PE_MODULE}; stat; write_json pe.json"], cwd=tmp, capture_output=True,
                             text=True)
        wall = time.perf_counter() - t0
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        depths = stage_depths(json.loads(Path(tmp, "pe.json").read_text()), PE_MODULE, STAGES)
    cells = parse_stat(out.stdout)
    luts = sum(n for c, n in cells.items() if re.fullmatch(r"LUT[1-6]", c))
    worst = max(d for d, _ in depths.values())
    lines = [f"# The PE (`{PE_MODULE}`) under Yosys ({' '.join(yosys_command())}), synth_xilinx -family xcup", "",
             f"- LUTs: **{luts}**, CARRY4: {cells.get('CARRY4', 0)}, DSP48E2: {cells.get('DSP48E2', 0)}, "
             f"flip-flops: {sum(n for c, n in cells.items() if c.startswith('FD'))}",
             f"- deepest stage: **{worst} cells** (the one-cycle PE it replaced: 55)", "",
             "| stage | cells | of which CARRY4 | LUT and mux levels |", "|---|---|---|---|"]
    lines += [f"| {stage} | {d} | {c} | {d - c} |" for stage, (d, c) in depths.items()]
    lines += ["", "200 MHz on a -2 UltraScale+ allows roughly 10 LUT levels a cycle; Vivado maps the carries to CARRY8 "
              "(half the cells of Yosys's CARRY4, each a fraction of a LUT level).",
              f"Yosys wall time: {wall:.1f} s", "", "Cells: " + ", ".join(f"{k} {v}" for k, v in sorted(cells.items())), ""]
    text = "\n".join(lines)
    print(text)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "pe_logic_depth.md").write_text(text)


if __name__ == "__main__":
    main()
