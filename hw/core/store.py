"""The STORE unit: 2-D strided DMA from the accumulator buffer to memory.

Two stages: a read stage that addresses ACC one bus beat per cycle from the
cycle a STORE starts, and a W stage one cycle behind it that sends the
beats (holding its data while W is back-pressured).  Bursts are cut by the
burst walker when their first beat is presented; their addresses go out on
AW at once or from a one-entry slot, and W never waits for its own burst's
AWREADY.  A STORE completes when its last burst's write response arrives;
``STORES_IN_FLIGHT`` earlier STOREs may still wait for responses while the
next one starts.  Pops ``c2s`` (and ``p2s``, from the sparsifier) when it
starts, pushes ``s2c`` (and ``s2p``) when complete.

Not here: the accumulator buffer (the top level's memory).
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..config import SATConfig
from ..timing import STORES_IN_FLIGHT
from .common import PC_BITS, BurstWalker, Entry, bf16_round, queue_signature

__all__ = ["StoreUnit"]


class StoreUnit(wiring.Component):
    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        super().__init__({
            "running": In(1), "alive": In(1),
            "queue": In(queue_signature()),
            "c2s_available": In(1), "c2s_pop": Out(1), "s2c_push": Out(1),
            "p2s_available": In(1), "p2s_pop": Out(1), "s2p_push": Out(1),  # the sparsifier (the next unit)
            "acc_addr": Out(16), "acc_data": In(32 * cfg.cols),  # the STORE's copy of ACC
            "aw_valid": Out(1), "aw_addr": Out(cfg.addr_bits), "aw_len": Out(8), "aw_ready": In(1),
            "w_valid": Out(1), "w_data": Out(cfg.bus_bytes * 8), "w_last": Out(1), "w_ready": In(1),
            "b_valid": In(1), "b_resp": In(2),
            "start": Out(1), "busy": Out(1),
            "bus_error": Out(1), "error_pc": Out(PC_BITS),  # the STORE a failed write response belongs to
            "completing_pc": Out(PC_BITS),  # the STORE whose completion pushes s2c
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        bus_bits = cfg.bus_bytes * 8
        acc_word_beats = cfg.acc_word_bytes // cfg.bus_bytes
        half_word_beats = cfg.acc_word_bytes // 2 // cfg.bus_bytes  # a bf16 STORE's words
        head = self.queue.payload
        reading = Signal()  # read stage: ACC read addresses for beats
        info = Entry(Signal(Entry.as_shape().size))
        word = Signal(16)
        in_word = Signal(8)
        incomplete = Signal(range(STORES_IN_FLIGHT + 2))
        tokens_ok = (~head.inst.deps.pop_prev | self.c2s_available) & (~head.inst.deps.pop_next | self.p2s_available)
        start = self.start
        w_stall = Signal()  # the W beat on the bus is not taken this cycle: both stages hold
        m.d.comb += [start.eq(self.running & self.queue.valid & ~reading & (incomplete <= STORES_IN_FLIGHT) &
                              tokens_ok & ~w_stall),
                     self.queue.ready.eq(start), self.c2s_pop.eq(start & head.inst.deps.pop_prev),
                     self.p2s_pop.eq(start & head.inst.deps.pop_next)]
        info_now = Entry(Signal(Entry.as_shape().size))
        m.d.comb += info_now.eq(Mux(start, self.queue.payload, info))
        word_now = Mux(start, 0, word)
        in_word_now = Mux(start, 0, in_word)
        beat_valid = start | reading
        args_now = info_now.inst.args.mem
        m.d.comb += self.acc_addr.eq(args_now.sram_addr + word_now)
        last_in_word = in_word_now == Mux(args_now.bf16, half_word_beats, acc_word_beats) - 1
        last_beat = last_in_word & (word_now == args_now.rows - 1)
        with m.If(beat_valid & ~w_stall):
            m.d.sync += info.eq(info_now)
            with m.If(last_in_word):
                m.d.sync += [word.eq(word_now + 1), in_word.eq(0)]
            with m.Else():
                m.d.sync += [word.eq(word_now), in_word.eq(in_word_now + 1)]
            m.d.sync += reading.eq(~last_beat)
        # W stage: one cycle behind the read stage (with a held copy of the data while the bus stalls)
        w_valid = Signal()
        w_in_word = Signal(8)
        w_last_of_store = Signal()
        w_info = Entry(Signal(Entry.as_shape().size))
        w_first = Signal()  # first beat of a store: load the burst walker
        with m.If(~w_stall):
            m.d.sync += [w_valid.eq(self.alive & beat_valid), w_in_word.eq(in_word_now), w_last_of_store.eq(last_beat),
                         w_info.eq(info_now), w_first.eq(start)]
        m.submodules.walker = walker = BurstWalker(cfg, "store")
        w_args = w_info.inst.args.mem
        burst_left = Signal(range(cfg.max_burst_beats + 1))  # beats left in the current W burst
        aw_pushed = Signal()  # this burst's address is issued or queued, its first beat not yet taken
        aw_beats = Signal.like(walker.burst_beats)  # that burst's length
        slot_valid = Signal()
        slot_addr = Signal.like(walker.burst_addr)
        slot_len = Signal(8)
        new_burst = w_valid & (burst_left == 0)
        push_aw = Signal()
        m.d.comb += [push_aw.eq(new_burst & ~aw_pushed & (~slot_valid | self.aw_ready)),
                     walker.load.eq(w_valid & w_first & ~aw_pushed), walker.addr.eq(w_args.dram_addr),
                     walker.rows.eq(w_args.rows), walker.stride.eq(w_args.dram_stride),
                     walker.word_beats.eq(Mux(w_args.bf16, half_word_beats, acc_word_beats)), walker.step.eq(push_aw),
                     self.aw_valid.eq(slot_valid | push_aw),
                     self.aw_addr.eq(Mux(slot_valid, slot_addr, walker.burst_addr)),
                     self.aw_len.eq(Mux(slot_valid, slot_len, walker.burst_beats - 1))]
        with m.If(slot_valid & self.aw_ready):
            m.d.sync += slot_valid.eq(push_aw)
            m.d.sync += [slot_addr.eq(walker.burst_addr), slot_len.eq(walker.burst_beats - 1)]
        with m.Elif(~slot_valid & push_aw & ~self.aw_ready):
            m.d.sync += [slot_valid.eq(1), slot_addr.eq(walker.burst_addr), slot_len.eq(walker.burst_beats - 1)]
        w_present = w_valid & (~new_burst | aw_pushed | push_aw)
        beats_in_burst = Mux(new_burst, Mux(aw_pushed, aw_beats, walker.burst_beats), burst_left)
        w_fire = w_present & self.w_ready
        m.d.comb += w_stall.eq(w_valid & ~w_fire)
        with m.If(push_aw & ~w_fire):
            m.d.sync += [aw_pushed.eq(1), aw_beats.eq(walker.burst_beats)]
        with m.If(w_fire):
            m.d.sync += [burst_left.eq(beats_in_burst - 1), aw_pushed.eq(0)]
        w_held = Signal()
        w_hold = Signal.like(self.acc_data)
        with m.If(w_stall & ~w_held):
            m.d.sync += [w_hold.eq(self.acc_data), w_held.eq(1)]
        with m.If(w_fire):
            m.d.sync += w_held.eq(0)
        raw_word = Mux(w_held, w_hold, self.acc_data)
        # ReLU on the way out: an accumulator with its sign bit set (negative, −0, −inf) goes out as +0
        w_word = Cat(*(Mux(w_args.relu & raw_word[32 * c + 31], 0, raw_word[32 * c:32 * c + 32])
                       for c in range(cfg.cols)))
        # bf16 STOREs: every accumulator rounded to nearest even (NaN canonical), the host's conversion
        w_half = Cat(*(bf16_round(m, f"bf16_{c}", w_word[32 * c:32 * c + 32]) for c in range(cfg.cols)))
        fp32_beat = w_word.word_select(w_in_word, bus_bits) if acc_word_beats > 1 else w_word
        bf16_beat = w_half.word_select(w_in_word, bus_bits) if half_word_beats > 1 else w_half
        m.d.comb += [self.w_valid.eq(w_present), self.w_last.eq(beats_in_burst == 1),
                     self.w_data.eq(Mux(w_args.bf16, bf16_beat, fp32_beat))]
        # write responses: cumulative bursts per store, completion in order
        bursts_issued = Signal(32)
        b_count = Signal(32)
        with m.If(push_aw):  # a burst committed (counted for the write responses)
            m.d.sync += bursts_issued.eq(bursts_issued + 1)
        m.submodules.awaiting = awaiting = SyncFIFO(width=32 + Entry.as_shape().size, depth=STORES_IN_FLIGHT + 1)
        m.d.comb += [awaiting.w_en.eq(w_fire & w_last_of_store),
                     awaiting.w_data.eq(Cat((bursts_issued + push_aw)[:32], w_info.as_value()))]
        response = self.alive & self.b_valid
        b_now = Signal(32)
        m.d.comb += b_now.eq(b_count + response)
        with m.If(response):
            m.d.sync += b_count.eq(b_now)
        head_bursts = awaiting.r_data[:32]
        aw_entry = Entry(awaiting.r_data[32:])
        done = Signal()
        m.d.comb += [done.eq(self.alive & awaiting.r_rdy & (b_now == head_bursts)), awaiting.r_en.eq(done),
                     self.s2c_push.eq(done & aw_entry.inst.deps.push_prev),
                     self.s2p_push.eq(done & aw_entry.inst.deps.push_next),
                     # the response is the head's if a STORE waits for its responses, else that of the STORE still sending
                     self.bus_error.eq(response & (self.b_resp != 0)),
                     self.error_pc.eq(Mux(awaiting.r_rdy, aw_entry.pc, w_info.pc)),
                     self.completing_pc.eq(aw_entry.pc),
                     self.busy.eq(reading | w_valid | slot_valid | (incomplete != 0))]
        m.d.sync += incomplete.eq(incomplete + start - done)
        return m
