"""Logic depth of every unit of the core under Yosys, register to register, against what 200 MHz allows.

    python benchmarks/core_logic_depth.py [--preset tiny] [--netlist FILE.json]

Synthesises the whole core flat (``synth_xilinx -family xcup``, the PE inlined from its Verilog), writes
Yosys's JSON netlist and reads the deepest path into each register (``nmsat.fpga.estimate.register_depths``:
LUTs, wide muxes, DSPs and carry cells, from registers, block RAM outputs and inputs).  Registers are
grouped by unit (the first part of their hierarchical name); for each unit the deepest register and the
count of registers deeper than 16 cells.  The depth of a unit does not depend on the array's size, so the
tiny preset (minutes) stands for vcu1525.  Writes benchmarks/results/core_logic_depth_<preset>.md.
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from nmsat.fpga.estimate import register_depths, yosys_command
from nmsat.hw.config import SATConfig
from nmsat.hw.verilog import TOPLEVEL, pe_verilog, rtlil_core
from nmsat.sw.cli import heartbeat

#: deeper than this many cells is flagged (the PE's deepest stage is 14, 7 of them carry cells)
LIMIT = 16


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--netlist", type=Path, help="keep Yosys's JSON netlist here, and read it instead of "
                        "synthesising again if it exists")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    if args.netlist and args.netlist.exists():
        report(cfg, json.loads(args.netlist.read_text()), None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pe.v").write_text(pe_verilog())
        Path(tmp, "core.il").write_text(rtlil_core(cfg))
        t0 = time.perf_counter()
        with heartbeat(f"Yosys on {cfg.name}", every=30):
            out = subprocess.run([*yosys_command(), "-q", "-p", f"read_verilog pe.v; read_rtlil core.il; synth_xilinx "
                                  f"-family xcup -noiopad -flatten -top {TOPLEVEL}; write_json core.json"],
                                 cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        if args.netlist:
            args.netlist.write_bytes(Path(tmp, "core.json").read_bytes())
        report(cfg, json.loads(Path(tmp, "core.json").read_text()), wall)


def report(cfg, netlist, wall):
    depths = register_depths(netlist, TOPLEVEL)
    units: dict[str, list[tuple[tuple[int, int], str]]] = {}
    for net, depth in depths.items():
        unit = "(unnamed nets)" if net.startswith("$") else net.split(".")[0].split("$")[0] if "." in net else "top"
        unit = "pe array" if unit.startswith("pe_") or ".pe_" in net else unit
        units.setdefault(unit, []).append((depth, net))
    lines = [f"# Logic depth by unit, preset `{cfg.name}` (Yosys {' '.join(yosys_command())}, synth_xilinx -family xcup, flat)",
             "", f"| unit | registers | deepest (cells, of which carry) | its register | deeper than {LIMIT} |",
             "|---|---|---|---|---|"]
    for unit, regs in sorted(units.items(), key=lambda item: -max(item[1])[0][0]):
        (d, c), net = max(regs)
        lines.append(f"| {unit} | {len(regs)} | {d} ({c}) | `{net}` | {sum(x[0][0] > LIMIT for x in regs)} |")
    lines += ["", (f"Yosys wall time: {wall:.0f} s. " if wall else "") + "200 MHz on a -2 UltraScale+ allows roughly 10 LUT levels a "
              "cycle (a carry cell is a fraction of one).", ""]
    text = "\n".join(lines)
    print(text)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"core_logic_depth_{cfg.name}.md").write_text(text)


if __name__ == "__main__":
    main()
