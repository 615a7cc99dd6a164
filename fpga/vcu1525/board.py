"""The VCU1525's part, pins and clocks the shell uses, each traced to its public source.

Sources (pin facts cross-checked between them, every DDR4 and PCIe pin equal):

* ``XBS``: Xilinx's board files, Xilinx/XilinxBoardStore ``boards/Xilinx/vcu1525/1.3/part0_pins.xml`` and
  ``board.xml`` (commit 20bbb1210350982586fc3e42e9a15ee531417fea);
* ``COR``: the Corundum project's constraints for the same card, corundum/corundum
  ``fpga/mqnic/VCU1525/fpga_100g/fpga.xdc`` (commit c5af0f726af518b7aeea62d588949319bb65682e) and the
  shared ``fpga/mqnic/Alveo/fpga_100g/fpga_au200.xdc`` it became (commit 1ca0151b97af85aa5dd306d74b6bcec65904d2ce).

Where they differ the choice is noted: PERST# LVCMOS12 (XBS, COR; an old SLAC file says LVCMOS18); the
300 MHz DDR4 clock LVDS with DQS_BIAS (XBS 1.3; 1.2 said DIFF_SSTL12); CONFIGRATE 85.0 (the VCU1525
files; Corundum's shared Alveo file uses 63.8).  The DIMM is the stock Micron MTA18ASF2G72PZ-2G3 RDIMM
(72 bits with ECC, x4 devices: 18 strobe pairs, no data mask).

Not here: the shell's logic (:mod:`.shell`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PART", "BOARD_PART", "FLASH", "Pin", "PINS", "CLOCKS", "BITSTREAM", "SOURCES"]

PART = "xcvu9p-fsgd2104-2L-e"
BOARD_PART = "xilinx.com:vcu1525:part0:1.3"
FLASH = "mt25qu01g-spi-x1_x2_x4"  # 1 Gbit Micron MT25QU01G, SPI x4 (COR Makefile flash target)

SOURCES = {
    "XBS": "Xilinx/XilinxBoardStore boards/Xilinx/vcu1525/1.3/part0_pins.xml @ 20bbb1210350982586fc3e42e9a15ee531417fea",
    "COR": "corundum/corundum fpga/mqnic/VCU1525/fpga_100g/fpga.xdc @ c5af0f726af518b7aeea62d588949319bb65682e",
}


@dataclass(frozen=True)
class Pin:
    """One top-level port: its package pins (one per bit, bit 0 first), I/O standard, extra properties and
    sources.  GT pins have no I/O standard (the PCIe IP places its lanes)."""

    pins: tuple[str, ...]
    iostandard: str | None
    source: str
    extra: tuple[tuple[str, str], ...] = ()


def _p(pins: str, iostandard, source="XBS, COR", *extra) -> Pin:
    return Pin(tuple(pins.split()), iostandard, source, tuple(extra))


#: the shell's top-level ports → pins (DDR4 channel C0, PCIe x16, LEDs)
PINS: dict[str, Pin] = {
    # PCIe: reference clock (MGTREFCLK0 of quad 226, 100 MHz) and PERST#; lanes 0..15 on quads 227..224
    "pcie_refclk_p": _p("AM11", None),
    "pcie_refclk_n": _p("AM10", None),
    "pcie_perst_n": _p("BD21", "LVCMOS12", "XBS, COR", ("PULLUP", "true")),
    "pcie_rx_p": _p("AF2 AG4 AH2 AJ4 AK2 AL4 AM2 AN4 AP2 AR4 AT2 AU4 AV2 AW4 BA2 BC2", None),
    "pcie_rx_n": _p("AF1 AG3 AH1 AJ3 AK1 AL3 AM1 AN3 AP1 AR3 AT1 AU3 AV1 AW3 BA1 BC1", None),
    "pcie_tx_p": _p("AF7 AG9 AH7 AJ9 AK7 AL9 AM7 AN9 AP7 AR9 AT7 AU9 AV7 BB5 BD5 BF5", None),
    "pcie_tx_n": _p("AF6 AG8 AH6 AJ8 AK6 AL8 AM6 AN8 AP6 AR8 AT6 AU8 AV6 BB4 BD4 BF4", None),
    # DDR4 C0: its 300 MHz system clock and the RDIMM
    "ddr4_clk_p": _p("AY37", "LVDS", "XBS 1.3", ("DQS_BIAS", "TRUE")),
    "ddr4_clk_n": _p("AY38", "LVDS", "XBS 1.3", ("DQS_BIAS", "TRUE")),
    "ddr4_adr": _p("AT36 AV36 AV37 AW35 AW36 AY36 AY35 BA40 BA37 BB37 AR35 BA39 BB40 AN36 AP35 AP36 AR36",
                   "SSTL12_DCI"),
    "ddr4_ba": _p("AT35 AT34", "SSTL12_DCI"),
    "ddr4_bg": _p("BC37 BC39", "SSTL12_DCI"),
    "ddr4_ck_t": _p("AV38", "DIFF_SSTL12_DCI"),
    "ddr4_ck_c": _p("AW38", "DIFF_SSTL12_DCI"),
    "ddr4_cke": _p("BC38", "SSTL12_DCI"),
    "ddr4_cs_n": _p("AR33", "SSTL12_DCI"),
    "ddr4_act_n": _p("BB39", "SSTL12_DCI"),
    "ddr4_odt": _p("AP34", "SSTL12_DCI"),
    "ddr4_par": _p("AU36", "SSTL12_DCI"),
    "ddr4_reset_n": _p("AU31", "LVCMOS12"),
    "ddr4_dq": _p("AW28 AW29 BA28 BA27 BB29 BA29 BC27 BB27 BE28 BF28 BE30 BD30 BF27 BE27 BF30 BF29 "
                  "BB31 BB32 AY32 AY33 BC32 BC33 BB34 BC34 AV31 AV32 AV34 AW34 AW31 AY31 BA35 BA34 "
                  "AL30 AM30 AU32 AT32 AN31 AN32 AR32 AR31 AP29 AP28 AN27 AM27 AN29 AM29 AR27 AR28 "
                  "AT28 AV27 AU27 AT27 AV29 AY30 AW30 AV28 BD34 BD33 BE33 BD35 BF32 BF33 BF34 BF35 "
                  "BD40 BD39 BF43 BF42 BF37 BE37 BE40 BF41", "POD12_DCI"),
    "ddr4_dqs_t": _p("BA30 BB26 BD28 BD26 BB35 BC31 AV33 BA32 AM31 AP30 AL28 AR30 AU29 AY27 BE35 BE31 BE38 BF39",
                     "DIFF_POD12_DCI"),
    "ddr4_dqs_c": _p("BB30 BC26 BD29 BE26 BB36 BD31 AW33 BA33 AM32 AP31 AL29 AT30 AU30 AY28 BE36 BE32 BF38 BF40",
                     "DIFF_POD12_DCI"),
    # user LEDs (active high): PCIe link up, DDR4 calibrated, a heartbeat of the core's clock
    "led": _p("BC21 BB21 BA20", "LVCMOS12", "XBS, COR", ("DRIVE", "8"), ("SLEW", "SLOW")),
}

#: clocks entering the shell: port → period in ns
CLOCKS = {"pcie_refclk_p": 10.0, "ddr4_clk_p": 3.332}

#: bitstream and configuration properties (SPI x4 flash at 1.8 V; XBS, COR)
BITSTREAM = {
    "CFGBVS": "GND", "CONFIG_VOLTAGE": "1.8", "BITSTREAM.CONFIG.SPI_BUSWIDTH": "4",
    "BITSTREAM.CONFIG.CONFIGRATE": "85.0", "BITSTREAM.CONFIG.SPI_32BIT_ADDR": "YES",
    "BITSTREAM.CONFIG.SPI_FALL_EDGE": "YES", "BITSTREAM.CONFIG.EXTMASTERCCLK_EN": "DISABLE",
    "BITSTREAM.CONFIG.UNUSEDPIN": "PULLUP", "BITSTREAM.GENERAL.COMPRESS": "TRUE",
    "BITSTREAM.CONFIG.OVERTEMPSHUTDOWN": "ENABLE",
}
