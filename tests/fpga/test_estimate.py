"""Parsing of Yosys reports and the resource arithmetic (synthesis itself is a benchmark, not a test)."""

import pytest

from nmsat.fpga.estimate import VU9P, Estimate, parse_stat

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
