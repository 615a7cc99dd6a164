"""The LOAD unit: 2-D strided DMA from memory into the A, B or IDX buffer.

Issue side: one burst address per cycle from the cycle a LOAD starts (the
burst walker); receive side: beats assembled into buffer words, written as
each word completes.  A transposing LOAD (``tile_transpose``, cores with
rows == cols) fills R×cols blocks into two banks of registers and writes
each full block as its cols columns, one a cycle, while the next arrives;
after its last block it holds the read channel (``r_hold``, RREADY low)
for the cols cycles of that block's writes.  ``LOADS_IN_FLIGHT`` earlier LOADs may still receive
data while the next one issues (a FIFO of that many + 1 entries).  Pops
``c2l`` (and ``p2l``, from the sparsifier) when it starts, pushes ``l2c``
(and ``l2p``) when its last word is written: at its last beat, or for a
transposing LOAD ``cols`` cycles later.

Not here: the buffers (the top level's memories) or the read channel's mux with the fetch unit.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..config import SATConfig
from ..isa import Buffer
from ..timing import LOADS_IN_FLIGHT
from .common import PC_BITS, BurstWalker, Entry, queue_signature

__all__ = ["LoadUnit"]


class LoadUnit(wiring.Component):
    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        super().__init__({
            "running": In(1), "alive": In(1),
            "queue": In(queue_signature()),
            "c2l_available": In(1), "c2l_pop": Out(1), "l2c_push": Out(1),
            "p2l_available": In(1), "p2l_pop": Out(1), "l2p_push": Out(1),  # the sparsifier (the previous unit)
            "ar_valid": Out(1), "ar_addr": Out(cfg.addr_bits), "ar_len": Out(8), "ar_ready": In(1),
            "r_valid": In(1), "r_data": In(cfg.bus_bytes * 8), "r_resp": In(2),
            "a_addr": Out(16), "a_data": Out(16 * cfg.rows), "a_en": Out(1),
            "b_addr": Out(16), "b_data": Out(16 * cfg.cols), "b_en": Out(1),
            "idx_en": Out(1),  # an IDX word (as wide as an A word) at a_addr / a_data
            "start": Out(1), "busy": Out(1),
            "bus_error": Out(1), "receiving_pc": Out(PC_BITS),  # the LOAD whose beats arrive
            "r_hold": Out(1),  # a transposing LOAD writes its last block: the read channel waits (RREADY low)
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C, bus = cfg.rows, cfg.cols, cfg.bus_bytes
        bus_bits = bus * 8
        head = self.queue.payload
        args = head.inst.args.mem
        m.submodules.walker = walker = BurstWalker(cfg, "load")
        m.submodules.inflight = inflight = SyncFIFO(width=Entry.as_shape().size, depth=LOADS_IN_FLIGHT + 1)
        tokens_ok = (~head.inst.deps.pop_next | self.c2l_available) & (~head.inst.deps.pop_prev | self.p2l_available)
        start = self.start
        m.d.comb += [start.eq(self.running & self.queue.valid & ~walker.active & inflight.w_rdy & tokens_ok),
                     walker.load.eq(start), walker.addr.eq(args.dram_addr), walker.rows.eq(args.rows),
                     walker.stride.eq(args.dram_stride),
                     walker.word_beats.eq(Mux(args.tile_transpose, R * cfg.b_word_bytes // bus,
                                              Mux(args.buffer == Buffer.B, cfg.b_word_bytes // bus,
                                                  cfg.a_word_bytes // bus))),
                     self.ar_valid.eq(self.alive & (start | walker.active)), walker.step.eq(self.ar_valid & self.ar_ready),
                     self.ar_addr.eq(walker.burst_addr), self.ar_len.eq(walker.burst_beats - 1),
                     self.queue.ready.eq(start), inflight.w_data.eq(self.queue.payload), inflight.w_en.eq(start),
                     self.c2l_pop.eq(start & head.inst.deps.pop_next), self.p2l_pop.eq(start & head.inst.deps.pop_prev)]
        # receive side
        rx = Entry(inflight.r_data)
        rx_args = rx.inst.args.mem
        transposing = rx_args.tile_transpose if R == C else Const(0, 1)  # (the dispatcher refuses it otherwise)
        rx_word_beats = Mux((rx_args.buffer == Buffer.B) | transposing, cfg.b_word_bytes // bus, cfg.a_word_bytes // bus)
        rx_word = Signal(16)
        rx_in_word = Signal(8)
        word_bits = max(16 * R, 16 * C)
        assembled = Signal(word_bits)
        rx_next = Signal(word_bits)
        m.d.comb += rx_next.eq(Cat(assembled[bus_bits:], self.r_data) if word_bits > bus_bits else self.r_data)
        rx_beat = self.alive & self.r_valid & inflight.r_rdy & ~self.r_hold
        word_done = rx_in_word == rx_word_beats - 1
        load_done = Signal()
        with m.If(rx_beat):
            m.d.sync += assembled.eq(rx_next)
            with m.If(word_done):
                m.d.sync += [rx_in_word.eq(0), rx_word.eq(rx_word + 1)]
            with m.Else():
                m.d.sync += rx_in_word.eq(rx_in_word + 1)
        with m.If(load_done):
            m.d.sync += [rx_word.eq(0), rx_in_word.eq(0)]
        # a transposing LOAD (rows == cols): blocks of R B words fill one of two banks; a full block is written
        # out as cols words (word j: lane j of each of its R words) in the next cols cycles, while the next
        # block fills the other bank
        word_in = rx_next[word_bits - 16 * C:]
        banks = [[Signal(16 * C, name=f"tbank_{b}_{r}") for r in range(R)] for b in range(2)]
        fill_bank, in_block, block = Signal(), Signal(range(R)), Signal(16)
        flushing, flush_bank, flush_last = Signal(), Signal(), Signal()
        flush_j = Signal(range(C))
        flush_addr = Signal(16)
        source_word = rx_beat & word_done & transposing
        block_full = source_word & (in_block == R - 1)
        with m.If(source_word):
            for b in range(2):
                for r in range(R):
                    with m.If((fill_bank == b) & (in_block == r)):
                        m.d.sync += banks[b][r].eq(word_in)
            m.d.sync += in_block.eq(Mux(in_block == R - 1, 0, in_block + 1))
        flush_end = flushing & (flush_j == C - 1)
        with m.If(flushing):
            m.d.sync += flush_j.eq(flush_j + 1)
            with m.If(flush_end):
                m.d.sync += [flushing.eq(0), flush_j.eq(0)]
        with m.If(block_full):
            m.d.sync += [flushing.eq(1), flush_j.eq(0), flush_bank.eq(fill_bank), fill_bank.eq(~fill_bank),
                         flush_addr.eq(rx_args.sram_addr + block * C), flush_last.eq(block == rx_args.rows - 1),
                         block.eq(Mux(block == rx_args.rows - 1, 0, block + 1))]
        columns = Signal(16 * R)
        flush_rows = [Mux(flush_bank, banks[1][r], banks[0][r]) for r in range(R)]
        m.d.comb += columns.eq(Cat(*(row.word_select(flush_j, 16) for row in flush_rows)))
        m.d.comb += [self.r_hold.eq(flushing & flush_last),
                     load_done.eq(Mux(transposing, flush_end & flush_last,
                                      rx_beat & word_done & (rx_word == rx_args.rows - 1)))]
        waddr = Mux(transposing, flush_addr + flush_j, rx_args.sram_addr + rx_word)
        plain_write = rx_beat & word_done & ~transposing
        write = plain_write | (transposing & flushing)
        m.d.comb += [self.a_addr.eq(waddr), self.b_addr.eq(waddr),
                     self.a_data.eq(Mux(transposing, columns, rx_next[word_bits - 16 * R:])),
                     self.b_data.eq(Mux(transposing, columns, rx_next[word_bits - 16 * C:])),
                     self.a_en.eq(write & (rx_args.buffer == Buffer.A)),
                     self.b_en.eq(write & (rx_args.buffer == Buffer.B)),
                     self.idx_en.eq(plain_write & (rx_args.buffer == Buffer.IDX)),
                     inflight.r_en.eq(load_done),
                     self.l2c_push.eq(load_done & rx.inst.deps.push_next),
                     self.l2p_push.eq(load_done & rx.inst.deps.push_prev),
                     self.bus_error.eq(rx_beat & (self.r_resp != 0)), self.receiving_pc.eq(rx.pc),
                     self.busy.eq(walker.active | inflight.r_rdy)]
        return m
