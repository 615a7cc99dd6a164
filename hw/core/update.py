"""The weight-update engine: WEIGHT_UPDATE, SGD with momentum and weight decay on fp32 master weights in memory.

It shares the sparsifier's queue and memory port (one of the two runs at a
time, in program order, so a layer's SPARSIFY follows its update without a
token).  Chunk by chunk (the schedule of :func:`nmsat.hw.timing.update_cycles`):
a burst each of w, v and g; w and v beats go into two chunk buffers, and as
each g beat arrives the ``bus_bytes / 4`` lanes compute
``d = g + λ·w``, ``v' = μ·v + d``, ``w' = w − η·v'`` (fp32, the rule of
:func:`nmsat.sim.numerics.sgd_update`) and write w' and v' back in place;
then the new w and v bursts go out.  η, μ, λ come from the LR, MOMENTUM and
WEIGHT_DECAY registers.  Ends with the last write response.

Not here: the fp units (:mod:`nmsat.hw.fp`), the static checks (the dispatcher).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from ..config import SATConfig
from ..fp import Fp32Adder, Fp32Multiplier
from ..isa import Opcode
from .common import Entry, axi_master_constants, vector_engine_end, vector_engine_ports, vector_tokens_ok

__all__ = ["UpdateEngine"]


class UpdateEngine(wiring.Component):
    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        super().__init__({**vector_engine_ports(cfg), "lr": In(32), "momentum": In(32), "decay": In(32)})

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        bus = cfg.bus_bytes
        B = cfg.max_burst_beats
        P = bus // 4
        axi = self.mem
        axi_master_constants(m, axi, bus)
        head = self.queue.payload
        info = Entry(Signal(Entry.as_shape().size))
        args = info.inst.args.update
        IDLE, LAUNCH, RECEIVE, PREWRITE, WRITE, DRAIN = range(6)
        phase = Signal(range(6))
        outstanding = Signal(32)  # write bursts without a response (driven by vector_engine_end below)
        tokens_ok = vector_tokens_ok(self, head)
        start = self.start
        m.d.comb += [start.eq(self.running & self.queue.valid & (head.inst.opcode == Opcode.WEIGHT_UPDATE) &
                              (phase == IDLE) & (outstanding == 0) & ~self.other_busy & tokens_ok),
                     self.s2p_pop.eq(start & head.inst.deps.pop_prev), self.l2p_pop.eq(start & head.inst.deps.pop_next)]
        with m.If(start):
            m.d.sync += [info.eq(head), phase.eq(LAUNCH)]

        total = Signal(32)  # beats of each stream
        m.d.comb += total.eq(args.words * (4 * cfg.rows // bus))
        done_beats = Signal(32)  # beats of each stream before this chunk
        nb = Signal(range(B + 1))
        left = total - done_beats
        m.d.comb += nb.eq(Mux(left < B, left, B))
        base = [args.w_addr, args.w_addr + args.v_offset, args.w_addr + args.g_offset]

        # --- read: the three bursts, then their beats
        ar_step = Signal(range(4))
        m.d.comb += [axi.arvalid.eq(self.alive & (phase == LAUNCH) & (ar_step < 3)),
                     axi.araddr.eq(Mux(ar_step == 0, base[0], Mux(ar_step == 1, base[1], base[2])) + done_beats * bus),
                     axi.arlen.eq(nb - 1)]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += ar_step.eq(ar_step + 1)
        rx_stream = Signal(range(4))
        rx_beat = Signal(range(B + 1))
        beat_in = self.alive & axi.rvalid & ((phase == LAUNCH) | (phase == RECEIVE))
        with m.If((phase == LAUNCH) & (ar_step == 2) & axi.arready):
            m.d.sync += phase.eq(RECEIVE)
        last_of_stream = rx_beat == nb - 1
        with m.If(beat_in):
            with m.If(last_of_stream):
                m.d.sync += [rx_beat.eq(0), rx_stream.eq(rx_stream + 1)]
            with m.Else():
                m.d.sync += rx_beat.eq(rx_beat + 1)
        received = beat_in & last_of_stream & (rx_stream == 2)

        m.submodules.buf_w = buf_w = Memory(shape=unsigned(8 * bus), depth=B, init=[])
        m.submodules.buf_v = buf_v = Memory(shape=unsigned(8 * bus), depth=B, init=[])
        w_wr, v_wr = buf_w.write_port(), buf_v.write_port()
        w_rd, v_rd = buf_w.read_port(transparent_for=(w_wr,)), buf_v.read_port(transparent_for=(v_wr,))
        g_beat = beat_in & (rx_stream == 2)
        # the lanes: one fp32 element per 4 bytes of a beat
        w_new, v_new = [], []
        for q in range(P):
            w_q, v_q, g_q = (x[32 * q:32 * q + 32] for x in (w_rd.data, v_rd.data, axi.rdata))
            units = {}
            for name in ("decay_w", "mom_v", "lr_v"):
                units[name] = m.submodules[f"{name}_{q}"] = Fp32Multiplier()
            for name in ("d", "v", "w"):
                units[name] = m.submodules[f"add_{name}_{q}"] = Fp32Adder()
            m.d.comb += [units["decay_w"].a.eq(self.decay), units["decay_w"].b.eq(w_q),
                         units["d"].a.eq(g_q), units["d"].b.eq(units["decay_w"].product),
                         units["mom_v"].a.eq(self.momentum), units["mom_v"].b.eq(v_q),
                         units["v"].a.eq(units["mom_v"].product), units["v"].b.eq(units["d"].sum),
                         units["lr_v"].a.eq(self.lr), units["lr_v"].b.eq(units["v"].sum),
                         units["w"].a.eq(w_q), units["w"].b.eq(units["lr_v"].product ^ 0x80000000)]
            w_new.append(units["w"].sum)
            v_new.append(units["v"].sum)
        g_count = Signal(range(B + 1))  # g beats of this chunk received before this cycle
        with m.If(g_beat):
            m.d.sync += g_count.eq(g_count + 1)
        m.d.comb += [w_wr.addr.eq(Mux(g_beat, g_count, rx_beat)), v_wr.addr.eq(Mux(g_beat, g_count, rx_beat)),
                     w_wr.data.eq(Mux(g_beat, Cat(*w_new), axi.rdata)), v_wr.data.eq(Mux(g_beat, Cat(*v_new), axi.rdata)),
                     w_wr.en.eq(beat_in & ((rx_stream == 0) | g_beat)), v_wr.en.eq(beat_in & ((rx_stream == 1) | g_beat))]
        with m.If(received):
            m.d.sync += [phase.eq(PREWRITE), g_count.eq(0), rx_stream.eq(0)]

        # --- write: the new w burst, then the new v burst
        wb = Signal(range(2 * B + 1))
        aw_count = Signal(range(3))  # burst addresses accepted this chunk (w's, then v's; never ahead of W)
        sending = (phase == WRITE)
        second = wb >= nb
        idx = Mux(second, wb - nb, wb)
        m.d.comb += [axi.wvalid.eq(self.alive & sending & (wb < 2 * nb)), axi.wdata.eq(Mux(second, v_rd.data, w_rd.data)),
                     axi.wlast.eq((wb == nb - 1) | (wb == 2 * nb - 1)),
                     axi.awvalid.eq(self.alive & sending & ((aw_count == 0) | ((aw_count == 1) & second))),
                     axi.awaddr.eq(Mux(aw_count == 0, base[0], base[1]) + done_beats * bus), axi.awlen.eq(nb - 1)]
        advance = axi.wvalid & axi.wready
        next_idx = Signal(range(B + 1))
        m.d.comb += next_idx.eq(Mux(advance, Mux(wb == nb - 1, 0, Mux(second, wb + 1 - nb, wb + 1)), idx))
        m.d.comb += [w_rd.addr.eq(Mux(phase == PREWRITE, 0, Mux(sending, next_idx, g_count + g_beat))),
                     v_rd.addr.eq(Mux(phase == PREWRITE, 0, Mux(sending, next_idx, g_count + g_beat)))]
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += aw_count.eq(aw_count + 1)
        with m.If(phase == PREWRITE):
            m.d.sync += [phase.eq(WRITE), wb.eq(0), aw_count.eq(0)]
        # the chunk's writes end when its last beat and both burst addresses are out (with back-pressure on AW
        # the v burst's address may come after the last beat)
        aw_fire = axi.awvalid & axi.awready
        last_beat = sending & ((wb + advance) == 2 * nb) & ((aw_count + aw_fire) == 2)
        with m.If(advance):
            m.d.sync += wb.eq(wb + 1)
        with m.If(last_beat):
            m.d.sync += [done_beats.eq(done_beats + nb), ar_step.eq(0), rx_beat.eq(0)]
            with m.If(done_beats + nb == total):
                m.d.sync += phase.eq(DRAIN)
            with m.Else():
                m.d.sync += phase.eq(LAUNCH)
        with m.If(start):
            m.d.sync += [done_beats.eq(0), ar_step.eq(0), rx_beat.eq(0), rx_stream.eq(0), g_count.eq(0)]

        # --- responses, the end
        m.d.comb += outstanding.eq(vector_engine_end(m, self, info=info, phase=phase, draining=DRAIN, idle=IDLE,
                                                     beat_in=beat_in, issued=aw_fire))
        return m
