"""Latency rules of the core's units: the contract the RTL is built to, the simulator computes with and the
compiler's cost model estimates with.

The numbers the three share (transfers in flight, the SRAM latency, the
drain pipeline, the AXI page) are written here once: the RTL sizes its FIFOs
and counters from them.  Each rule is a formula over a few integers;
``docs/architecture.md`` states them in prose.  Cycle 0 is the first cycle
after START.  "An event in cycle t" means the registers it updates show the
new value from cycle t + 1.

Not here: the event bookkeeping that strings instructions together
(``nmsat.sim.core``) or the numerics (``nmsat.hw.numerics``).
"""

from __future__ import annotations

from .config import SATConfig

__all__ = ["bursts", "burst_count", "transfer_beats", "gemm_mac_cycles", "drain_cycles", "LOADS_IN_FLIGHT",
           "STORES_IN_FLIGHT", "SRAM_READ_LATENCY", "DRAIN_PIPELINE", "DRAIN_ROWS", "PAGE_BYTES"]

#: A LOAD may issue its addresses while at most this many earlier LOADs still receive data.
LOADS_IN_FLIGHT = 1
#: A STORE may start while at most this many earlier STOREs still wait for their write responses.
STORES_IN_FLIGHT = 1
#: Buffers are synchronous RAMs: data is out one cycle after the address.
SRAM_READ_LATENCY = 1
#: A GEMM drains the shadow registers through a read-add-write pipeline of this many stages.
DRAIN_PIPELINE = 2
#: Accumulator rows the drain reads, adds and writes per cycle (the ACC buffer is banked by row parity).
DRAIN_ROWS = 2

#: AXI: a burst never crosses a boundary of this many bytes
PAGE_BYTES = 4096


def _runs(dram_addr: int, rows: int, word_bytes: int, stride: int):
    """The contiguous runs of a 2-D transfer as ``(address, bytes)``: one run when the rows touch."""
    if stride == word_bytes:
        yield dram_addr, rows * word_bytes
    else:
        for i in range(rows):
            yield dram_addr + i * stride, word_bytes


def _cut(cfg: SATConfig, dram_addr: int, rows: int, word_bytes: int, stride: int):
    """Yield each burst ``(byte address, beats)``: at most ``max_burst_beats``, never across a 4 KiB page."""
    bus, max_beats = cfg.bus_bytes, cfg.max_burst_beats
    for addr, length in _runs(dram_addr, rows, word_bytes, stride):
        end = addr + length
        while addr < end:
            beats = min(max_beats, (end - addr + bus - 1) // bus, (PAGE_BYTES - addr % PAGE_BYTES) // bus)
            yield addr, beats
            addr += beats * bus


def bursts(cfg: SATConfig, dram_addr: int, rows: int, word_bytes: int, stride: int) -> list[tuple[int, int]]:
    """The AXI bursts of a 2-D transfer, in order, as ``(byte address, beats)``.

    Words are contiguous runs of ``word_bytes``; if ``stride == word_bytes``
    all rows form one run.  Each run is cut into bursts of at most
    ``max_burst_beats`` that never cross a 4 KiB page.
    """
    return list(_cut(cfg, dram_addr, rows, word_bytes, stride))


def burst_count(cfg: SATConfig, dram_addr: int, rows: int, word_bytes: int, stride: int) -> int:
    """Number of bursts of a transfer (the cut of :func:`bursts`, without building the list)."""
    return sum(1 for _ in _cut(cfg, dram_addr, rows, word_bytes, stride))


def transfer_beats(cfg: SATConfig, rows: int, word_bytes: int) -> int:
    """Data beats of a transfer of ``rows`` words (word sizes are whole beats by config invariant)."""
    return rows * word_bytes // cfg.bus_bytes


def gemm_mac_cycles(k: int) -> int:
    """Cycles from a GEMM's start to the cycle after its last MAC: ``k`` buffer reads, then the SRAM latency.

    In cycle ``start + gemm_mac_cycles(k)`` at the earliest the accumulators
    move to the shadow registers (the transfer); the next GEMM may start in
    the transfer cycle (its first MAC is one cycle later).
    """
    return k + SRAM_READ_LATENCY


def drain_cycles(cfg: SATConfig) -> int:
    """Cycles from the transfer to the last accumulator-buffer write: ``ceil(rows / DRAIN_ROWS)`` reads (two
    rows a cycle), then the add and write stages.

    A transfer waits until the previous GEMM's drain has finished (one set of
    shadow registers).
    """
    return -(-cfg.rows // DRAIN_ROWS) + DRAIN_PIPELINE - 1
