"""The stream engine: WEIGHT_UPDATE (SGD with momentum and weight decay on fp32 master weights in memory) and
VECTOR (element functions on arrays in memory) — the weight-update engine grown into the vector unit.

It shares the sparsifier's queue and memory port (one of the two runs at a
time, in program order, so a layer's SPARSIFY follows its update without a
token).  Chunk by chunk (the schedule of :func:`nmsat.hw.timing.stream_cycles`):
a burst of each array read; all but the last array's beats go into chunk
buffers, and as each beat of the last arrives it enters the lanes with the
buffered beats; the lanes are pipelined (fp32 multipliers of two stages,
adders of four: :data:`nmsat.hw.timing.STREAM_LANE_LATENCY` cycles from a
beat to its results), whose results go into result buffers of their own;
then the result bursts go out.

* WEIGHT_UPDATE reads w, v, g; ``bus_bytes / 4`` lanes compute
  ``d = g + λ·w``, ``v' = μ·v + d``, ``w' = w − η·v'`` (fp32, the rule of
  :func:`nmsat.sim.numerics.sgd_update`); w' and v' go back in place.  η, μ,
  λ come from the LR, MOMENTUM and WEIGHT_DECAY registers.
* VECTOR reads x, y and writes z = func(x, y) (:func:`nmsat.sim.numerics.vector_op`)
  with the same units: each lane takes one fp32 element, or two bf16 ones
  (its first multiplier and adder the even element, its second pair the odd).

Ends with the last write response.  Not here: the fp units (:mod:`nmsat.hw.fp`),
the static checks (:mod:`.check`).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from ..config import SATConfig
from ..fp import ADDER_STAGES, MULTIPLIER_STAGES, Fp32Adder, Fp32Multiplier
from ..isa import Opcode, VectorFunc
from ..timing import STREAM_LANE_LATENCY as LANE_LATENCY
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
        IDLE, RUN, DRAIN = range(3)
        phase = Signal(range(3))
        outstanding = Signal(32)  # write bursts without a response (driven by vector_engine_end below)
        tokens_ok = vector_tokens_ok(self, head)
        start = self.start
        ours = (head.inst.opcode == Opcode.WEIGHT_UPDATE) | (head.inst.opcode == Opcode.VECTOR)
        m.d.comb += [start.eq(self.running & self.queue.valid & ours &
                              (phase == IDLE) & (outstanding == 0) & ~self.other_busy & tokens_ok),
                     self.s2p_pop.eq(start & head.inst.deps.pop_prev), self.l2p_pop.eq(start & head.inst.deps.pop_next)]
        with m.If(start):
            m.d.sync += [info.eq(head), phase.eq(RUN)]
        is_vec = Signal()
        m.d.comb += is_vec.eq(info.inst.opcode == Opcode.VECTOR)
        half = Signal()  # VECTOR on bf16 elements
        m.d.comb += half.eq(is_vec & vec.bf16)
        last_stream = Mux(is_vec, 1, 2)  # the array whose beats compute: g, or y

        # beats of each array, from the head at the start (the counters below count down from it)
        head_total = Mux(head.inst.opcode == Opcode.VECTOR, head.inst.args.vector.beats,
                         head.inst.args.update.words * (4 * cfg.rows // bus))
        burst = B * bus
        y_addr, z_addr = Signal(cfg.addr_bits + 1), Signal(cfg.addr_bits + 1)
        m.d.comb += [y_addr.eq(vec.x_addr + vec.y_offset * burst), z_addr.eq(vec.x_addr + vec.z_offset * burst)]
        base = [args.w_addr, Mux(is_vec, y_addr, args.w_addr + args.v_offset), args.w_addr + args.g_offset]
        running = phase == RUN

        def chunk_beats(name, left):
            """Beats of the chunk that starts with ``left`` beats to go: a whole burst or what is left."""
            nb = Signal(range(B + 1), name=name)
            m.d.comb += nb.eq(Mux(left < B, left, B))
            return nb

        # two chunks in the buffers (halves): the read side addresses chunk c once chunk c-2 is written
        ar_done, wr_done = Signal(32), Signal(32)  # beats addressed / written (their addresses)
        # the beats left to address, receive and write (counted down, so that no sum precedes the chunk sizes
        # and the end)
        ar_left, rx_left, wr_left = Signal(32), Signal(32), Signal(32)
        rx_chunks, wr_chunks = Signal(), Signal()  # whole chunks received and written, mod 2: the halves they use
        # chunks addressed and chunks computed, less those written (kept as differences: small, no wide compare)
        ahead, lead = Signal(signed(8)), Signal(signed(8))
        nb_ar, nb_rx, nb_wr = chunk_beats("nb_ar", ar_left), chunk_beats("nb_rx", rx_left), chunk_beats("nb_wr", wr_left)

        # --- read addresses: a burst of each array per chunk, one a cycle, chunk after chunk
        ar_step = Signal(range(4))
        m.d.comb += [axi.arvalid.eq(self.alive & running & (ar_left != 0) &
                                    ((ar_step != 0) | (ahead < 2))),
                     axi.araddr.eq(Mux(ar_step == 0, base[0], Mux(ar_step == 1, base[1], base[2])) + ar_done * bus),
                     axi.arlen.eq(nb_ar - 1)]
        with m.If(axi.arvalid & axi.arready):
            with m.If(ar_step == last_stream):
                m.d.sync += [ar_step.eq(0), ar_done.eq(ar_done + nb_ar), ar_left.eq(ar_left - nb_ar)]
            with m.Else():
                m.d.sync += ar_step.eq(ar_step + 1)

        # --- read beats: into the buffer half of their chunk; the last array's compute as they arrive
        rx_stream = Signal(range(4))
        rx_beat = Signal(range(B + 1))
        beat_in = self.alive & axi.rvalid & running
        last_of_stream = rx_beat == nb_rx - 1
        with m.If(beat_in):
            with m.If(last_of_stream):
                m.d.sync += [rx_beat.eq(0), rx_stream.eq(rx_stream + 1)]
            with m.Else():
                m.d.sync += rx_beat.eq(rx_beat + 1)
        received = beat_in & last_of_stream & (rx_stream == last_stream)  # the chunk's last read beat

        m.submodules.buf_w = buf_w = Memory(shape=unsigned(8 * bus), depth=2 * B, init=[])
        m.submodules.buf_v = buf_v = Memory(shape=unsigned(8 * bus), depth=2 * B, init=[])
        # the lanes' results (w', v'; VECTOR: z in res_w), written LANE_LATENCY after their beat arrived
        m.submodules.res_w = res_w = Memory(shape=unsigned(8 * bus), depth=2 * B, init=[])
        m.submodules.res_v = res_v = Memory(shape=unsigned(8 * bus), depth=2 * B, init=[])
        w_wr, v_wr = buf_w.write_port(), buf_v.write_port()
        rw_wr, rv_wr = res_w.write_port(), res_v.write_port()
        # compute ports (the buffered operands of the beat arriving) and write-side ports (the results going out)
        w_rd, v_rd = buf_w.read_port(transparent_for=(w_wr,)), buf_v.read_port(transparent_for=(v_wr,))
        w_out, v_out = res_w.read_port(), res_v.read_port()
        rx_half, wr_half = rx_chunks[0], wr_chunks[0]
        lb = (B - 1).bit_length()  # index bits within a half

        def at(index, half_bit):
            """Buffer address of beat ``index`` (< B) of the half ``half_bit``."""
            return Cat(index[:lb], half_bit)

        def delayed(name, value, cycles, *, reset=False):
            """``value`` ``cycles`` cycles ago (registers; ``reset``: cleared with the core, for controls)."""
            for k in range(cycles):
                reg = Signal(Value.cast(value).shape(), name=f"{name}_d{k + 1}", reset_less=not reset)
                m.d.sync += reg.eq(value)
                value = reg
            return value
        g_beat = beat_in & (rx_stream == last_stream)
        # the lanes, each a pipeline of LANE_LATENCY stages taking a beat every cycle: one fp32 element per 4
        # bytes of a beat (VECTOR bf16: two elements, even and odd).  Cycle k after the beat (k = 0: its
        # operands w_q, v_q from the buffers and g_q from the bus):
        #   WEIGHT_UPDATE  0: λ·w, μ·v   2: g + λ·w   6: μ·v + d   10: η·v'   12: w − η·v'   16: w', v' out
        #   VECTOR         0: x·y (MUL) and the compares; 2: x0 ± y0 (even), 6: x1 ± y1 (odd); 10: picked,
        #                  rounded to bf16 (bf16 elements), then on to 16
        Lm, La = MULTIPLIER_STAGES, ADDER_STAGES
        assert LANE_LATENCY == 2 * Lm + 3 * La
        w_new, v_new, z_out = [], [], []
        func = vec.func
        addsub = (func == VectorFunc.ADD) | (func == VectorFunc.SUB)
        negate = (func == VectorFunc.SUB) << 31  # SUB: the adders take y with its sign flipped
        for q in range(P):
            w_q, v_q, g_q = (x[32 * q:32 * q + 32] for x in (w_rd.data, v_rd.data, axi.rdata))
            w_at, g_at = {0: w_q}, {0: g_q}  # the operands k cycles after the beat
            for k in (Lm, Lm + La, 2 * Lm + 2 * La):
                w_at[k] = delayed(f"w_{q}_{k}", w_at[max(w_at)], k - max(w_at))
            for k in (Lm, Lm + La):
                g_at[k] = delayed(f"g_{q}_{k}", g_at[max(g_at)], k - max(g_at))

            def elements(k):
                """VECTOR's operands k cycles after the beat: (x0, y0), (x1, y1), widened to fp32."""
                wk, gk = w_at[k], g_at[k]
                return ((Mux(half, Cat(Const(0, 16), wk[:16]), wk), Mux(half, Cat(Const(0, 16), gk[:16]), gk)),
                        (Cat(Const(0, 16), wk[16:]), Cat(Const(0, 16), gk[16:])))
            units = {}
            for name in ("decay_w", "mom_v", "lr_v"):
                units[name] = m.submodules[f"{name}_{q}"] = Fp32Multiplier(pipelined=True)
            for name in ("d", "v", "w"):
                units[name] = m.submodules[f"add_{name}_{q}"] = Fp32Adder(pipelined=True)
            (x0, y0), (x1, y1) = elements(0)
            (x0_d, y0_d), _ = elements(Lm)
            _, (x1_v, y1_v) = elements(Lm + La)
            mom_v = delayed(f"mom_v_{q}", units["mom_v"].product, La)  # μ·v beside d (cycle Lm + La)
            m.d.comb += [units["decay_w"].a.eq(Mux(is_vec, x0, self.decay)), units["decay_w"].b.eq(Mux(is_vec, y0, w_q)),
                         units["mom_v"].a.eq(Mux(is_vec, x1, self.momentum)), units["mom_v"].b.eq(Mux(is_vec, y1, v_q)),
                         units["d"].a.eq(Mux(is_vec, x0_d, g_at[Lm])),
                         units["d"].b.eq(Mux(is_vec, y0_d ^ negate, units["decay_w"].product)),
                         units["v"].a.eq(Mux(is_vec, x1_v, mom_v)),
                         units["v"].b.eq(Mux(is_vec, y1_v ^ negate, units["d"].sum)),
                         units["lr_v"].a.eq(self.lr), units["lr_v"].b.eq(units["v"].sum),
                         units["w"].a.eq(w_at[2 * Lm + 2 * La]), units["w"].b.eq(units["lr_v"].product ^ 0x80000000)]
            # VECTOR's compares (cycle 0), per element
            compared = []
            for x, y in ((x0, y0), (x1, y1)):
                fx, fy = _flush(x), _flush(y)
                passes = ~((fy[:31] == 0) | (fy[31] & ~_is_nan(fy)))  # y ≤ 0 stops x; a NaN y passes it
                larger = Mux(_is_nan(x) | _is_nan(y), 0x7FC00000, Mux(_order_key(fx) >= _order_key(fy), fx, fy))
                compared.append(Mux(func == VectorFunc.RELU_GRAD, Mux(passes, fx, 0), larger))
            # each element's result goes down a line of registers; a unit's result replaces it where it is out
            even, odd = compared
            picked = Lm + 2 * La  # 10: the odd sum is out; the results are picked and rounded here
            for k in range(LANE_LATENCY):
                if k == Lm:
                    even = Mux(is_vec & (func == VectorFunc.MUL), units["decay_w"].product, even)
                    odd = Mux(is_vec & (func == VectorFunc.MUL), units["mom_v"].product, odd)
                if k == Lm + La:
                    even = Mux(addsub, units["d"].sum, even)
                if k == picked:  # v' (WEIGHT_UPDATE) or the odd element's sum
                    odd = Mux(~is_vec | addsub, units["v"].sum, odd)
                    even = Mux(half, Cat(bf16_round(m, f"z_{q}_0", even), bf16_round(m, f"z_{q}_1", odd)), even)
                even, odd = delayed(f"even_{q}_{k}", even, 1), delayed(f"odd_{q}_{k}", odd, 1)
            w_new.append(units["w"].sum)
            v_new.append(odd)
            z_out.append(even)
        g_count = Signal(range(B + 1))  # computing beats of this chunk received before this cycle
        with m.If(g_beat):
            m.d.sync += g_count.eq(Mux(last_of_stream, 0, g_count + 1))
        operand = Signal(range(B + 1))  # the buffered beat the next computing beat meets
        m.d.comb += operand.eq(g_count + g_beat)
        slot = Signal(range(B + 1))
        m.d.comb += slot.eq(Mux(g_beat, g_count, rx_beat))
        m.d.comb += [w_wr.addr.eq(at(slot, rx_half)), v_wr.addr.eq(at(slot, rx_half)),
                     w_wr.data.eq(axi.rdata), v_wr.data.eq(axi.rdata),
                     w_wr.en.eq(beat_in & (rx_stream == 0)),
                     v_wr.en.eq(beat_in & ~is_vec & (rx_stream == 1)),
                     w_rd.addr.eq(at(operand, rx_half)), v_rd.addr.eq(at(operand, rx_half))]
        # the results of the beat that arrived LANE_LATENCY cycles ago, into its slot of the result buffers
        out_valid = delayed("result_valid", g_beat, LANE_LATENCY, reset=True)
        out_addr = delayed("result_addr", at(g_count, rx_half), LANE_LATENCY)
        m.d.comb += [rw_wr.addr.eq(out_addr), rv_wr.addr.eq(out_addr),
                     rw_wr.data.eq(Mux(is_vec, Cat(*z_out), Cat(*w_new))), rv_wr.data.eq(Cat(*v_new)),
                     rw_wr.en.eq(out_valid), rv_wr.en.eq(out_valid & ~is_vec)]
        # a chunk is computed when the results of its last beat are in the result buffers
        computed = delayed("computed", received, LANE_LATENCY, reset=True)
        with m.If(received):
            m.d.sync += [rx_stream.eq(0), rx_left.eq(rx_left - nb_rx), rx_chunks.eq(rx_chunks + 1)]

        # --- writes: chunk by chunk once read, the w burst then the v burst (VECTOR: the z burst)
        WIDLE, PREWRITE, WRITE = range(3)
        wphase = Signal(range(3))
        wb = Signal(range(2 * B + 1))
        aw_count = Signal(range(3))  # burst addresses accepted this chunk (w's, then v's; never ahead of W)
        outputs = Mux(is_vec, 1, 2)
        sending = running & (wphase == WRITE)
        second = ~is_vec & (wb >= nb_wr)
        idx = Mux(second, wb - nb_wr, wb)
        m.d.comb += [axi.wvalid.eq(self.alive & sending & (wb < outputs * nb_wr)),
                     axi.wdata.eq(Mux(second, v_out.data, w_out.data)),
                     axi.wlast.eq((wb == nb_wr - 1) | (wb == 2 * nb_wr - 1)),
                     axi.awvalid.eq(self.alive & sending & ((aw_count == 0) | ((aw_count == 1) & second))),
                     axi.awaddr.eq(Mux(aw_count == 0, Mux(is_vec, z_addr, base[0]), base[1]) + wr_done * bus),
                     axi.awlen.eq(nb_wr - 1)]
        advance = axi.wvalid & axi.wready
        next_idx = Signal(range(B + 1))
        m.d.comb += next_idx.eq(Mux(advance, Mux(wb == nb_wr - 1, 0, Mux(second, wb + 1 - nb_wr, wb + 1)), idx))
        out_idx = Signal(range(B + 1))
        m.d.comb += out_idx.eq(Mux(wphase == PREWRITE, 0, next_idx))
        m.d.comb += [w_out.addr.eq(at(out_idx, wr_half)), v_out.addr.eq(at(out_idx, wr_half))]
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += aw_count.eq(aw_count + 1)
        # the chunk being written (or the one after it) is computed, counting the chunk whose last results go in now
        ready_now = (lead > 0) | (computed & (lead == 0))
        ready_next = (lead > 1) | (computed & (lead == 1))
        with m.If(running & (wphase == WIDLE) & ready_now):
            m.d.sync += wphase.eq(PREWRITE)
        with m.If(wphase == PREWRITE):
            m.d.sync += [wphase.eq(WRITE), wb.eq(0), aw_count.eq(0)]
        # the chunk's writes end when its last beat and every burst address are out (with back-pressure on AW
        # the v burst's address may come after the last beat)
        aw_fire = axi.awvalid & axi.awready
        last_beat = sending & ((wb + advance) == outputs * nb_wr) & ((aw_count + aw_fire) == outputs)
        with m.If(advance):
            m.d.sync += wb.eq(wb + 1)
        with m.If(last_beat):
            m.d.sync += [wr_done.eq(wr_done + nb_wr), wr_left.eq(wr_left - nb_wr), wr_chunks.eq(wr_chunks + 1),
                         wphase.eq(Mux(ready_next, PREWRITE, WIDLE))]
            with m.If(wr_left <= B):  # wr_done + nb_wr == total
                m.d.sync += [phase.eq(DRAIN), wphase.eq(WIDLE)]
        ar_chunk_done = axi.arvalid & axi.arready & (ar_step == last_stream)
        m.d.sync += [ahead.eq(ahead + ar_chunk_done - last_beat), lead.eq(lead + computed - last_beat)]
        with m.If(start):
            m.d.sync += [ar_done.eq(0), wr_done.eq(0), rx_chunks.eq(0), ahead.eq(0), lead.eq(0),
                         ar_left.eq(head_total), rx_left.eq(head_total), wr_left.eq(head_total),
                         wr_chunks.eq(0), ar_step.eq(0), rx_beat.eq(0), rx_stream.eq(0), g_count.eq(0),
                         wphase.eq(WIDLE)]

        # --- responses, the end
        m.d.comb += outstanding.eq(vector_engine_end(m, self, info=info, phase=phase, draining=DRAIN, idle=IDLE,
                                                     beat_in=beat_in, issued=aw_fire))
        return m
