"""Pieces the core's units share: the queue entry layout, dependency-token counters, the 2-D burst walker.

Not here: any unit (``load``, ``compute``, ``store`` ...) or the top level (``top``).
"""

from amaranth.hdl import Elaboratable, Module, Mux, Signal
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out

from ..axi import axi4_signature, next_burst
from ..config import SATConfig
from ..isa import Instruction

__all__ = ["PC_BITS", "Entry", "clog2", "TokenCounter", "BurstWalker", "queue_signature", "vector_engine_ports",
           "axi_master_constants", "vector_tokens_ok", "vector_engine_end", "bf16_round"]

PC_BITS = 21  # instruction index, up to 2^20 instructions (imem_depth <= 2^20)


def clog2(x: int) -> int:
    return max(1, (x - 1).bit_length())


class Entry(data.Struct):
    """A queue entry: the instruction and its index in the program."""

    inst: Instruction
    pc: PC_BITS


def queue_signature() -> stream.Signature:
    """An instruction queue's read side, seen from the queue: the head entry (payload), valid, and ready
    (the unit takes the head in the cycle it starts the instruction).  Units take it as ``In(...)``."""
    return stream.Signature(Entry)


class TokenCounter(Elaboratable):
    """One dependency-token counter: +1 on push, −1 on pop, overflow past ``limit`` is an error."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = Signal(range(limit + 2))
        self.push = Signal()
        self.pop = Signal()
        self.available = Signal()
        self.overflow = Signal()

    def elaborate(self, platform):
        m = Module()
        nxt = Signal(range(self.limit + 3))
        # overflow is nxt > limit, written without the sum: at the limit a push alone passes it; past it (only
        # after an overflow) anything but a pop alone from limit + 1 stays past it
        at_limit, past_limit = self.count == self.limit, self.count > self.limit
        only_pop = self.pop & ~self.push
        m.d.comb += [nxt.eq(self.count + self.push - self.pop), self.available.eq(self.count != 0),
                     self.overflow.eq((at_limit & self.push & ~self.pop) |
                                      (past_limit & ~((self.count == self.limit + 1) & only_pop)))]
        m.d.sync += self.count.eq(nxt)
        return m


class BurstWalker(Elaboratable):
    """Walks a 2-D transfer burst by burst (the cut of ``nmsat.hw.timing.bursts``).

    ``load`` (with the transfer on ``addr``/``rows``/``stride``/``word_beats``)
    starts a transfer and ``step`` in the same or a later cycle emits a burst
    (``burst_addr``, ``burst_beats``, ``last``).  Combinational outputs.
    """

    def __init__(self, cfg: SATConfig, name: str):
        self.cfg, self.name = cfg, name
        ab = cfg.addr_bits + 1
        self.load = Signal()
        self.step = Signal()
        self.addr = Signal(40)
        self.rows = Signal(16)
        self.stride = Signal(32)
        self.word_beats = Signal(8)
        self.active = Signal()  # a transfer is loaded and has bursts left (registered)
        self.burst_addr = Signal(ab)
        self.burst_beats = Signal(range(cfg.max_burst_beats + 1))
        self.last = Signal()
        # state
        self._addr = Signal(ab)
        self._base = Signal(ab)
        self._run_left = Signal(32)
        self._runs_left = Signal(17)
        self._stride = Signal(32)
        self._word_beats = Signal(8)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        cur_addr, cur_base = Signal.like(self._addr), Signal.like(self._base)
        cur_run_left, cur_runs_left = Signal.like(self._run_left), Signal.like(self._runs_left)
        cur_stride, cur_word_beats = Signal.like(self._stride), Signal.like(self._word_beats)
        contiguous = Signal()
        word_bytes = Signal(16)
        m.d.comb += [word_bytes.eq(self.word_beats * cfg.bus_bytes),
                     contiguous.eq(self.stride == word_bytes)]
        with m.If(self.load):
            m.d.comb += [cur_addr.eq(self.addr), cur_base.eq(self.addr), cur_stride.eq(self.stride),
                         cur_word_beats.eq(self.word_beats)]
            with m.If(contiguous):
                m.d.comb += [cur_run_left.eq(self.rows * self.word_beats), cur_runs_left.eq(1)]
            with m.Else():
                m.d.comb += [cur_run_left.eq(self.word_beats), cur_runs_left.eq(self.rows)]
        with m.Else():
            m.d.comb += [cur_addr.eq(self._addr), cur_base.eq(self._base), cur_run_left.eq(self._run_left),
                         cur_runs_left.eq(self._runs_left), cur_stride.eq(self._stride),
                         cur_word_beats.eq(self._word_beats)]
        beats = next_burst(m, self.name, cur_addr, cur_run_left, cfg.bus_bytes, cfg.max_burst_beats)
        m.d.comb += [self.burst_addr.eq(cur_addr), self.burst_beats.eq(beats),
                     self.last.eq((beats == cur_run_left) & (cur_runs_left == 1))]
        with m.If(self.load):
            m.d.sync += [self._addr.eq(cur_addr), self._base.eq(cur_base), self._run_left.eq(cur_run_left),
                         self._runs_left.eq(cur_runs_left), self._stride.eq(cur_stride),
                         self._word_beats.eq(cur_word_beats), self.active.eq(1)]
        with m.If(self.step):
            with m.If(beats == cur_run_left):
                next_base = cur_base + cur_stride
                m.d.sync += [self._runs_left.eq(cur_runs_left - 1), self._base.eq(next_base),
                             self._addr.eq(next_base), self._run_left.eq(cur_word_beats)]
                with m.If(cur_runs_left == 1):
                    m.d.sync += self.active.eq(0)
            with m.Else():
                m.d.sync += [self._addr.eq(cur_addr + beats * cfg.bus_bytes), self._run_left.eq(cur_run_left - beats)]
        return m


# ---------------------------------------------------------------------- the vector unit's two engines


def vector_engine_ports(cfg: SATConfig) -> dict:
    """The ports the sparsifier and the weight-update engine share the shape of: the run, their common queue,
    the ring's tokens towards STORE (``s2p``/``p2s``) and LOAD (``l2p``/``p2l``), the ``spmem`` port (one
    engine owns it at a time), and status."""
    return {
        "running": In(1), "alive": In(1),
        "queue": In(queue_signature()),
        "s2p_available": In(1), "s2p_pop": Out(1), "l2p_available": In(1), "l2p_pop": Out(1),
        "p2s_push": Out(1), "p2l_push": Out(1),
        "mem": Out(axi4_signature(cfg.addr_bits, cfg.bus_bytes)),
        "other_busy": In(1),  # the other engine, which shares the queue and the port
        "start": Out(1), "busy": Out(1),
        "bus_error": Out(1), "error_pc": Out(PC_BITS),
    }


def axi_master_constants(m: Module, axi, bus_bytes: int) -> None:
    """INCR bursts of whole bus beats, every byte written, responses always taken."""
    size = clog2(bus_bytes) if bus_bytes > 1 else 0
    m.d.comb += [axi.arburst.eq(1), axi.awburst.eq(1), axi.arsize.eq(size), axi.awsize.eq(size), axi.rready.eq(1),
                 axi.bready.eq(1), axi.wstrb.eq((1 << bus_bytes) - 1)]


def vector_tokens_ok(engine, head) -> object:
    """The head instruction's pops can be served."""
    deps = head.inst.deps
    return (~deps.pop_prev | engine.s2p_available) & (~deps.pop_next | engine.l2p_available)


def vector_engine_end(m: Module, engine, *, info, phase, draining: int, idle: int, beat_in, issued) -> Signal:
    """The end of an engine's instruction: its write bursts counted until their responses are in; in its
    ``draining`` phase the last response ends it (back to ``idle``, pushes).  Drives ``busy``, the pops'
    counterparts, the bus error and its PC; returns the count of bursts without a response."""
    axi = engine.mem
    outstanding = Signal(32, name="outstanding")
    response = engine.alive & axi.bvalid
    m.d.sync += outstanding.eq(outstanding + issued - response)
    done = Signal(name="done")
    m.d.comb += done.eq((phase == draining) & response & (outstanding == 1))
    with m.If(done):
        m.d.sync += phase.eq(idle)
    m.d.comb += [engine.p2s_push.eq(done & info.inst.deps.push_prev),
                 engine.p2l_push.eq(done & info.inst.deps.push_next),
                 engine.bus_error.eq((beat_in & (axi.rresp != 0)) | (response & (axi.bresp != 0))),
                 engine.error_pc.eq(info.pc),
                 engine.busy.eq((phase != idle) | (outstanding != 0))]
    return outstanding


def bf16_round(m: Module, name: str, value) -> Signal:
    """fp32 bits → bf16 bits, round to nearest even, NaN → 0x7FC0 (``nmsat.hw.numerics.f32_to_bf16_bits``)."""
    out = Signal(16, name=name)
    nan = (value[23:31] == 0xFF) & (value[:23] != 0)
    rounded = (value + 0x7FFF + value[16])[16:32]
    m.d.comb += out.eq(Mux(nan, 0x7FC0, rounded))
    return out
