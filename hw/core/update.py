"""The stream engine: WEIGHT_UPDATE (SGD with momentum and weight decay on fp32 master weights in memory) and
VECTOR (element functions on arrays in memory) — the weight-update engine grown into the vector unit.

It shares the sparsifier's queue and memory port (one of the two runs at a
time, in program order, so a layer's SPARSIFY follows its update without a
token).  Chunk by chunk (the schedule of :func:`nmsat.hw.timing.stream_cycles`):
a burst of each array read; all but the last array's beats go into chunk
buffers, and as each beat of the last arrives the lanes compute with the
buffered beats and write the results back into the buffers; then the result
bursts go out.

* WEIGHT_UPDATE reads w, v, g; ``bus_bytes / 4`` lanes compute
  ``d = g + λ·w``, ``v' = μ·v + d``, ``w' = w − η·v'`` (fp32, the rule of
  :func:`nmsat.sim.numerics.sgd_update`); w' and v' go back in place.  η, μ,
  λ come from the LR, MOMENTUM and WEIGHT_DECAY registers.
* VECTOR reads x, y and writes z = func(x, y) (:func:`nmsat.sim.numerics.vector_op`)
  with the same units: each lane takes one fp32 element, or two bf16 ones
  (its first multiplier and adder the even element, its second pair the odd).

Ends with the last write response.  Not here: the fp units (:mod:`nmsat.hw.fp`),
the static checks (the dispatcher).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from ..config import SATConfig
from ..fp import Fp32Adder, Fp32Multiplier
from ..isa import Opcode, VectorFunc
from .common import Entry, axi_master_constants, bf16_round, vector_engine_end, vector_engine_ports, vector_tokens_ok

__all__ = ["UpdateEngine"]


def _flush(value) -> Value:
    """fp32 bits under rules 1 and 4: a subnormal reads as a zero of its sign, a NaN as the canonical NaN."""
    exponent = value[23:31]
    return Mux(_is_nan(value), 0x7FC00000, Mux(exponent == 0, Cat(Const(0, 31), value[31]), value))


def _is_nan(value) -> Value:
    return (value[23:31] == 0xFF) & (value[:23] != 0)


def _order_key(value) -> Value:
    """Unsigned keys in the order of the values (−0 just below +0), for flushed non-NaN fp32 bits."""
    return Mux(value[31], ~value, value | 0x80000000)


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
        args, vec = info.inst.args.update, info.inst.args.vector
        IDLE, LAUNCH, RECEIVE, PREWRITE, WRITE, DRAIN = range(6)
        phase = Signal(range(6))
        outstanding = Signal(32)  # write bursts without a response (driven by vector_engine_end below)
        tokens_ok = vector_tokens_ok(self, head)
        start = self.start
        ours = (head.inst.opcode == Opcode.WEIGHT_UPDATE) | (head.inst.opcode == Opcode.VECTOR)
        m.d.comb += [start.eq(self.running & self.queue.valid & ours &
                              (phase == IDLE) & (outstanding == 0) & ~self.other_busy & tokens_ok),
                     self.s2p_pop.eq(start & head.inst.deps.pop_prev), self.l2p_pop.eq(start & head.inst.deps.pop_next)]
        with m.If(start):
            m.d.sync += [info.eq(head), phase.eq(LAUNCH)]
        is_vec = Signal()
        m.d.comb += is_vec.eq(info.inst.opcode == Opcode.VECTOR)
        half = Signal()  # VECTOR on bf16 elements
        m.d.comb += half.eq(is_vec & vec.bf16)
        last_stream = Mux(is_vec, 1, 2)  # the array whose beats compute: g, or y

        total = Signal(32)  # beats of each array
        m.d.comb += total.eq(Mux(is_vec, vec.beats, args.words * (4 * cfg.rows // bus)))
        done_beats = Signal(32)  # beats of each stream before this chunk
        nb = Signal(range(B + 1))
        left = total - done_beats
        m.d.comb += nb.eq(Mux(left < B, left, B))
        burst = B * bus
        y_addr, z_addr = Signal(cfg.addr_bits + 1), Signal(cfg.addr_bits + 1)
        m.d.comb += [y_addr.eq(vec.x_addr + vec.y_offset * burst), z_addr.eq(vec.x_addr + vec.z_offset * burst)]
        base = [args.w_addr, Mux(is_vec, y_addr, args.w_addr + args.v_offset), args.w_addr + args.g_offset]

        # --- read: a burst of each array, then their beats
        ar_step = Signal(range(4))
        m.d.comb += [axi.arvalid.eq(self.alive & (phase == LAUNCH) & (ar_step <= last_stream)),
                     axi.araddr.eq(Mux(ar_step == 0, base[0], Mux(ar_step == 1, base[1], base[2])) + done_beats * bus),
                     axi.arlen.eq(nb - 1)]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += ar_step.eq(ar_step + 1)
        rx_stream = Signal(range(4))
        rx_beat = Signal(range(B + 1))
        beat_in = self.alive & axi.rvalid & ((phase == LAUNCH) | (phase == RECEIVE))
        with m.If((phase == LAUNCH) & (ar_step == last_stream) & axi.arready):
            m.d.sync += phase.eq(RECEIVE)
        last_of_stream = rx_beat == nb - 1
        with m.If(beat_in):
            with m.If(last_of_stream):
                m.d.sync += [rx_beat.eq(0), rx_stream.eq(rx_stream + 1)]
            with m.Else():
                m.d.sync += rx_beat.eq(rx_beat + 1)
        received = beat_in & last_of_stream & (rx_stream == last_stream)

        m.submodules.buf_w = buf_w = Memory(shape=unsigned(8 * bus), depth=B, init=[])
        m.submodules.buf_v = buf_v = Memory(shape=unsigned(8 * bus), depth=B, init=[])
        w_wr, v_wr = buf_w.write_port(), buf_v.write_port()
        w_rd, v_rd = buf_w.read_port(transparent_for=(w_wr,)), buf_v.read_port(transparent_for=(v_wr,))
        g_beat = beat_in & (rx_stream == last_stream)
        # the lanes: one fp32 element per 4 bytes of a beat (VECTOR bf16: two elements, even and odd)
        w_new, v_new, z_out = [], [], []
        for q in range(P):
            w_q, v_q, g_q = (x[32 * q:32 * q + 32] for x in (w_rd.data, v_rd.data, axi.rdata))
            # VECTOR's operands: element pairs (x0, y0) and (x1, y1) of this lane, widened to fp32
            x0 = Mux(half, Cat(Const(0, 16), w_q[:16]), w_q)
            y0 = Mux(half, Cat(Const(0, 16), g_q[:16]), g_q)
            x1, y1 = Cat(Const(0, 16), w_q[16:]), Cat(Const(0, 16), g_q[16:])
            units = {}
            for name in ("decay_w", "mom_v", "lr_v"):
                units[name] = m.submodules[f"{name}_{q}"] = Fp32Multiplier()
            for name in ("d", "v", "w"):
                units[name] = m.submodules[f"add_{name}_{q}"] = Fp32Adder()
            m.d.comb += [units["decay_w"].a.eq(Mux(is_vec, x0, self.decay)), units["decay_w"].b.eq(Mux(is_vec, y0, w_q)),
                         units["d"].a.eq(Mux(is_vec, x0, g_q)),
                         units["d"].b.eq(Mux(is_vec, y0, units["decay_w"].product)),
                         units["mom_v"].a.eq(Mux(is_vec, x1, self.momentum)), units["mom_v"].b.eq(Mux(is_vec, y1, v_q)),
                         units["v"].a.eq(Mux(is_vec, x1, units["mom_v"].product)),
                         units["v"].b.eq(Mux(is_vec, y1, units["d"].sum)),
                         units["lr_v"].a.eq(self.lr), units["lr_v"].b.eq(units["v"].sum),
                         units["w"].a.eq(w_q), units["w"].b.eq(units["lr_v"].product ^ 0x80000000)]
            w_new.append(units["w"].sum)
            v_new.append(units["v"].sum)
            results = []
            for x, y, mul, add in ((x0, y0, units["decay_w"], units["d"]), (x1, y1, units["mom_v"], units["v"])):
                fx, fy = _flush(x), _flush(y)
                passes = ~((fy[:31] == 0) | (fy[31] & ~_is_nan(fy)))  # y ≤ 0 stops x; a NaN y passes it
                larger = Mux(_is_nan(x) | _is_nan(y), 0x7FC00000,
                             Mux(_order_key(fx) >= _order_key(fy), fx, fy))
                r = Signal(32, name=f"vec_{q}_{len(results)}")
                with m.Switch(vec.func):
                    with m.Case(VectorFunc.ADD):
                        m.d.comb += r.eq(add.sum)
                    with m.Case(VectorFunc.MUL):
                        m.d.comb += r.eq(mul.product)
                    with m.Case(VectorFunc.RELU_GRAD):
                        m.d.comb += r.eq(Mux(passes, fx, 0))
                    with m.Default():
                        m.d.comb += r.eq(larger)
                results.append(r)
            z_out.append(Mux(half, Cat(bf16_round(m, f"z_{q}_0", results[0]), bf16_round(m, f"z_{q}_1", results[1])),
                             results[0]))
        g_count = Signal(range(B + 1))  # computing beats of this chunk received before this cycle
        with m.If(g_beat):
            m.d.sync += g_count.eq(g_count + 1)
        m.d.comb += [w_wr.addr.eq(Mux(g_beat, g_count, rx_beat)), v_wr.addr.eq(Mux(g_beat, g_count, rx_beat)),
                     w_wr.data.eq(Mux(g_beat, Mux(is_vec, Cat(*z_out), Cat(*w_new)), axi.rdata)),
                     v_wr.data.eq(Mux(g_beat, Cat(*v_new), axi.rdata)),
                     w_wr.en.eq(beat_in & ((rx_stream == 0) | g_beat)),
                     v_wr.en.eq(beat_in & ~is_vec & ((rx_stream == 1) | g_beat))]
        with m.If(received):
            m.d.sync += [phase.eq(PREWRITE), g_count.eq(0), rx_stream.eq(0)]

        # --- write: the new w burst, then the new v burst (VECTOR: the z burst)
        wb = Signal(range(2 * B + 1))
        aw_count = Signal(range(3))  # burst addresses accepted this chunk (w's, then v's; never ahead of W)
        outputs = Mux(is_vec, 1, 2)
        sending = (phase == WRITE)
        second = ~is_vec & (wb >= nb)
        idx = Mux(second, wb - nb, wb)
        m.d.comb += [axi.wvalid.eq(self.alive & sending & (wb < outputs * nb)),
                     axi.wdata.eq(Mux(second, v_rd.data, w_rd.data)),
                     axi.wlast.eq((wb == nb - 1) | (wb == 2 * nb - 1)),
                     axi.awvalid.eq(self.alive & sending & ((aw_count == 0) | ((aw_count == 1) & second))),
                     axi.awaddr.eq(Mux(aw_count == 0, Mux(is_vec, z_addr, base[0]), base[1]) + done_beats * bus),
                     axi.awlen.eq(nb - 1)]
        advance = axi.wvalid & axi.wready
        next_idx = Signal(range(B + 1))
        m.d.comb += next_idx.eq(Mux(advance, Mux(wb == nb - 1, 0, Mux(second, wb + 1 - nb, wb + 1)), idx))
        m.d.comb += [w_rd.addr.eq(Mux(phase == PREWRITE, 0, Mux(sending, next_idx, g_count + g_beat))),
                     v_rd.addr.eq(Mux(phase == PREWRITE, 0, Mux(sending, next_idx, g_count + g_beat)))]
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += aw_count.eq(aw_count + 1)
        with m.If(phase == PREWRITE):
            m.d.sync += [phase.eq(WRITE), wb.eq(0), aw_count.eq(0)]
        # the chunk's writes end when its last beat and every burst address are out (with back-pressure on AW
        # the v burst's address may come after the last beat)
        aw_fire = axi.awvalid & axi.awready
        last_beat = sending & ((wb + advance) == outputs * nb) & ((aw_count + aw_fire) == outputs)
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
