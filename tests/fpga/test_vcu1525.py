"""The VCU1525 shell and its Vivado project: every top-level port constrained and every clock defined, the
part right, the top level lints under Verilator with black boxes for the vendor IP, and `nmsat fpga build`
stops after the project (exit status 3) when Vivado is absent."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nmsat.fpga.vcu1525.board import BITSTREAM, CLOCKS, PART, PINS
from nmsat.fpga.vcu1525.shell import TOP, constraints, ip_stubs, ip_tcl, shell_verilog, top_ports
from nmsat.fpga.vivado import NO_VIVADO, write_project
from nmsat.hw.config import SATConfig
from nmsat.hw.verilog import verilog_source
from nmsat.sw.cli import main

TINY = SATConfig.tiny()
GT_PORTS = {"pcie_refclk_p", "pcie_refclk_n", "pcie_rx_p", "pcie_rx_n", "pcie_tx_p", "pcie_tx_n"}


def xdc_pins(text):
    """port (bit) → package pin, and port → I/O standard, from ``set_property`` lines."""
    pins, standards = {}, {}
    for key, value, port in re.findall(r"set_property (\S+) (\S+) \[get_ports \{([^}]+)\}\]", text):
        if key == "PACKAGE_PIN":
            pins[port] = value
        elif key == "IOSTANDARD":
            standards[port.removesuffix("[*]")] = value
    return pins, standards


def test_every_top_level_port_bit_has_a_pin_and_every_pin_is_used_once():
    pins, standards = xdc_pins(constraints())
    ports = top_ports()
    for name, (_, width) in ports.items():
        bits = [name] if width == 1 else [f"{name}[{i}]" for i in range(width)]
        assert all(b in pins for b in bits), name
        assert (name in standards) == (name not in GT_PORTS), name
    assert len(pins) == sum(w for _, w in ports.values())
    assert len(set(pins.values())) == len(pins), "a package pin is assigned twice"
    # the top module declares exactly these ports
    header = shell_verilog(TINY).split(");", 1)[0]
    declared = dict(re.findall(r"(?:input|output|inout) wire (?:\[(\d+):0\] )?(\w+)", header)[i][::-1]
                    for i in range(len(ports)))
    assert {n: int(w or 0) + 1 for n, w in declared.items()} == {n: w for n, (_, w) in ports.items()}


def test_the_ddr4_pins_are_the_rdimms_and_the_pcie_link_is_x16():
    assert len(PINS["ddr4_dq"].pins) == 72 and len(PINS["ddr4_dqs_t"].pins) == len(PINS["ddr4_dqs_c"].pins) == 18
    assert len(PINS["ddr4_adr"].pins) == 17
    assert all(len(PINS[f"pcie_{d}_{s}"].pins) == 16 for d in ("rx", "tx") for s in ("p", "n"))


def test_every_clock_is_defined_and_the_bitstream_is_configured():
    text = constraints()
    clocks = dict((port, float(period)) for period, port in
                  re.findall(r"create_clock -period ([\d.]+) -name \S+ \[get_ports (\S+)\]", text))
    assert clocks == CLOCKS
    clock_ports = {n for n in top_ports() if re.search(r"(refclk|clk)_p$", n)}
    assert clock_ports == set(clocks)
    for key, value in BITSTREAM.items():
        assert f"set_property {key} {value} [current_design]" in text


def test_the_ip_is_made_from_tcl_for_the_right_link_and_memory():
    tcl = ip_tcl(SATConfig.vcu1525())
    for module in ("xdma_0", "ddr4_0", "axi_interconnect_0", "axi_lite_cdc"):
        assert f"-module_name {module}" in tcl and f"[get_ips {module}]" in tcl
    for setting in ("CONFIG.pl_link_cap_max_link_width {X16}", "CONFIG.pl_link_cap_max_link_speed {8.0_GT/s}",
                    "CONFIG.functional_mode {DMA}", "CONFIG.axilite_master_en {true}",
                    "CONFIG.C0.DDR4_MemoryPart {MTA18ASF2G72PZ-2G3}", "CONFIG.C0.DDR4_AxiAddressWidth {34}",
                    "CONFIG.S01_AXI_DATA_WIDTH {512}"):
        assert setting in tcl, setting
    assert ".xci" not in tcl  # nothing binary


def test_the_project_has_the_part_the_sources_and_the_hooks(tmp_path):
    project = write_project(TINY, tmp_path, core_verilog="module nmsat_core(); endmodule\n")
    script = (tmp_path / f"{project.name}.tcl").read_text()
    assert f"set_property part {PART} [current_project]" in script
    for line in ("read_verilog {nmsat_core.v}", f"read_verilog {{{TOP}.v}}", "read_xdc {vcu1525.xdc}",
                 "source {ip.tcl}", "source {hooks.tcl}", f"set_property top {TOP} [current_fileset]"):
        assert line in script, line
    assert "write_cfgmem" in (tmp_path / "post_bitstream.tcl").read_text()
    assert "report_timing_summary" in (tmp_path / "post_route.tcl").read_text()
    again = write_project(TINY, tmp_path / "again", core_verilog="module nmsat_core(); endmodule\n")
    assert again.digest == project.digest  # same config and files: the same build


def lint(folder: Path, top_text: str) -> subprocess.CompletedProcess:
    from nmsat.sw.rtl import _environment, verilator_binary

    (folder / "top.v").write_text(top_text)
    (folder / "stubs.v").write_text(ip_stubs(TINY))
    core = folder / "nmsat_core.v"
    if not core.exists():
        core.write_text(verilog_source(TINY))
    (folder / "waive.vlt").write_text('`verilator_config\nlint_off -file "*nmsat_core.v"\n')  # Amaranth's own style
    return subprocess.run([str(verilator_binary()), "--lint-only", "--top-module", TOP, "waive.vlt", "top.v",
                           "stubs.v", "nmsat_core.v"], cwd=folder, capture_output=True, text=True,
                          env=_environment(), timeout=600)


def test_the_shell_lints_under_verilator_with_the_vendor_ip_as_black_boxes(tmp_path):
    top = shell_verilog(TINY)
    out = lint(tmp_path, top)
    assert out.returncode == 0, out.stderr[-3000:]
    # and the lint would see a wrong connection: the core's 8-bit register address fed 7 bits
    broken = top.replace(".csr__awaddr(lite_core_awaddr[7:0])", ".csr__awaddr(lite_core_awaddr[6:0])")
    assert broken != top
    out = lint(tmp_path, broken)
    assert out.returncode != 0 and "csr__awaddr" in out.stderr


def test_fpga_build_without_vivado_writes_the_project_and_exits_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no Vivado here, whatever the machine has
    assert shutil.which("vivado") is None
    assert main(["fpga", "build", "--preset", "tiny", "--out", str(tmp_path / "p")]) == NO_VIVADO
    out = capsys.readouterr().out
    assert "Vivado is not on PATH" in out and (tmp_path / "p" / "Makefile").exists()
    assert main(["fpga", "build", "--board", "kc705"]) == 2


@pytest.mark.skipif(shutil.which("vivado") is None, reason="Vivado is not installed: synthesis, placement, "
                    "routing and the bitstream cannot run here")
def test_fpga_build_with_vivado_makes_the_bitstream(tmp_path):
    assert main(["fpga", "build", "--preset", "tiny", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "nmsat_vcu1525.bit").exists()
