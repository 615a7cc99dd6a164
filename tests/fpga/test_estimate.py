"""Parsing of Yosys reports and the resource arithmetic (synthesis itself is a benchmark, not a test)."""

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
