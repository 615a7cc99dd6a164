"""AXI4 and AXI4-Lite interface signatures (master's view), and the burst cutter both DMA directions use.

The signatures name their members as the AXI specification does (``araddr``,
``rvalid`` ...) so that Amaranth's flattened port names (``mem__araddr``)
match cocotbext-axi's ``from_prefix(dut, "mem")`` with ``bus_separator="__"``.
Not here: any state machine that drives a bus.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .timing import PAGE_BYTES

__all__ = ["axi4_signature", "axi4_lite_signature", "next_burst"]

ID_BITS = 4  # the core uses ID 0 for everything (responses come back in order)


def axi4_signature(addr_bits: int, data_bytes: int) -> wiring.Signature:
    """AXI4 master (INCR bursts, ID 0 only), seen from the master."""
    return wiring.Signature({
        "arid": Out(ID_BITS), "araddr": Out(addr_bits), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
        "arvalid": Out(1), "arready": In(1),
        "rid": In(ID_BITS), "rdata": In(8 * data_bytes), "rresp": In(2), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
        "awid": Out(ID_BITS), "awaddr": Out(addr_bits), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
        "awvalid": Out(1), "awready": In(1),
        "wdata": Out(8 * data_bytes), "wstrb": Out(data_bytes), "wlast": Out(1), "wvalid": Out(1), "wready": In(1),
        "bid": In(ID_BITS), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
    })


def axi4_lite_signature(addr_bits: int = 8) -> wiring.Signature:
    """AXI4-Lite with 32-bit data, seen from the master."""
    return wiring.Signature({
        "awaddr": Out(addr_bits), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "araddr": Out(addr_bits), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
    })


def next_burst(m: Module, name: str, addr, run_left, bus_bytes: int, max_burst_beats: int):
    """Beats of the next burst from ``addr`` with ``run_left`` beats left in the run (combinational).

    ``min(max_burst_beats, run_left, beats to the next 4 KiB page)`` — the rule
    of ``nmsat.hw.timing.bursts``.  Returns the beats signal.
    """
    page_offset = addr[:PAGE_BYTES.bit_length() - 1]
    to_page = Signal(range(PAGE_BYTES // bus_bytes + 1), name=f"{name}_to_page")
    m.d.comb += to_page.eq((PAGE_BYTES - page_offset) >> (bus_bytes.bit_length() - 1))
    beats = Signal(range(max(max_burst_beats, PAGE_BYTES // bus_bytes) + 1), name=f"{name}_beats")
    cap = Signal.like(beats, name=f"{name}_cap")
    m.d.comb += cap.eq(Mux(to_page < max_burst_beats, to_page, max_burst_beats))
    m.d.comb += beats.eq(Mux(run_left < cap, run_left, cap))
    return beats
