"""The PE's cost and logic depth under Yosys (synth_xilinx for UltraScale+), against what 200 MHz allows.

    python benchmarks/pe_logic_depth.py

The PE (``nmsat_pe``: a bf16 × bf16 product added to an fp32 accumulator, one cycle, combinational) is the
module the array repeats rows × cols times.  Yosys's ``ltp -noff`` gives its longest topological path in
cells (LUTs, carry chains, the DSP); at 200 MHz on a -2 UltraScale+ a cycle of 5 ns holds roughly ten
LUT levels with their routing (0.4–0.5 ns a level; Vivado's timing report is the authority).
Writes benchmarks/results/pe_logic_depth.md.
"""

import re
import subprocess
import tempfile
import time
from pathlib import Path

from nmsat.fpga.estimate import parse_stat, yosys_command
from nmsat.hw.core.compute import PE_MODULE
from nmsat.hw.verilog import pe_verilog


def main():
    pe = pe_verilog()  # the PE does not depend on the preset
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pe.v").write_text(pe)
        t0 = time.perf_counter()
        out = subprocess.run([*yosys_command(), "-p", f"read_verilog pe.v; synth_xilinx -family xcup -noiopad "
                              f"-flatten -top {PE_MODULE}; stat; ltp -noff"], cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    cells = parse_stat(out.stdout[:out.stdout.rfind("Longest topological")])
    depth = int(re.search(r"Longest topological path in \S+ \(length=(\d+)\)", out.stdout).group(1))
    luts = sum(n for c, n in cells.items() if re.fullmatch(r"LUT[1-6]", c))
    text = "\n".join([
        f"# The PE (`{PE_MODULE}`) under Yosys ({' '.join(yosys_command())}), synth_xilinx -family xcup", "",
        f"- LUTs: **{luts}**, CARRY4: {cells.get('CARRY4', 0)}, DSP48E2: {cells.get('DSP48E2', 0)}, "
        f"flip-flops: {sum(n for c, n in cells.items() if c.startswith('FD'))}",
        f"- longest topological path: **{depth} cells** (one cycle: the product and the fp32 add are combinational)",
        "- 200 MHz on a -2 UltraScale+ allows roughly 10 LUT levels a cycle: the PE needs pipelining "
        f"(about {-(-depth // 10)} stages at this depth) or a cheaper accumulation",
        f"- Yosys wall time: {wall:.1f} s", "", "Cells: " + ", ".join(f"{k} {v}" for k, v in sorted(cells.items())), ""])
    print(text)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "pe_logic_depth.md").write_text(text)


if __name__ == "__main__":
    main()
