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

import functools
from dataclasses import dataclass

import numpy as np

from .config import IDX_SLOTS_PER_WORD as IDX_SLOTS, SATConfig

__all__ = ["bursts", "burst_count", "burst_counts", "transfer_beats", "transpose_tail", "gemm_mac_cycles", "GEMM_TAIL", "drain_cycles", "drain_gap", "CHECK_LATENCY", "dispatch_start", "CHAIN_GAP", "LOADS_IN_FLIGHT",
           "STORES_IN_FLIGHT", "SRAM_READ_LATENCY", "DRAIN_PIPELINE", "DRAIN_ROWS", "PAGE_BYTES", "SparsifyShape",
           "sparsify_shape", "sparsify_chunk_groups", "sparsify_emit_cycles", "sparsify_read_beats", "SparsifyTimes", "sparsify_cycles",
           "sparsify_events", "STREAM_LANE_LATENCY", "UPDATE_FIRST_CHUNK", "UPDATE_STREAMS", "VECTOR_STREAMS", "stream_chunks",
           "StreamChunk", "stream_schedule", "stream_cycles", "stream_events", "update_beats", "update_chunks", "update_cycles", "update_events"]

#: Cycles from a program's beat arriving to its instructions in the instruction memory: each goes through the
#: static checks on its way in (``nmsat.hw.core.check``: an input register and four stages), so dispatch starts
#: this many cycles after the fetch's last beat, later than without them (:func:`dispatch_start`).
CHECK_LATENCY = 5
#: Cycles between a FINISH that names a next program retiring and that program's cycle 0, beyond the one
#: after it: the reset of the units is registered (it reaches every register of the core), so a chained
#: run takes its programs' cycles plus this many per program after the first.
CHAIN_GAP = 1
#: A LOAD may issue its addresses while at most this many earlier LOADs still receive data.
LOADS_IN_FLIGHT = 1
#: A STORE may start while at most this many earlier STOREs still wait for their write responses.
STORES_IN_FLIGHT = 1
#: Buffers are synchronous RAMs: data is out one cycle after the address.
SRAM_READ_LATENCY = 1
#: A GEMM drains its accumulator registers through a read-add-write pipeline of this many stages: the ACC
#: read, the four stages of the pipelined fp32 adder (``nmsat.hw.fp``), the write.
DRAIN_PIPELINE = 6
#: Accumulator rows the drain reads, adds and writes per cycle (the ACC buffer is banked by row parity).
DRAIN_ROWS = 2

#: Cycles from a GEMM's last data cycle to its result in the accumulators: each PE registers the product
#: (1) and adds in four pipelined stages (``nmsat.hw.fp.ADDER_STAGES``), so the last step's sum and the
#: four partials are out by cycle 5; the pairs start in 3 and 5, their sum in 9, ready in 13.
GEMM_TAIL = 13

#: AXI: a burst never crosses a boundary of this many bytes
PAGE_BYTES = 4096


def dispatch_start(cfg: SATConfig, program_len: int) -> int:
    """The cycle a program of ``program_len`` instructions dispatches its first instruction (D₀): its beats
    arrive from ``mem_read_latency`` on, one a cycle, and the last is in the instruction memory
    ``CHECK_LATENCY`` cycles after it arrives."""
    beats = -(-program_len * cfg.instruction_bytes // cfg.bus_bytes)
    return cfg.mem_read_latency + beats + CHECK_LATENCY


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


def burst_counts(cfg: SATConfig, dram_addr, rows, word_bytes, stride):
    """:func:`burst_count` of many transfers at once (numpy arrays): a contiguous run's page segments each
    cut into bursts of at most ``max_burst_beats``, or one burst per word of one beat; other strided
    transfers one by one."""
    addr, rows, word, stride = (np.asarray(x, dtype=np.int64) for x in (dram_addr, rows, word_bytes, stride))
    most = cfg.max_burst_beats * cfg.bus_bytes
    length = rows * word
    first = np.minimum(length, PAGE_BYTES - addr % PAGE_BYTES)
    rest = length - first
    contiguous = -(-first // most) + rest // PAGE_BYTES * -(-PAGE_BYTES // most) + -(-(rest % PAGE_BYTES) // most)
    out = np.where(stride == word, contiguous, np.where(word == cfg.bus_bytes, rows, 0))
    for i in np.flatnonzero((stride != word) & (word != cfg.bus_bytes)).tolist():
        out[i] = burst_count(cfg, int(addr[i]), int(rows[i]), int(word[i]), int(stride[i]))
    return out


def transfer_beats(cfg: SATConfig, rows: int, word_bytes: int) -> int:
    """Data beats of a transfer of ``rows`` words (word sizes are whole beats by config invariant)."""
    return rows * word_bytes // cfg.bus_bytes


def transpose_tail(cfg: SATConfig) -> int:
    """Cycles a transposing LOAD takes past its last data beat: its last block's ``cols`` words are written one
    a cycle after the block is in (each earlier block's words are written while the next one arrives); the
    read channel is held (RREADY low) meanwhile, so the next LOAD's beats wait."""
    return cfg.cols


def gemm_mac_cycles(k: int) -> int:
    """Cycles from a GEMM's start to its transfer at the earliest: ``k`` buffer reads, the SRAM latency, then
    the PEs' tail (:data:`GEMM_TAIL`: the last product through the adder and the four partial sums
    added pairwise, rule 5 of ``nmsat.hw.numerics``).

    In cycle ``start + gemm_mac_cycles(k)`` (the transfer) the drain of the
    accumulators begins; the next GEMM may start in the transfer cycle.
    """
    return k + SRAM_READ_LATENCY + GEMM_TAIL


def drain_cycles(cfg: SATConfig) -> int:
    """Cycles from the transfer to the last accumulator-buffer write: ``ceil(rows / DRAIN_ROWS)`` reads (two
    rows a cycle), then the add and write stages.

    Drains overlap: the next may begin before this one's last write (:func:`drain_gap`).
    """
    return -(-cfg.rows // DRAIN_ROWS) + DRAIN_PIPELINE - 1


def drain_gap(cfg: SATConfig) -> int:
    """Cycles from one GEMM's transfer to the next one's at the earliest: the drain reads the accumulator
    registers themselves, into the adders until ``ceil(rows / DRAIN_ROWS) + 1`` cycles after the transfer,
    and the next result is latched a cycle before its transfer; and the next drain reads a row only after
    this one has written it (``DRAIN_PIPELINE``).  A GEMM waits before it starts so that its transfer
    keeps this gap.
    """
    return max(-(-cfg.rows // DRAIN_ROWS) + 2, DRAIN_PIPELINE)


# ---------------------------------------------------------------------- the sparsifier


@dataclass(frozen=True)
class SparsifyShape:
    """The sizes of one SPARSIFY: groups, slots, IDX words, chunks, and its source and output extents."""

    groups: int
    slots: int
    idx_words: int
    chunks: int
    word_bytes: int  # bytes of a source row read per chunk (FF: chunk·4 per lane; BP: rows·4 per element)
    rows: int  # source rows read per chunk (FF: rows lanes; BP: chunk elements)
    src_end: int  # one past the last source byte read
    dst_addr: int
    dst_end: int  # one past the last output byte written

    def chunk_read(self, src_addr: int, src_stride: int, transpose: bool, chunk: int, cfg: SATConfig) -> int:
        """Byte address of chunk ``chunk``'s 2-D read (``rows`` words of ``word_bytes``, ``src_stride`` apart)."""
        return src_addr + chunk * (cfg.sparsify_chunk * 4 if transpose else cfg.sparsify_chunk * src_stride)


def sparsify_shape(cfg: SATConfig, src_addr: int, src_stride: int, transpose: bool, length: int, n: int, m: int,
                   dst_offset: int) -> SparsifyShape:
    """Sizes of a SPARSIFY (arguments as decoded; ``length``, ``n``, ``m`` valid)."""
    e = cfg.sparsify_chunk
    groups = -(-length // m)
    slots = groups * n
    idx_words = -(-slots // IDX_SLOTS)
    chunks = -(-length // e)
    if transpose:
        word, rows = 4 * e, cfg.rows
        src_end = src_addr + (rows - 1) * src_stride + chunks * word
    else:
        word, rows = 4 * cfg.rows, e
        src_end = src_addr + (chunks * e - 1) * src_stride + word
    dst = src_addr + dst_offset
    return SparsifyShape(groups, slots, idx_words, chunks, word, rows, src_end, dst,
                         dst + (slots + idx_words) * cfg.a_word_bytes)


def sparsify_chunk_groups(cfg: SATConfig, shape: SparsifyShape, m: int, chunk: int) -> int:
    """Groups of m whose elements lie in chunk ``chunk`` (chunks hold whole groups: m divides the chunk)."""
    per = cfg.sparsify_chunk // m
    return min(per, shape.groups - chunk * per)


def sparsify_emit_cycles(cfg: SATConfig, shape: SparsifyShape, n: int, m: int, chunk: int) -> int:
    """Cycles of a chunk's emit phase: per group one rank cycle, then its n slot words, each IDX word right
    after the slot that completes it (or the last slot), every word ``a_word_bytes / bus_bytes`` beats."""
    per = cfg.sparsify_chunk // m
    g0, groups = chunk * per, sparsify_chunk_groups(cfg, shape, m, chunk)
    first, last = g0 * n, (g0 + groups) * n  # slots of this chunk: first .. last-1
    idx = last // IDX_SLOTS - first // IDX_SLOTS
    if last == shape.slots and shape.slots % IDX_SLOTS:
        idx += 1
    return groups + (groups * n + idx) * (cfg.a_word_bytes // cfg.bus_bytes)


def sparsify_read_beats(cfg: SATConfig, shape: SparsifyShape) -> int:
    """Data beats of one chunk's read."""
    return shape.rows * shape.word_bytes // cfg.bus_bytes


@dataclass(frozen=True)
class SparsifyTimes:
    """Cycles of a SPARSIFY that starts in cycle 0."""

    last_read: int  # the last source beat arrives
    first_write: int  # the first output beat goes out
    last_write: int
    end: int  # the last write response: the instruction's last busy cycle (pushes happen here)


def sparsify_cycles(cfg: SATConfig, shape: SparsifyShape, n: int, m: int) -> SparsifyTimes:
    """The cycles of a SPARSIFY that starts in cycle 0.

    Chunk by chunk: the read's burst addresses one per cycle from the chunk's
    first cycle, its beats from ``mem_read_latency`` later (continuous: the
    sparsifier has the memory port of its own), then the emit phase, then the
    next chunk's first cycle.  The last write response, ``mem_write_latency``
    after the last beat, ends it; the next SPARSIFY may start one cycle later.
    """
    beats = sparsify_read_beats(cfg, shape)
    t = 0  # first cycle of the chunk
    last_read = 0
    for c in range(shape.chunks):
        last_read = t + cfg.mem_read_latency + beats - 1
        t = last_read + 1 + sparsify_emit_cycles(cfg, shape, n, m, c)
    first_write = cfg.mem_read_latency + beats + 1
    return SparsifyTimes(last_read, first_write, t - 1, t - 1 + cfg.mem_write_latency)


def sparsify_events(cfg: SATConfig, shape: SparsifyShape, src_addr: int, src_stride: int, transpose: bool,
                    n: int, m: int):
    """Every bus beat of a SPARSIFY that starts in cycle 0, in order: ``("r", cycle, address)`` for a read
    beat arriving, ``("w", cycle, address)`` for a write beat sent (its response ``mem_write_latency``
    later).  Beat by beat, for bus errors; the cycles agree with :func:`sparsify_cycles`."""
    bus, wb = cfg.bus_bytes, cfg.a_word_bytes
    wpb = wb // bus
    beats = sparsify_read_beats(cfg, shape)
    per = cfg.sparsify_chunk // m
    t = 0
    for c in range(shape.chunks):
        cycle = t + cfg.mem_read_latency
        for addr, nb in bursts(cfg, shape.chunk_read(src_addr, src_stride, transpose, c, cfg), shape.rows,
                               shape.word_bytes, src_stride):
            for b in range(nb):
                yield "r", cycle, addr + b * bus
                cycle += 1
        t += cfg.mem_read_latency + beats
        for g in range(c * per, c * per + sparsify_chunk_groups(cfg, shape, m, c)):
            t += 1  # rank
            for j in range(g * n, g * n + n):
                words = [shape.dst_addr + j * wb]
                if j % IDX_SLOTS == IDX_SLOTS - 1 or j == shape.slots - 1:
                    words.append(shape.dst_addr + (shape.slots + j // IDX_SLOTS) * wb)
                for base in words:
                    for b in range(wpb):
                        yield "w", t, base + b * bus
                        t += 1



# ---------------------------------------------------------------------- the stream engine: WEIGHT_UPDATE, VECTOR


#: Cycles from a stream instruction's computing beat to its results in the engine's result buffers: the
#: lane's pipelined units in series, λ·w, g + λ·w, μ·v + d, η·v', w − η·v' (two multipliers of
#: ``nmsat.hw.fp.MULTIPLIER_STAGES`` and three adders of ``ADDER_STAGES``; VECTOR's results wait as long).
STREAM_LANE_LATENCY = 16
#: the cycle (from its start) a stream instruction (WEIGHT_UPDATE, VECTOR) addresses its first bursts
UPDATE_FIRST_CHUNK = 1
#: (arrays read, arrays written) per chunk: WEIGHT_UPDATE reads w, v, g and writes w, v; VECTOR reads x, y, writes z
UPDATE_STREAMS = (3, 2)
VECTOR_STREAMS = (2, 1)


def stream_chunks(cfg: SATConfig, beats: int) -> list[int]:
    """Beats per chunk of a stream instruction over ``beats`` beats of each array: bursts of
    ``max_burst_beats``, the last one shorter."""
    full, rest = divmod(beats, cfg.max_burst_beats)
    return [cfg.max_burst_beats] * full + ([rest] if rest else [])


def update_beats(cfg: SATConfig, words: int) -> int:
    """Beats of each array of a WEIGHT_UPDATE of ``words`` update words (``rows`` fp32 each)."""
    return words * 4 * cfg.rows // cfg.bus_bytes


def update_chunks(cfg: SATConfig, words: int) -> list[int]:
    """Beats per chunk of a WEIGHT_UPDATE of ``words`` update words."""
    return stream_chunks(cfg, update_beats(cfg, words))


@dataclass(frozen=True)
class StreamChunk:
    """One chunk of a stream instruction that starts in cycle 0: its ``beats`` per array, the cycle its first
    read address goes out, the first beat of each read burst, its last read beat, and its first and last
    write beats."""

    beats: int
    address: int
    burst_first: tuple[int, ...]
    last_read: int
    first_write: int
    last_write: int


@functools.lru_cache(maxsize=1024)
def stream_schedule(cfg: SATConfig, beats: int, streams: tuple[int, int]) -> tuple[StreamChunk, ...]:
    """The chunks of a stream instruction reading ``streams[0]`` arrays and writing ``streams[1]``, ``beats``
    beats each, that starts in cycle 0.

    The engine holds two chunks (two buffer halves): chunk c's read
    addresses (one per array read, one a cycle) go out from
    A_c = A_{c−1} + R (A_0 = 1), and for c ≥ 2 not before F_{c−2} + 1, the
    cycle after chunk c−2's last write beat freed its half; each burst's
    beats arrive from max(its address + Lr, the previous burst's last beat
    + 1), one a cycle (the last array's beats compute their elements as they
    arrive; last in L_c; their results are in the result buffers
    :data:`STREAM_LANE_LATENCY` (Λ) later); chunk c's write beats (one
    burst per array written, one after the other) go out from
    S_c = max(L_c + Λ + 2, F_{c−1} + 2) to F_c = S_c + W·nb − 1.
    """
    reads, writes = streams
    out: list[StreamChunk] = []
    data_free = 0
    for c, nb in enumerate(stream_chunks(cfg, beats)):
        address = UPDATE_FIRST_CHUNK if c == 0 else out[-1].address + reads
        if c >= 2:
            address = max(address, out[c - 2].last_write + 1)
        firsts = []
        for k in range(reads):
            first = max(address + k + cfg.mem_read_latency, data_free)
            firsts.append(first)
            data_free = first + nb
        last_read = data_free - 1
        first_write = last_read + STREAM_LANE_LATENCY + 2
        if c:
            first_write = max(first_write, out[-1].last_write + 2)
        out.append(StreamChunk(nb, address, tuple(firsts), last_read, first_write, first_write + writes * nb - 1))
    return tuple(out)


def stream_cycles(cfg: SATConfig, beats: int, streams: tuple[int, int]) -> tuple[int, int, int]:
    """(last read beat, first write beat, last busy cycle) of a stream instruction that starts in cycle 0
    (:func:`stream_schedule`); the last write response, Lw after the last beat, ends it."""
    chunks = stream_schedule(cfg, beats, streams)
    return chunks[-1].last_read, chunks[0].first_write, chunks[-1].last_write + cfg.mem_write_latency


def update_cycles(cfg: SATConfig, words: int) -> tuple[int, int, int]:
    """:func:`stream_cycles` of a WEIGHT_UPDATE of ``words`` update words."""
    return stream_cycles(cfg, update_beats(cfg, words), UPDATE_STREAMS)


def stream_events(cfg: SATConfig, reads: tuple[int, ...], writes: tuple[int, ...], beats: int):
    """Every bus beat of a stream instruction that starts in cycle 0, reading arrays at the byte addresses
    ``reads`` and writing those at ``writes``: ``("r", cycle, address)`` arriving, ``("w", cycle, address)``
    sent (each write burst's response comes Lw after its last beat)."""
    bus, done = cfg.bus_bytes, 0
    for chunk in stream_schedule(cfg, beats, (len(reads), len(writes))):
        nb = chunk.beats
        for base, first in zip(reads, chunk.burst_first):
            for b in range(nb):
                yield "r", first + b, base + (done + b) * bus
        for k, base in enumerate(writes):
            for b in range(nb):
                yield "w", chunk.first_write + k * nb + b, base + (done + b) * bus
        done += nb


def update_events(cfg: SATConfig, w_addr: int, v_addr: int, g_addr: int, words: int):
    """:func:`stream_events` of a WEIGHT_UPDATE."""
    return stream_events(cfg, (w_addr, v_addr, g_addr), (w_addr, v_addr), update_beats(cfg, words))
