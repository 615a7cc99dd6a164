"""The VCU1525 shell: the core joined to PCIe (XDMA) and one DDR4 channel, as Verilog, Tcl and XDC text.

Holds :func:`shell_verilog` (the top module ``nmsat_vcu1525_top``), :func:`ip_tcl` (the vendor IP made
from Tcl: nothing binary is checked in), :func:`constraints` (the XDC: pins and clocks of
:mod:`.board`, bitstream properties), :func:`hooks_tcl` (reports after routing, the .mcs after the
bitstream) and :func:`ip_stubs` (black-box modules of the vendor IP with the ports the top uses, so the
top lints under Verilator without Vivado).

The design::

    PCIe x16 Gen3 ── xdma_0 (DMA mode, 512-bit AXI4 master at 250 MHz; AXI4-Lite master on BAR0)
                       │ m_axi (host DMA)          │ m_axil (registers)
                       ▼                           ▼
                  axi_interconnect_0 S00      axi_lite_cdc (250 MHz → core clock)
    core mem   ──────► S01                          │
    core spmem ──────► S02                          ▼
                       │ M00 (512-bit)          nmsat_core csr
                       ▼
                  ddr4_0 (C0 RDIMM, 300 MHz reference; ui clock 300 MHz, addn_ui_clkout1 = the core clock)

The XDMA's ``/dev/xdma0_user`` BAR reaches the core's registers; ``/dev/xdma0_h2c_0`` / ``c2h_0`` move
host memory to and from DDR4 at the core's address 0 (``nmsat.sw.transports.xdma``).  The IP port names
follow the IP product guides (PG195 XDMA, PG150 DDR4 MIG, PG059 AXI Interconnect, and the AXI Clock
Converter's guide); they are checked by Vivado's elaboration, not here.

Not here: the Vivado project and the run (``nmsat.fpga.vivado``).
"""

from __future__ import annotations

from ...hw.config import SATConfig
from ...hw.verilog import TOPLEVEL
from .board import BITSTREAM, CLOCKS, FLASH, PINS

__all__ = ["TOP", "shell_verilog", "ip_tcl", "constraints", "hooks_tcl", "ip_stubs", "top_ports", "CORE_CLOCK_MHZ"]

TOP = "nmsat_vcu1525_top"
#: the core's clock, from the DDR4 IP's additional user clock
CORE_CLOCK_MHZ = 200
HOST_ID_BITS = 4  # XDMA's m_axi ID width (PG195)
ADDR_BITS_HOST = 64

# AXI4 signals: (channel signal, width key or number, driven by the master)
_AXI4 = [("awid", "id", True), ("awaddr", "addr", True), ("awlen", 8, True), ("awsize", 3, True),
         ("awburst", 2, True), ("awlock", 1, True), ("awcache", 4, True), ("awprot", 3, True), ("awvalid", 1, True),
         ("awready", 1, False), ("wdata", "data", True), ("wstrb", "strb", True), ("wlast", 1, True),
         ("wvalid", 1, True), ("wready", 1, False), ("bid", "id", False), ("bresp", 2, False), ("bvalid", 1, False),
         ("bready", 1, True), ("arid", "id", True), ("araddr", "addr", True), ("arlen", 8, True), ("arsize", 3, True),
         ("arburst", 2, True), ("arlock", 1, True), ("arcache", 4, True), ("arprot", 3, True), ("arvalid", 1, True),
         ("arready", 1, False), ("rid", "id", False), ("rdata", "data", False), ("rresp", 2, False),
         ("rlast", 1, False), ("rvalid", 1, False), ("rready", 1, True)]
_LITE = [("awaddr", "addr", True), ("awprot", 3, True), ("awvalid", 1, True), ("awready", 1, False),
         ("wdata", 32, True), ("wstrb", 4, True), ("wvalid", 1, True), ("wready", 1, False), ("bresp", 2, False),
         ("bvalid", 1, False), ("bready", 1, True), ("araddr", "addr", True), ("arprot", 3, True),
         ("arvalid", 1, True), ("arready", 1, False), ("rdata", 32, False), ("rresp", 2, False), ("rvalid", 1, False),
         ("rready", 1, True)]
#: what a master without the signal drives (the core has no lock, cache or prot on its AXI4 ports)
_DEFAULTS = {"awlock": "1'b0", "arlock": "1'b0", "awcache": "4'b0011", "arcache": "4'b0011", "awprot": "3'b000",
             "arprot": "3'b000"}


def _width(key, widths: dict) -> int:
    return widths[key] if isinstance(key, str) else key


class _Bus:
    """One AXI connection: its wires, and the port maps of the master and slave ends."""

    def __init__(self, net: str, signals, widths: dict):
        self.net, self.signals, self.widths = net, signals, widths

    def wires(self) -> list[str]:
        return [f"  wire {_range(_width(k, self.widths))}{self.net}_{s};" for s, k, _ in self.signals]

    def connect(self, port_name, *, master: bool, has=None, width_of=None) -> dict[str, str]:
        """Port → expression for one end; ``port_name(signal)`` names its ports; ``has`` limits the signals it
        has (a master without one gets the default driven onto the wire)."""
        ports = {}
        for s, k, from_master in self.signals:
            if has is not None and s not in has:
                continue
            wire = f"{self.net}_{s}"
            if width_of is not None and width_of.get(s) is not None and width_of[s] < _width(k, self.widths):
                wire = f"{wire}[{width_of[s] - 1}:0]" if width_of[s] > 1 else f"{wire}[0]"
            ports[port_name(s)] = wire
        return ports

    def defaults(self, has) -> list[str]:
        return [f"  assign {self.net}_{s} = {_DEFAULTS[s]};" for s, _, from_master in self.signals
                if from_master and s not in has]


def _range(width: int) -> str:
    return f"[{width - 1}:0] " if width > 1 else ""


def _axi4_widths(data_bits: int, addr_bits: int, id_bits: int) -> dict:
    return {"data": data_bits, "strb": data_bits // 8, "addr": addr_bits, "id": id_bits}


_CORE_AXI4 = {"awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "awready", "wdata", "wstrb", "wlast",
              "wvalid", "wready", "bid", "bresp", "bvalid", "bready", "arid", "araddr", "arlen", "arsize", "arburst",
              "arvalid", "arready", "rid", "rdata", "rresp", "rlast", "rvalid", "rready"}


def _ic_id_bits(slaves: int) -> int:
    """The interconnect's M00 ID width: the slaves' ID width and the bits naming the slave port."""
    return HOST_ID_BITS + max(1, (slaves - 1).bit_length())


def _buses(cfg: SATConfig) -> dict[str, _Bus]:
    core_bits, ddr_bits = 8 * cfg.bus_bytes, 512
    return {
        "host": _Bus("host", _AXI4, _axi4_widths(512, cfg.addr_bits, HOST_ID_BITS)),
        "core_mem": _Bus("core_mem", _AXI4, _axi4_widths(core_bits, cfg.addr_bits, HOST_ID_BITS)),
        "core_sp": _Bus("core_sp", _AXI4, _axi4_widths(core_bits, cfg.addr_bits, HOST_ID_BITS)),
        "ddr": _Bus("ddr", _AXI4, _axi4_widths(ddr_bits, cfg.addr_bits, _ic_id_bits(3))),
        "lite_host": _Bus("lite_host", _LITE, {"addr": 32}),
        "lite_core": _Bus("lite_core", _LITE, {"addr": 32}),
    }


def _ip_ports(cfg: SATConfig) -> dict[str, dict[str, tuple[str, int]]]:
    """The vendor IP's ports the top uses: module → port → (direction, width).  One table for the
    instantiations and for the lint stubs."""
    buses = _buses(cfg)

    def bus_ports(bus, name, master):
        out = {}
        for s, k, from_master in bus.signals:
            out[name(s)] = ("output" if from_master == master else "input", _width(k, bus.widths))
        return out

    host = dict(bus_ports(buses["host"], lambda s: f"m_axi_{s}", True))
    host["m_axi_awaddr"] = host["m_axi_araddr"] = ("output", ADDR_BITS_HOST)
    xdma = {"sys_clk": ("input", 1), "sys_clk_gt": ("input", 1), "sys_rst_n": ("input", 1),
            "pci_exp_txp": ("output", 16), "pci_exp_txn": ("output", 16), "pci_exp_rxp": ("input", 16),
            "pci_exp_rxn": ("input", 16), "axi_aclk": ("output", 1), "axi_aresetn": ("output", 1),
            "user_lnk_up": ("output", 1), "usr_irq_req": ("input", 1), "usr_irq_ack": ("output", 1),
            "msi_enable": ("output", 1), "msi_vector_width": ("output", 3), **host,
            **bus_ports(buses["lite_host"], lambda s: f"m_axil_{s}", True)}
    ddr4 = {"c0_sys_clk_p": ("input", 1), "c0_sys_clk_n": ("input", 1), "sys_rst": ("input", 1),
            "c0_init_calib_complete": ("output", 1), "c0_ddr4_ui_clk": ("output", 1),
            "c0_ddr4_ui_clk_sync_rst": ("output", 1), "addn_ui_clkout1": ("output", 1),
            "c0_ddr4_aresetn": ("input", 1), "dbg_clk": ("output", 1), "dbg_bus": ("output", 512),
            "c0_ddr4_act_n": ("output", 1), "c0_ddr4_adr": ("output", 17), "c0_ddr4_ba": ("output", 2),
            "c0_ddr4_bg": ("output", 2), "c0_ddr4_cke": ("output", 1), "c0_ddr4_odt": ("output", 1),
            "c0_ddr4_cs_n": ("output", 1), "c0_ddr4_ck_t": ("output", 1), "c0_ddr4_ck_c": ("output", 1),
            "c0_ddr4_reset_n": ("output", 1), "c0_ddr4_parity": ("output", 1), "c0_ddr4_dq": ("inout", 72),
            "c0_ddr4_dqs_t": ("inout", 18), "c0_ddr4_dqs_c": ("inout", 18),
            **bus_ports(buses["ddr"], lambda s: f"c0_ddr4_s_axi_{s}", False)}
    ic = {"INTERCONNECT_ACLK": ("input", 1), "INTERCONNECT_ARESETN": ("input", 1),
          "M00_AXI_ACLK": ("input", 1), "M00_AXI_ARESET_OUT_N": ("output", 1),
          **bus_ports(buses["ddr"], lambda s: f"M00_AXI_{s.upper()}", True)}
    for i, net in enumerate(("host", "core_mem", "core_sp")):
        ic[f"S{i:02d}_AXI_ACLK"] = ("input", 1)
        ic[f"S{i:02d}_AXI_ARESET_OUT_N"] = ("output", 1)
        ic.update(bus_ports(buses[net], lambda s, i=i: f"S{i:02d}_AXI_{s.upper()}", False))
    cdc = {"s_axi_aclk": ("input", 1), "s_axi_aresetn": ("input", 1), "m_axi_aclk": ("input", 1),
           "m_axi_aresetn": ("input", 1), **bus_ports(buses["lite_host"], lambda s: f"s_axi_{s}", False),
           **bus_ports(buses["lite_core"], lambda s: f"m_axi_{s}", True)}
    ibuf = {"I": ("input", 1), "IB": ("input", 1), "CEB": ("input", 1), "O": ("output", 1), "ODIV2": ("output", 1)}
    return {"xdma_0": xdma, "ddr4_0": ddr4, "axi_interconnect_0": ic, "axi_lite_cdc": cdc, "IBUFDS_GTE4": ibuf}


def top_ports() -> dict[str, tuple[str, int]]:
    """The top module's ports: name → (direction, width); every one has its pins in :data:`.board.PINS`."""
    directions = {"pcie_refclk_p": "input", "pcie_refclk_n": "input", "pcie_perst_n": "input",
                  "pcie_rx_p": "input", "pcie_rx_n": "input", "ddr4_clk_p": "input", "ddr4_clk_n": "input",
                  "ddr4_dq": "inout", "ddr4_dqs_t": "inout", "ddr4_dqs_c": "inout"}
    return {name: (directions.get(name, "output"), len(pin.pins)) for name, pin in PINS.items()}


def _instance(module: str, name: str, ports: dict[str, str], params: str = "") -> list[str]:
    lines = [f"  {module} {params}{name} ("]
    items = [f"    .{p}({e})" for p, e in ports.items()]
    return lines + [",\n".join(items), "  );"]


def shell_verilog(cfg: SATConfig) -> str:
    """The top module ``nmsat_vcu1525_top`` for a core of ``cfg`` (module ``nmsat_core``, generated apart)."""
    buses = _buses(cfg)
    out = [f"// {TOP}: the nmsat core ({cfg.name}, ID {cfg.hash32:#010x}) in the VCU1525 shell; generated by",
           "// nmsat.fpga.vcu1525.shell, do not edit.", "`default_nettype none", f"module {TOP} ("]
    out.append(",\n".join(f"  {d} wire {_range(w)}{n}" for n, (d, w) in top_ports().items()))
    out.append(");")
    for bus in buses.values():
        out += bus.wires()
    out += ["  wire sys_clk, sys_clk_gt, axi_aclk, axi_aresetn, user_lnk_up;",
            "  wire ui_clk, ui_rst, calibrated, core_clk;",
            "  wire [511:0] ddr4_dbg_bus;",
            "  wire ddr4_dbg_clk, usr_irq_ack, msi_enable;", "  wire [2:0] msi_vector_width;",
            "  wire [ADDR_HI:0] host_awaddr_full, host_araddr_full;".replace("ADDR_HI", str(ADDR_BITS_HOST - 1)),
            f"  assign host_awaddr = host_awaddr_full[{cfg.addr_bits - 1}:0];",
            f"  assign host_araddr = host_araddr_full[{cfg.addr_bits - 1}:0];",
            "  wire [3:0] areset_out_n;", ""]
    out += _instance("IBUFDS_GTE4", "pcie_refclk_buf", {"I": "pcie_refclk_p", "IB": "pcie_refclk_n", "CEB": "1'b0",
                                                        "O": "sys_clk_gt", "ODIV2": "sys_clk"},
                     "#(.REFCLK_HROW_CK_SEL(2'b00)) ")
    xdma = {"sys_clk": "sys_clk", "sys_clk_gt": "sys_clk_gt", "sys_rst_n": "pcie_perst_n",
            "pci_exp_txp": "pcie_tx_p", "pci_exp_txn": "pcie_tx_n", "pci_exp_rxp": "pcie_rx_p",
            "pci_exp_rxn": "pcie_rx_n", "axi_aclk": "axi_aclk", "axi_aresetn": "axi_aresetn",
            "user_lnk_up": "user_lnk_up", "usr_irq_req": "1'b0", "usr_irq_ack": "usr_irq_ack",
            "msi_enable": "msi_enable", "msi_vector_width": "msi_vector_width",
            **buses["host"].connect(lambda s: f"m_axi_{s}", master=True),
            **buses["lite_host"].connect(lambda s: f"m_axil_{s}", master=True)}
    xdma["m_axi_awaddr"], xdma["m_axi_araddr"] = "host_awaddr_full", "host_araddr_full"
    out += [""] + _instance("xdma_0", "pcie", xdma)
    ddr = {"c0_sys_clk_p": "ddr4_clk_p", "c0_sys_clk_n": "ddr4_clk_n", "sys_rst": "~axi_aresetn",
           "c0_init_calib_complete": "calibrated", "c0_ddr4_ui_clk": "ui_clk", "c0_ddr4_ui_clk_sync_rst": "ui_rst",
           "addn_ui_clkout1": "core_clk", "c0_ddr4_aresetn": "~ui_rst", "dbg_clk": "ddr4_dbg_clk",
           "dbg_bus": "ddr4_dbg_bus", "c0_ddr4_parity": "ddr4_par",
           **{f"c0_ddr4_{p}": f"ddr4_{p}" for p in ("act_n", "adr", "ba", "bg", "cke", "odt", "cs_n", "ck_t", "ck_c",
                                                     "reset_n", "dq", "dqs_t", "dqs_c")},
           **buses["ddr"].connect(lambda s: f"c0_ddr4_s_axi_{s}", master=False)}
    out += [""] + _instance("ddr4_0", "ddr4", ddr)
    ic = {"INTERCONNECT_ACLK": "ui_clk", "INTERCONNECT_ARESETN": "~ui_rst", "M00_AXI_ACLK": "ui_clk",
          "M00_AXI_ARESET_OUT_N": "areset_out_n[3]", **buses["ddr"].connect(lambda s: f"M00_AXI_{s.upper()}",
                                                                             master=True)}
    for i, (net, clk) in enumerate((("host", "axi_aclk"), ("core_mem", "core_clk"), ("core_sp", "core_clk"))):
        ic[f"S{i:02d}_AXI_ACLK"] = clk
        ic[f"S{i:02d}_AXI_ARESET_OUT_N"] = f"areset_out_n[{i}]"
        ic.update(buses[net].connect(lambda s, i=i: f"S{i:02d}_AXI_{s.upper()}", master=False))
    out += [""] + _instance("axi_interconnect_0", "memory_ic", ic)
    cdc = {"s_axi_aclk": "axi_aclk", "s_axi_aresetn": "axi_aresetn", "m_axi_aclk": "core_clk",
           "m_axi_aresetn": "~core_rst", **buses["lite_host"].connect(lambda s: f"s_axi_{s}", master=False),
           **buses["lite_core"].connect(lambda s: f"m_axi_{s}", master=True)}
    out += [""] + _instance("axi_lite_cdc", "register_cdc", cdc)
    # the core: its reset held until DDR4 is calibrated and the PCIe side is out of reset, synchronised
    out += ["", "  reg [3:0] core_rst_sync = 4'hF;", "  wire core_rst = core_rst_sync[3];",
            "  always @(posedge core_clk or posedge ui_rst)",
            "    if (ui_rst) core_rst_sync <= 4'hF;",
            "    else core_rst_sync <= {core_rst_sync[2:0], ~calibrated};"]
    core = {"clk": "core_clk", "rst": "core_rst",
            **buses["lite_core"].connect(lambda s: f"csr__{s}", master=False,
                                         width_of={"awaddr": 8, "araddr": 8})}
    for prefix, net in (("mem", "core_mem"), ("spmem", "core_sp")):
        core.update(buses[net].connect(lambda s, p=prefix: f"{p}__{s}", master=True, has=_CORE_AXI4))
    out += buses["core_mem"].defaults(_CORE_AXI4) + buses["core_sp"].defaults(_CORE_AXI4)
    out += [""] + _instance(TOPLEVEL, "core", core)
    out += ["", "  reg [27:0] heartbeat = 0;", "  always @(posedge core_clk) heartbeat <= heartbeat + 1'b1;",
            "  assign led = {heartbeat[27], calibrated, user_lnk_up};", "endmodule", "`default_nettype wire", ""]
    return "\n".join(out)


def ip_stubs(cfg: SATConfig) -> str:
    """Black-box modules of the vendor IP and primitives (ports only), for linting the top without Vivado."""
    out = ["// black boxes of the vendor IP the VCU1525 shell instantiates: ports only, for lint"]
    for module, ports in _ip_ports(cfg).items():
        params = " #(parameter [1:0] REFCLK_HROW_CK_SEL = 2'b00)" if module == "IBUFDS_GTE4" else ""
        out.append(f"module {module}{params} (")
        out.append(",\n".join(f"  {d} wire {_range(w)}{p}" for p, (d, w) in ports.items()))
        out.append(");")
        for p, (d, w) in ports.items():
            if d == "output":
                out.append(f"  assign {p} = {w}'d0;")
        out.append("endmodule\n")
    return "\n".join(out)


def ip_tcl(cfg: SATConfig) -> str:
    """The vendor IP from Tcl: XDMA (PCIe x16 Gen3, DMA mode, AXI4-Lite master BAR), the DDR4 MIG of channel
    C0 (the stock RDIMM, 512-bit AXI, the core clock as its additional user clock), the AXI interconnect
    (three slave ports, clock crossing on each) and the AXI4-Lite clock converter."""
    core_bits = 8 * cfg.bus_bytes

    def ip(name, module, props):
        body = " \\\n    ".join(f"CONFIG.{k} {{{v}}}" for k, v in props.items())
        return [f"create_ip -name {name} -vendor xilinx.com -library ip -module_name {module}",
                f"set_property -dict [list \\\n    {body}] [get_ips {module}]"]

    lines = ["# Vendor IP of the VCU1525 shell (nmsat.fpga.vcu1525.shell); sourced by the project script."]
    lines += ip("xdma", "xdma_0", {
        "functional_mode": "DMA", "mode_selection": "Advanced", "pcie_blk_locn": "X1Y2",
        "en_gt_selection": "true", "select_quad": "GTY_Quad_227", "pl_link_cap_max_link_width": "X16",
        "pl_link_cap_max_link_speed": "8.0_GT/s", "ref_clk_freq": "100_MHz", "axi_data_width": "512_bit",
        "axisten_freq": "250", "xdma_axi_intf_mm": "AXI_Memory_Mapped", "axilite_master_en": "true",
        "axilite_master_size": "1", "axilite_master_scale": "Megabytes", "xdma_rnum_chnl": "1",
        "xdma_wnum_chnl": "1", "xdma_num_usr_irq": "1", "pf0_device_id": "9038"})
    lines += ip("ddr4", "ddr4_0", {
        "C0.DDR4_MemoryType": "RDIMMs", "C0.DDR4_MemoryPart": "MTA18ASF2G72PZ-2G3", "C0.DDR4_DataWidth": "72",
        "C0.DDR4_Ecc": "true", "C0.DDR4_DataMask": "NONE", "C0.DDR4_TimePeriod": "833",
        "C0.DDR4_InputClockPeriod": "3332", "C0.DDR4_CasLatency": "17", "C0.DDR4_CasWriteLatency": "12",
        "C0.DDR4_AxiSelection": "true", "C0.DDR4_AxiDataWidth": "512", "C0.DDR4_AxiAddressWidth": str(cfg.addr_bits),
        "C0.DDR4_AxiIDWidth": str(_ic_id_bits(3)), "ADDN_UI_CLKOUT1_FREQ_HZ": str(CORE_CLOCK_MHZ)})
    lines += ip("axi_interconnect", "axi_interconnect_0", {
        "NUM_SLAVE_PORTS": "3", "THREAD_ID_WIDTH": str(HOST_ID_BITS), "AXI_ADDR_WIDTH": str(cfg.addr_bits),
        "INTERCONNECT_DATA_WIDTH": "512", "M00_AXI_DATA_WIDTH": "512", "S00_AXI_DATA_WIDTH": "512",
        "S01_AXI_DATA_WIDTH": str(core_bits), "S02_AXI_DATA_WIDTH": str(core_bits),
        "S00_AXI_IS_ACLK_ASYNC": "1", "S01_AXI_IS_ACLK_ASYNC": "1", "S02_AXI_IS_ACLK_ASYNC": "1",
        "M00_AXI_IS_ACLK_ASYNC": "0"})
    lines += ip("axi_clock_converter", "axi_lite_cdc", {"PROTOCOL": "AXI4LITE", "ADDR_WIDTH": "32",
                                                        "DATA_WIDTH": "32"})
    lines += ["generate_target all [get_ips]", ""]
    return "\n".join(lines)


def constraints() -> str:
    """The XDC: every top-level port's pins (I/O standards but on GT pins), the clocks, the bitstream."""
    lines = ["# VCU1525 shell constraints (nmsat.fpga.vcu1525.shell); pins from nmsat.fpga.vcu1525.board"]
    for name, pin in PINS.items():
        lines.append(f"# {name}: {pin.source}")
        for i, package_pin in enumerate(pin.pins):
            port = name if len(pin.pins) == 1 else f"{name}[{i}]"
            lines.append(f"set_property PACKAGE_PIN {package_pin} [get_ports {{{port}}}]")
        target = name if len(pin.pins) == 1 else f"{name}[*]"
        if pin.iostandard:
            lines.append(f"set_property IOSTANDARD {pin.iostandard} [get_ports {{{target}}}]")
        for key, value in pin.extra:
            lines.append(f"set_property {key} {value} [get_ports {{{target}}}]")
    for port, period in CLOCKS.items():
        lines.append(f"create_clock -period {period:.3f} -name {port.removesuffix('_p')} [get_ports {port}]")
    lines += ["set_false_path -from [get_ports pcie_perst_n]", "set_false_path -to [get_ports {led[*]}]"]
    lines += [f"set_property {key} {value} [current_design]" for key, value in BITSTREAM.items()]
    return "\n".join(lines) + "\n"


def hooks_tcl() -> dict[str, str]:
    """Run hooks (file name → Tcl), set when the project is created: utilisation and timing reports after
    routing, the .mcs for the card's SPI flash after the bitstream (both in the implementation run's folder)."""
    return {
        "hooks.tcl": "\n".join([
            "# nmsat run hooks: reports after routing, the .mcs after the bitstream",
            "set nmsat_hooks [file normalize [file dirname [info script]]]",
            "set_property STEPS.ROUTE_DESIGN.TCL.POST [file join $nmsat_hooks post_route.tcl] [get_runs impl_1]",
            "set_property STEPS.WRITE_BITSTREAM.TCL.POST [file join $nmsat_hooks post_bitstream.tcl] [get_runs impl_1]",
            ""]),
        "post_route.tcl": "\n".join([
            "report_utilization -file utilisation.rpt", "report_utilization -hierarchical -file utilisation_hier.rpt",
            "report_timing_summary -max_paths 20 -file timing.rpt", ""]),
        "post_bitstream.tcl": "\n".join([
            f"# the card's SPI flash: {FLASH}, one image at address 0",
            f"write_cfgmem -force -format mcs -size 128 -interface SPIx4 -loadbit {{up 0x00000000 {TOP}.bit}} "
            f"-file {TOP}.mcs", ""]),
    }
