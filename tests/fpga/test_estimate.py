"""Parsing of Yosys reports and the resource arithmetic (synthesis itself is a benchmark, not a test)."""

import shutil

import pytest

from nmsat.fpga.estimate import VU9P, Estimate, parse_module_stats, parse_stat, unit_cells

STAT = """
3. Printing statistics.

=== nmsat_core ===

   Number of wires:              17335
   Number of cells:              29745
     BUFG                            1
     CARRY4                        966
     DSP48E2                        18
     FDRE                         2649
     FDSE                            1
     LUT1                         1759
     LUT6                         2657
     RAM32M16                       40
     RAM64M8                        38
     RAMB18E2                        2
     RAMB36E2                        6
     URAM288                         3

"""


def test_parse_stat_reads_the_cell_table():
    cells = parse_stat("noise\nNumber of cells: 5\n  LUT1 1\n\n" + STAT)  # the last report wins
    assert cells["LUT6"] == 2657 and cells["DSP48E2"] == 18 and cells["URAM288"] == 3 and "BUFG" in cells
    with pytest.raises(ValueError, match="no `stat` report"):
        parse_stat("Yosys ended without a report")


def test_estimate_arithmetic():
    est = Estimate("tiny", parse_stat(STAT))
    assert est.lut == 1759 + 2657 + 8 * (40 + 38)
    assert est.ff == 2650 and est.dsp == 18 and est.bram36 == 7 and est.uram == 3
    assert est.utilisation()["DSP"] == pytest.approx(18 / VU9P["DSP"])


BY_MODULE = """
=== nmsat_core ===

   Number of cells:               9
     FDRE                           4
     LUT6                           3
     RAMB36E2                       1
     nmsat_core.compute              1
     nmsat_core.dispatch$563         1
     nmsat_pe                       16

=== nmsat_core.compute ===

   Number of cells:               7
     LUT3                           5
     nmsat_core.compute.drain_add_0_0      1

=== nmsat_core.compute.drain_add_0_0 ===

   Number of cells:               2
     LUT6                           2

=== nmsat_core.dispatch$563 ===

   Number of cells:               1
     DSP48E2                        1

=== design hierarchy ===

   nmsat_core                        1
     nmsat_core.compute              1

   Number of cells:              17
     FDRE                           4
     LUT3                           5
     LUT6                           5
"""


def test_cells_by_unit_of_a_design_not_flattened():
    modules = parse_module_stats(BY_MODULE)
    assert sorted(modules) == ["nmsat_core", "nmsat_core.compute", "nmsat_core.compute.drain_add_0_0",
                               "nmsat_core.dispatch$563"]
    units = unit_cells(modules, "nmsat_core")
    # a unit holds its submodules' cells; the top keeps its own, its black boxes among them
    assert units == {"top": {"FDRE": 4, "LUT6": 3, "RAMB36E2": 1, "nmsat_pe": 16},
                     "compute": {"LUT3": 5, "LUT6": 2}, "dispatch": {"DSP48E2": 1}}
    assert parse_stat(BY_MODULE) == {"FDRE": 4, "LUT3": 5, "LUT6": 5}  # the hierarchy's totals


def test_the_verilog_has_one_pe_module_instantiated_rows_times_cols():
    """The hierarchical estimate and the Verilator builds rest on it: the PE written once, the array of
    instances of it (the Amaranth simulation keeps its own PEs)."""
    import re

    from nmsat.hw.config import SATConfig
    from nmsat.hw.core.compute import PE_MODULE
    from nmsat.hw.verilog import verilog_parts

    cfg = SATConfig.tiny()
    core, pe = verilog_parts(cfg)
    assert len(re.findall(rf"^\s*{PE_MODULE} \S+ \(", core, flags=re.M)) == cfg.rows * cfg.cols
    assert f"module {PE_MODULE}(" in pe and f"module {PE_MODULE}(" not in core


def test_generator_digest_follows_the_config_and_the_rtl_sources(tmp_path, monkeypatch):
    """The build caches are keyed by it: another config, or an edited RTL file, gives another digest."""
    import dataclasses
    from pathlib import Path

    import nmsat.hw.verilog as verilog
    from nmsat.hw.config import SATConfig

    tiny = SATConfig.tiny()
    assert verilog.generator_digest(tiny) == verilog.generator_digest(SATConfig.tiny())
    assert verilog.generator_digest(dataclasses.replace(tiny, mem_read_latency=tiny.mem_read_latency + 1)) != \
        verilog.generator_digest(tiny)
    copy = tmp_path / "hw"
    for path in Path(verilog.__file__).parent.rglob("*.py"):
        target = copy / path.relative_to(Path(verilog.__file__).parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    monkeypatch.setattr(verilog, "__file__", str(copy / "verilog.py"))
    same = verilog.generator_digest(tiny)
    (copy / "fp.py").write_text((copy / "fp.py").read_text() + "\n# edited\n")
    assert verilog.generator_digest(tiny) != same


def test_the_pe_black_box_has_the_pe_modules_ports():
    """The estimate synthesises the core around this stub: its ports must be the PE's own."""
    import re

    from nmsat.hw.verilog import pe_blackbox, pe_verilog

    def ports(text):
        return sorted(re.findall(r"(input|output) (?:wire )?(?:\[(\d+):0\] )?(\w+)[;,)]", text))

    from nmsat.hw.core.compute import PE_MODULE

    pe = pe_verilog()
    pe = pe[pe.index(f"module {PE_MODULE}("):]
    pe = pe[:pe.index("endmodule")]  # the PE module itself, not its multiplier and adder
    # a, b, the four controls, clock, reset and the sum
    assert ports(pe_blackbox()) == ports(pe) and len(ports(pe)) == 9


def _cell(kind, inputs, outputs, **parameters):
    ports = {**{p: "input" for p in inputs}, **{p: "output" for p in outputs}}
    return {"type": kind, "parameters": parameters, "port_directions": ports, "connections": {**inputs, **outputs}}


def test_register_depths_count_cells_between_registers():
    """A hand-made mapped netlist: FF q0 → LUT → CARRY4 → LUT → FF q1 (3 cells, one carry); q1 → DSP with
    its output register → FF q2 (the DSP's register starts the path: 0); an input → LUT → FF q3 (1); FF q1's
    output feeds FF q0 through one LUT as well (a loop through registers is no loop)."""
    from nmsat.fpga.estimate import register_depths

    cells = {
        "ff0": _cell("FDRE", {"D": [10], "C": [1]}, {"Q": [2]}),
        "lut_a": _cell("LUT2", {"I0": [2], "I1": [2]}, {"O": [3]}),
        "carry": _cell("CARRY4", {"DI": [3]}, {"CO": [4]}),
        "lut_b": _cell("LUT2", {"I0": [4], "I1": [2]}, {"O": [5]}),
        "ff1": _cell("FDRE", {"D": [5], "C": [1]}, {"Q": [6]}),
        "dsp": _cell("DSP48E2", {"A": [6]}, {"P": [7]}, PREG="00000000000000000000000000000001"),
        "ff2": _cell("FDRE", {"D": [7], "C": [1]}, {"Q": [8]}),
        "lut_c": _cell("LUT1", {"I0": [9]}, {"O": [11]}),
        "ff3": _cell("FDRE", {"D": [11], "C": [1]}, {"Q": [12]}),
        "lut_d": _cell("LUT1", {"I0": [6]}, {"O": [10]}),
    }
    netnames = {name: {"bits": [bit]} for name, bit in
                (("clk", 1), ("q0", 2), ("q1", 6), ("q2", 8), ("inp", 9), ("q3", 12), ("$auto$x", 5))}
    depths = register_depths({"modules": {"top": {"cells": cells, "netnames": netnames}}}, "top")
    assert depths == {"q0": (1, 0), "q1": (3, 1), "q2": (0, 0), "q3": (1, 0)}
    # without its output register the DSP is a level of logic
    cells["dsp"]["parameters"]["PREG"] = "0"
    assert register_depths({"modules": {"top": {"cells": cells, "netnames": netnames}}}, "top")["q2"] == (1, 0)


@pytest.mark.skipif(shutil.which("yosys") is None, reason="needs a native Yosys (apt-get install yosys)")
def test_the_pipelined_pe_is_shallow_where_the_one_cycle_mac_was_deep(tmp_path):
    """Yosys maps the PE; no stage of it is deeper than 16 cells, while the one-cycle MAC it replaced (its
    product and sum in one combinational path, registered here at its output) is over 40."""
    import json
    import subprocess

    from amaranth.back import verilog
    from amaranth.hdl import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from nmsat.fpga.estimate import register_depths
    from nmsat.hw.fp import Bf16Mac
    from nmsat.hw.verilog import pe_verilog

    class RegisteredMac(wiring.Component):  # the old PE: acc <= acc + a * b
        a: In(16)
        b: In(16)
        acc: Out(32)

        def elaborate(self, platform):
            m = Module()
            m.submodules.mac = mac = Bf16Mac()
            m.d.comb += [mac.a.eq(self.a), mac.b.eq(self.b), mac.acc_in.eq(self.acc)]
            m.d.sync += self.acc.eq(mac.acc_out)
            return m

    def deepest(text, top):
        (tmp_path / f"{top}.v").write_text(text)
        subprocess.run(["yosys", "-q", "-p", f"read_verilog {top}.v; synth_xilinx -family xcup -noiopad -flatten "
                        f"-top {top}; write_json {top}.json"], cwd=tmp_path, check=True, capture_output=True)
        return max(d for d, _ in register_depths(json.loads((tmp_path / f"{top}.json").read_text()), top).values())

    assert deepest(pe_verilog(), "nmsat_pe") <= 16
    assert deepest(verilog.convert(RegisteredMac(), name="old_pe", emit_src=False), "old_pe") > 40
