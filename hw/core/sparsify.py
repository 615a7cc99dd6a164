"""The sparsifier (SAT's SORE role): fp32 weights in memory → N:M compressed slot values and IDX words in memory.

One SPARSIFY at a time, chunk by chunk (the schedule of
:func:`nmsat.hw.timing.sparsify_cycles`): a chunk is ``rows`` lanes ×
``sparsify_chunk`` elements of fp32, read as one 2-D transfer on the
sparsifier's own AXI4 master into a tile of registers — FF (``transpose``)
one source row per lane, BP one source row per element, which is where the
tile transposes — then emitted group by group: in a *rank* cycle every lane
ranks the group's m keys at once (a comparator per pair of positions, the
key of :mod:`nmsat.hw.sparsity`: the bit pattern with the sign cleared, ties
to the lower index; elements past ``length`` read as +0 and so never beat a
real one) and registers its n kept values (rounded to bf16, nearest even,
NaN canonical) in increasing index; then the group's n slot words go out,
one bus beat a cycle, each IDX word right after the slot that completes it.
Every beat is a single-beat burst (AW and W together), so no burst crosses
a page.  The instruction ends when its last write response is in.  Pops
``s2p``/``l2p`` when it starts, pushes ``p2s``/``p2l`` when it ends.

Not here: the selection rule in numpy (:mod:`nmsat.hw.sparsity`, the
reference), the instruction's static checks (:mod:`.check`).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring

from ..config import IDX_SLOTS_PER_WORD, SATConfig
from ..isa import Opcode
from .common import (BurstWalker, Entry, axi_master_constants, bf16_round, vector_engine_end, vector_engine_ports,
                     vector_tokens_ok)

__all__ = ["SparsifyUnit"]


class SparsifyUnit(wiring.Component):
    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        super().__init__(vector_engine_ports(cfg))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, E, bus = cfg.rows, cfg.sparsify_chunk, cfg.bus_bytes
        M = max(cfg.sparse_m, default=1)
        P = bus // 4  # fp32 values per beat
        wpb = cfg.a_word_bytes // bus  # beats of an output word
        bus_bits = 8 * bus
        e_bits = E.bit_length() - 1
        axi = self.mem
        axi_master_constants(m, axi, bus)
        m.d.comb += [axi.awlen.eq(0), axi.wlast.eq(1)]

        head = self.queue.payload
        info = Entry(Signal(Entry.as_shape().size))
        args = info.inst.args.sparsify
        # phases: idle, read a chunk, emit its groups, wait for the last write responses
        phase = Signal(range(4))
        IDLE, READ, EMIT, DRAIN = range(4)
        outstanding = Signal(32)  # write bursts without a response (driven by vector_engine_end below)
        tokens_ok = vector_tokens_ok(self, head)
        start = self.start
        m.d.comb += [start.eq(self.running & self.queue.valid & (head.inst.opcode == Opcode.SPARSIFY) & (phase == IDLE) &
                              (outstanding == 0) & ~self.other_busy & tokens_ok),
                     self.s2p_pop.eq(start & head.inst.deps.pop_prev),
                     self.l2p_pop.eq(start & head.inst.deps.pop_next)]
        cur = Entry(Signal(Entry.as_shape().size))  # the instruction: the head in its start cycle, else `info`
        m.d.comb += cur.eq(Mux(start, head, info))
        cur_args = cur.inst.args.sparsify
        with m.If(start):
            m.d.sync += info.eq(head)

        # sizes (from the instruction in the start cycle)
        m_value = Signal(8)
        m.d.comb += m_value.eq(Const(1, 8) << args.m_log2)
        groups_total = Signal(17)
        slots_total = Signal(22)
        m.d.comb += [groups_total.eq((args.length + m_value - 1) >> args.m_log2), slots_total.eq(groups_total * args.n)]
        per_chunk = Signal(range(E + 1))  # groups per chunk
        m.d.comb += per_chunk.eq(E >> args.m_log2)

        # --- read: one chunk as a 2-D transfer
        m.submodules.walker = walker = BurstWalker(cfg, "sparsify")
        chunk = Signal(16)
        launch_next = Signal()  # the next chunk's read starts this cycle
        launch = Signal()
        m.d.comb += launch.eq(start | launch_next)
        chunk_now = Mux(start, 0, chunk)
        row_bytes_ff, row_bytes_bp = 4 * E, 4 * R
        m.d.comb += [walker.load.eq(launch),
                     walker.addr.eq(Mux(cur_args.transpose, cur_args.src_addr + chunk_now * row_bytes_ff,
                                        cur_args.src_addr + (chunk_now << e_bits) * cur_args.src_stride)),
                     walker.rows.eq(Mux(cur_args.transpose, R, E)), walker.stride.eq(cur_args.src_stride),
                     walker.word_beats.eq(Mux(cur_args.transpose, row_bytes_ff // bus, row_bytes_bp // bus)),
                     axi.arvalid.eq(self.alive & (launch | walker.active)), walker.step.eq(axi.arvalid & axi.arready),
                     axi.araddr.eq(walker.burst_addr), axi.arlen.eq(walker.burst_beats - 1)]
        rx_row = Signal(range(max(R, E) + 1))
        rx_beat = Signal(range(max(row_bytes_ff, row_bytes_bp) // bus + 1))
        row_beats = Mux(args.transpose, row_bytes_ff // bus, row_bytes_bp // bus)
        rows_per_chunk = Mux(args.transpose, R, E)
        beat_in = self.alive & axi.rvalid & (phase == READ)
        row_done = rx_beat == row_beats - 1
        chunk_read = beat_in & row_done & (rx_row == rows_per_chunk - 1)
        with m.If(beat_in):
            with m.If(row_done):
                m.d.sync += [rx_beat.eq(0), rx_row.eq(rx_row + 1)]
            with m.Else():
                m.d.sync += rx_beat.eq(rx_beat + 1)
        with m.If(chunk_read):
            m.d.sync += rx_row.eq(0)
        # the tile: lane r, element j; FF writes a lane's run, BP an element's word
        tile = [[Signal(32, name=f"tile_{r}_{j}") for j in range(E)] for r in range(R)]
        words = [axi.rdata[32 * q:32 * (q + 1)] for q in range(P)]
        shift = Signal()  # after a group's last word: the tile moves m elements on
        for r in range(R):
            for j in range(E):
                ff_hit = args.transpose & (rx_row == r) & (rx_beat == j // P)
                bp_hit = ~args.transpose & (rx_row == j) & (rx_beat == r // P)
                with m.If(beat_in & ff_hit):
                    m.d.sync += tile[r][j].eq(words[j % P])
                with m.Elif(beat_in & bp_hit):
                    m.d.sync += tile[r][j].eq(words[r % P])
                with m.Elif(shift):
                    with m.Switch(args.m_log2):
                        for mv in cfg.sparse_m:
                            with m.Case(mv.bit_length() - 1):
                                if j + mv < E:
                                    m.d.sync += tile[r][j].eq(tile[r][j + mv])

        # --- emit: per group a rank cycle, then n slot words (+ IDX words)
        rank = Signal()  # this cycle ranks the group at the tile's front
        elem_base = Signal(17)  # element index of that group's first element
        group_in_chunk = Signal(range(E + 1))
        groups_done = Signal(17)
        slot = Signal(range(M + 1))  # slot of the group being sent
        slot_global = Signal(22)
        sending_idx = Signal()  # the word being sent is an IDX word
        beat = Signal(range(wpb + 1))
        sel_val = [[Signal(16, name=f"sel_val_{s}_{r}") for r in range(R)] for s in range(M)]
        sel_idx = [[Signal(4, name=f"sel_idx_{s}_{r}") for r in range(R)] for s in range(M)]
        idx_word = [Signal(16, name=f"idx_word_{r}") for r in range(R)]
        for r in range(R):
            values = []
            for i in range(M):
                v = Signal(32, name=f"rank_v_{r}_{i}")
                m.d.comb += v.eq(Mux(elem_base + i < args.length, tile[r][i], 0))
                values.append(v)
            valid = [Const(i, 8) < m_value for i in range(M)]
            ge = {}
            for i in range(M):
                for j in range(i + 1, M):
                    g = Signal(name=f"rank_ge_{r}_{i}_{j}")
                    m.d.comb += g.eq(values[i][:31] >= values[j][:31])
                    ge[i, j] = g
            kept = []
            for j in range(M):
                beaten = [valid[i] & ge[i, j] for i in range(j)] + [valid[i] & ~ge[j, i] for i in range(j + 1, M)]
                count = Signal(range(M + 1), name=f"rank_{r}_{j}")
                m.d.comb += count.eq(sum(beaten) if beaten else 0)
                k = Signal(name=f"kept_{r}_{j}")
                m.d.comb += k.eq(valid[j] & (count < args.n))
                kept.append(k)
            rounded = [bf16_round(m, f"rank_bf16_{r}_{j}", values[j]) for j in range(M)]
            with m.If(rank):
                for s in range(M):
                    m.d.sync += [sel_val[s][r].eq(0), sel_idx[s][r].eq(0)]
                for j in range(M):
                    before = Signal(range(M + 1), name=f"prefix_{r}_{j}")
                    m.d.comb += before.eq(sum(kept[:j]) if j else 0)
                    for s in range(M):
                        with m.If(kept[j] & (before == s)):
                            m.d.sync += [sel_val[s][r].eq(rounded[j]), sel_idx[s][r].eq(j)]

        value_word = Signal(16 * R)
        with m.Switch(slot):
            for s in range(M):
                with m.Case(s):
                    m.d.comb += value_word.eq(Cat(*sel_val[s]))
        out_word = Mux(sending_idx, Cat(*idx_word), value_word)
        val_addr = Signal(cfg.addr_bits + 1)
        idx_addr = Signal(cfg.addr_bits + 1)
        sending = Signal()
        m.d.comb += sending.eq((phase == EMIT) & ~rank)
        aw_sent, w_sent = Signal(), Signal()
        m.d.comb += [axi.awvalid.eq(self.alive & sending & ~aw_sent), axi.wvalid.eq(self.alive & sending & ~w_sent),
                     axi.awaddr.eq(Mux(sending_idx, idx_addr, val_addr) + beat * bus),
                     axi.wdata.eq(out_word.word_select(beat, bus_bits) if wpb > 1 else out_word)]
        aw_ok = aw_sent | axi.awready
        w_ok = w_sent | axi.wready
        advance = Signal()
        m.d.comb += advance.eq(sending & aw_ok & w_ok)
        with m.If(sending & ~advance):
            m.d.sync += [aw_sent.eq(aw_ok), w_sent.eq(w_ok)]
        with m.Elif(advance):
            m.d.sync += [aw_sent.eq(0), w_sent.eq(0)]
        word_done = advance & (beat == wpb - 1)
        last_slot_of_group = slot == args.n - 1
        idx_due = (slot_global[:2] == IDX_SLOTS_PER_WORD - 1) | (slot_global == slots_total - 1)
        group_done = Signal()
        m.d.comb += group_done.eq(word_done & last_slot_of_group & (sending_idx | ~idx_due))
        last_group = groups_done == groups_total - 1
        chunk_done = group_done & ((group_in_chunk == per_chunk - 1) | last_group)
        with m.If(advance):
            m.d.sync += beat.eq(Mux(beat == wpb - 1, 0, beat + 1))
        with m.If(word_done):
            with m.If(sending_idx):
                m.d.sync += [sending_idx.eq(0), idx_addr.eq(idx_addr + cfg.a_word_bytes)]
                m.d.sync += [w.eq(0) for w in idx_word]
                with m.If(~last_slot_of_group):
                    m.d.sync += [slot.eq(slot + 1), slot_global.eq(slot_global + 1)]
            with m.Else():
                m.d.sync += val_addr.eq(val_addr + cfg.a_word_bytes)
                with m.Switch(slot):
                    for s in range(M):
                        with m.Case(s):
                            with m.Switch(slot_global[:2]):
                                for q in range(IDX_SLOTS_PER_WORD):
                                    with m.Case(q):
                                        m.d.sync += [idx_word[r][4 * q:4 * q + 4].eq(sel_idx[s][r]) for r in range(R)]
                with m.If(idx_due):
                    m.d.sync += sending_idx.eq(1)
                with m.Elif(~last_slot_of_group):
                    m.d.sync += [slot.eq(slot + 1), slot_global.eq(slot_global + 1)]
        with m.If(group_done):
            m.d.sync += [slot.eq(0), slot_global.eq(slot_global + 1), groups_done.eq(groups_done + 1),
                         elem_base.eq(elem_base + m_value), group_in_chunk.eq(group_in_chunk + 1), rank.eq(1)]
            m.d.comb += shift.eq(1)
        with m.If(rank):
            m.d.sync += rank.eq(0)

        # --- phase sequencing
        with m.If(start):
            m.d.sync += [phase.eq(READ), chunk.eq(0), elem_base.eq(0), groups_done.eq(0), slot.eq(0),
                         slot_global.eq(0), sending_idx.eq(0), beat.eq(0), rx_row.eq(0), rx_beat.eq(0),
                         val_addr.eq(cur_args.src_addr + cur_args.dst_offset)]
            m.d.sync += [w.eq(0) for w in idx_word]
        with m.If(phase == READ):
            with m.If(chunk_read):
                m.d.sync += [phase.eq(EMIT), rank.eq(1), group_in_chunk.eq(0)]
        # the IDX words follow all slot words: their address is set once the slot count is known
        first_cycle = Signal()
        m.d.sync += first_cycle.eq(start)
        with m.If(first_cycle):
            m.d.sync += idx_addr.eq(val_addr + slots_total * cfg.a_word_bytes)
        with m.If(chunk_done):
            with m.If(last_group):
                m.d.sync += [phase.eq(DRAIN), rank.eq(0)]
            with m.Else():
                m.d.sync += [phase.eq(READ), rank.eq(0), chunk.eq(chunk + 1)]
        launch_pending = Signal()
        with m.If(chunk_done & ~last_group):
            m.d.sync += launch_pending.eq(1)
        with m.If(launch_pending):
            m.d.sync += launch_pending.eq(0)
        m.d.comb += launch_next.eq(launch_pending)

        # --- write responses (one single-beat burst per beat); the end
        m.d.comb += outstanding.eq(vector_engine_end(m, self, info=info, phase=phase, draining=DRAIN, idle=IDLE,
                                                     beat_in=beat_in, issued=advance))
        return m
