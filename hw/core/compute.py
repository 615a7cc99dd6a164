"""The GEMM unit: the PE array of ``rows × cols`` bf16 MACs and the drain of their accumulators.

A GEMM reads one A and one B word per cycle for ``k`` cycles per kernel tap
(operands broadcast along rows and down columns), the array accumulates in
fp32.  The kernel walk (on-chip im2col): after a tap's last word the B
address jumps to the next tap's first (``tap_w_stride`` on, or the next
kernel row's ``tap_h_stride``), in the same cycle, so a walk of T taps takes
T·k cycles like a GEMM of T·k words.  A
SPARSE_GEMM reads one A word of slot values and one IDX word (four slots'
indices) per cycle, for ``groups · n`` cycles; the B buffer's banks deliver a
group's ``m`` words at once and every PE row takes the word its own slot
index names (an ``banks``:1 mux per row), so a group of m reduction steps
takes n cycles.  Each PE (``nmsat.hw.fp.PipelinedMac``) keeps four partial
sums in its pipelined adder; ``GEMM_TAIL`` cycles after the last MAC's data
they are added pairwise and latched into the accumulator registers (rule 5
of ``nmsat.hw.numerics``); the next cycle (the transfer) the next GEMM may
start while the drain writes ``DRAIN_ROWS`` (two) accumulator rows per
cycle, picked by a multiplexer, one to each row-parity bank of ACC, through
a read-add-write pipeline of ``DRAIN_PIPELINE`` stages (the write side down
a delay line, so drains overlap).  The drain reads the accumulator registers
themselves, so a GEMM starts only if its transfer comes ``drain_gap`` after
the previous one, once that drain has read them.  Pops ``l2c``/``s2c``
when it starts, pushes ``c2l``/``c2s`` when its drain ends.

Not here: the buffers (the top level's memories) or the fp units (:mod:`nmsat.hw.fp`).
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import SATConfig
from ..fp import ADDER_STAGES, Fp32Adder, PipelinedMac
from ..isa import Opcode
from ..timing import DRAIN_PIPELINE, DRAIN_ROWS, GEMM_TAIL, SRAM_READ_LATENCY, drain_gap
from .common import PC_BITS, Entry, queue_signature

__all__ = ["ComputeUnit", "PE_MODULE"]

#: the Verilog module name of one PE (a ``PipelinedMac``) when the array is written with the PE shared
#: (``nmsat.hw.verilog``): one definition, ``rows × cols`` instances
PE_MODULE = "nmsat_pe"


class ComputeUnit(wiring.Component):
    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        R, C = cfg.rows, cfg.cols
        super().__init__({
            "running": In(1), "alive": In(1),
            "queue": In(queue_signature()),
            "l2c_available": In(1), "l2c_pop": Out(1), "s2c_available": In(1), "s2c_pop": Out(1),
            "c2l_push": Out(1), "c2s_push": Out(1),
            "a_addr": Out(16), "a_data": In(16 * R),
            "b_row": Out(16), "b_data": In(16 * C * cfg.b_banks),  # one row of the B banks: word w is bank w % banks
            "idx_addr": Out(16), "idx_data": In(16 * R),  # the index buffer (SPARSE_GEMM)
            # ACC in two banks by row parity (row p is word p // 2 of bank p % 2); the drain's copy is read,
            # both copies are written
            "acc_read_addr_even": Out(16), "acc_read_data_even": In(32 * C),
            "acc_read_addr_odd": Out(16), "acc_read_data_odd": In(32 * C),
            "acc_write_addr_even": Out(16), "acc_write_data_even": Out(32 * C), "acc_write_en_even": Out(1),
            "acc_write_addr_odd": Out(16), "acc_write_data_odd": Out(32 * C), "acc_write_en_odd": Out(1),
            "start": Out(1), "busy": Out(1),
            "draining_pc": Out(PC_BITS),  # the GEMM whose drain pushes tokens
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        assert SRAM_READ_LATENCY == 1 and DRAIN_PIPELINE == 2 + ADDER_STAGES and DRAIN_ROWS == 2, \
            "the pipeline below is built for these latencies"
        steps = -(-R // DRAIN_ROWS)  # drain steps: two rows each
        banks = cfg.b_banks
        bank_bits = (banks - 1).bit_length()
        head = self.queue.payload
        args, sparse_args = head.inst.args.gemm, head.inst.args.sparse
        head_sparse = head.inst.opcode == Opcode.SPARSE_GEMM
        # the kernel walk: taps, and the reduction steps of one tap (k words, or the slots of groups)
        head_walk_w = Mux(args.taps_w == 0, 1, args.taps_w)
        head_taps, head_tap_steps = Signal(6), Signal(21)
        m.d.comb += [head_taps.eq(Mux(args.taps_h == 0, 1, args.taps_h) * head_walk_w),
                     head_tap_steps.eq(Mux(head_sparse, sparse_args.groups * sparse_args.n, args.k))]
        mac_steps = Signal(27)  # reads: every tap's k words, or slots
        m.d.comb += mac_steps.eq(head_taps * head_tap_steps)
        head_m_mask = (Const(1, 8) << sparse_args.m_log2) - 1
        reading = Signal()
        k_left = Signal(27)
        # the read walk, latched at the start: this instruction's shape ...
        sparse_mode, sp_n, sp_mask = Signal(), Signal(5), Signal(8)
        tap_steps, walk_w = Signal(21), Signal(3)
        h_stride, w_stride = Signal(14), Signal(11)
        # ... and the position of the next read: A word, B word (dense) or its group's first word (sparse),
        # step within the tap, slot within the group, tap column, first word of the tap and of its kernel row,
        # IDX word and nibble
        rd_a, rd_b = Signal(16), Signal(16)
        in_tap, in_group, tap_col = Signal(21), Signal(5), Signal(3)
        tap_base, row_base = Signal(17), Signal(17)
        rd_idx, nibble = Signal(16), Signal(2)
        mac_valid = Signal()  # registered: data of a read is at the array this cycle
        mac_first = Signal()
        mac_last = Signal()
        pending = Signal()  # the result latched, waiting for the transfer
        tail = Signal(range(GEMM_TAIL + 1))  # the cycles after the last MAC's data (the PEs' combine)
        combining = Signal()
        cur_info = Entry(Signal(Entry.as_shape().size))  # the GEMM between start and transfer
        drain_active = Signal()  # the drain's read side: ACC reads and the adders' inputs
        drain_count = Signal(range(steps + 1))
        drain_info = Entry(Signal(Entry.as_shape().size))
        transfer = Signal()
        m.d.comb += transfer.eq(pending & ~drain_active)
        tokens_ok = (~head.inst.deps.pop_prev | self.l2c_available) & (~head.inst.deps.pop_next | self.s2c_available)
        free = ~reading & ~mac_valid & ~combining & (~pending | transfer)
        # the drain reads the accumulator registers themselves (no second set), so a GEMM starts only if its
        # transfer (gemm_mac_cycles after the start) is at least drain_gap after the previous one
        gap = drain_gap(cfg)
        since = Signal(range(gap + 1), init=gap)  # cycles since the last transfer, saturating
        with m.If(transfer):
            m.d.sync += since.eq(1)
        with m.Elif(since != gap):
            m.d.sync += since.eq(since + 1)
        # the same decision as mac_steps + tail + since >= gap on numbers saturated at gap − tail (0 at most
        # presets, 4 at vcu1525): no product or wide sum before START
        need = max(gap - (SRAM_READ_LATENCY + GEMM_TAIL), 0)
        if need == 0:
            drain_clear = Const(1, 1)
        else:
            def saturated(value):
                return Mux(value >= need, need, value)
            sat_tap = Mux(head_sparse, saturated(saturated(sparse_args.groups) * saturated(sparse_args.n)),
                          saturated(args.k))
            sat_steps = Signal(range(need + 1))
            m.d.comb += sat_steps.eq(saturated(saturated(head_taps) * sat_tap))
            drain_clear = sat_steps + Mux(transfer, 0, since) >= need
        start = self.start
        m.d.comb += [start.eq(self.running & self.queue.valid & free & tokens_ok & drain_clear),
                     self.queue.ready.eq(start), self.l2c_pop.eq(start & head.inst.deps.pop_prev),
                     self.s2c_pop.eq(start & head.inst.deps.pop_next)]
        # reads: cycles s .. s+steps-1.  B: every bank reads the row of the current word (dense) or group
        # (sparse: b_addr and the tap strides are multiples of m, so a group's m words sit in one row of banks);
        # the bank is chosen in the next cycle, per PE row, from the word's bank and the row's slot index.
        # This cycle's read position (from the head at the start, else the registers) and shape:
        b_word = Signal(16)
        cur_nibble = Signal(2)
        cur = dict(in_tap=Signal(21), in_group=Signal(5), tap_col=Signal(3), tap_base=Signal(17),
                   row_base=Signal(17), sparse=Signal(), n=Signal(5), mask=Signal(8), tap_steps=Signal(21),
                   walk_w=Signal(3), h_stride=Signal(14), w_stride=Signal(11))
        with m.If(start):
            m.d.comb += [self.a_addr.eq(args.a_addr), b_word.eq(args.b_addr), self.idx_addr.eq(sparse_args.idx_addr),
                         cur_nibble.eq(0), cur["in_tap"].eq(0), cur["in_group"].eq(0), cur["tap_col"].eq(0),
                         cur["tap_base"].eq(args.b_addr), cur["row_base"].eq(args.b_addr),
                         cur["sparse"].eq(head_sparse), cur["n"].eq(sparse_args.n), cur["mask"].eq(head_m_mask),
                         cur["tap_steps"].eq(head_tap_steps), cur["walk_w"].eq(head_walk_w),
                         cur["h_stride"].eq(args.tap_h_stride), cur["w_stride"].eq(args.tap_w_stride)]
            m.d.sync += [reading.eq(mac_steps != 1), k_left.eq(mac_steps - 1), cur_info.eq(self.queue.payload),
                         sparse_mode.eq(head_sparse), sp_n.eq(sparse_args.n), sp_mask.eq(head_m_mask),
                         tap_steps.eq(head_tap_steps), walk_w.eq(head_walk_w), h_stride.eq(args.tap_h_stride),
                         w_stride.eq(args.tap_w_stride)]
        with m.Else():
            m.d.comb += [self.a_addr.eq(rd_a), b_word.eq(rd_b), self.idx_addr.eq(rd_idx), cur_nibble.eq(nibble),
                         cur["in_tap"].eq(in_tap), cur["in_group"].eq(in_group), cur["tap_col"].eq(tap_col),
                         cur["tap_base"].eq(tap_base), cur["row_base"].eq(row_base),
                         cur["sparse"].eq(sparse_mode), cur["n"].eq(sp_n), cur["mask"].eq(sp_mask),
                         cur["tap_steps"].eq(tap_steps), cur["walk_w"].eq(walk_w),
                         cur["h_stride"].eq(h_stride), cur["w_stride"].eq(w_stride)]
            with m.If(reading):
                m.d.sync += k_left.eq(k_left - 1)
                with m.If(k_left == 1):
                    m.d.sync += reading.eq(0)
        # the next read's position: the next word (dense) or slot (sparse: after n slots the next group), and
        # after a tap's last step the next tap's first word (the next column, or the next kernel row)
        with m.If(start | reading):
            m.d.sync += [rd_a.eq(self.a_addr + 1), rd_idx.eq(Mux(cur_nibble == 3, self.idx_addr + 1, self.idx_addr)),
                         nibble.eq(cur_nibble + 1)]
            with m.If(cur["in_tap"] == cur["tap_steps"] - 1):
                with m.If(cur["tap_col"] == cur["walk_w"] - 1):
                    next_row = cur["row_base"] + cur["h_stride"]
                    m.d.sync += [tap_col.eq(0), row_base.eq(next_row), tap_base.eq(next_row), rd_b.eq(next_row)]
                with m.Else():
                    next_tap = cur["tap_base"] + cur["w_stride"]
                    m.d.sync += [tap_col.eq(cur["tap_col"] + 1), row_base.eq(cur["row_base"]), tap_base.eq(next_tap),
                                 rd_b.eq(next_tap)]
                m.d.sync += [in_tap.eq(0), in_group.eq(0)]
            with m.Else():
                m.d.sync += [in_tap.eq(cur["in_tap"] + 1), tap_col.eq(cur["tap_col"]), tap_base.eq(cur["tap_base"]),
                             row_base.eq(cur["row_base"])]
                with m.If(~cur["sparse"]):
                    m.d.sync += [rd_b.eq(b_word + 1), in_group.eq(0)]
                with m.Elif(cur["in_group"] == cur["n"] - 1):  # the next slot opens the next group
                    m.d.sync += [in_group.eq(0), rd_b.eq(b_word + cur["mask"] + 1)]
                with m.Else():
                    m.d.sync += [in_group.eq(cur["in_group"] + 1), rd_b.eq(b_word)]
        m.d.comb += self.b_row.eq(b_word >> bank_bits)
        issued = start | reading
        mac_bank, mac_nibble, mac_sparse, mac_mask = Signal(max(1, bank_bits)), Signal(2), Signal(), Signal(8)
        m.d.sync += [mac_valid.eq(self.alive & issued), mac_first.eq(start),
                     mac_last.eq(Mux(start, mac_steps == 1, reading & (k_left == 1))),
                     mac_bank.eq(b_word[:max(1, bank_bits)] if banks > 1 else 0), mac_nibble.eq(cur_nibble),
                     mac_sparse.eq(cur["sparse"]), mac_mask.eq(cur["mask"])]
        # the PEs' pipeline (rule 5): a step's product is registered in its data cycle and enters the adder
        # the next cycle, the first four on +0, so step t adds into the partial sum of t mod 4.  The tail
        # after the last data cycle d (tail = j in cycle d + j) adds the four partials that come out of the
        # adder in cycles d+2 .. d+5 (q0 .. q3, q_i holding the steps t with (t - T) mod 4 = i) pairwise:
        # q0 fed into the product register (d+2), q1 + q0 started (d+3); q2 fed (d+4), q3 + q2 (d+5);
        # q01 fed (d+7), q23 + q01 (d+9); the output is the sum in d+13, latched into the accumulators.
        # A GEMM of T < 4 steps leaves q0 .. q_{3-T} empty: +0 instead.
        assert ADDER_STAGES == 4 and GEMM_TAIL == 13, "the tail below is built for a four-stage adder"
        early = Signal(3)  # steps seen, saturating at 4: the first four enter the adder on +0
        issue_zero = Signal()  # the step entering the adder this cycle is one of the first four
        short = Signal(3)  # T <= 1, T <= 2, T <= 3: the empty partials
        with m.If(start):
            m.d.sync += short.eq(Cat(mac_steps <= 1, mac_steps <= 2, mac_steps <= 3))
        m.d.sync += issue_zero.eq(mac_valid & (mac_first | (early < 4)))
        with m.If(mac_valid):
            m.d.sync += early.eq(Mux(mac_first, 1, Mux(early < 4, early + 1, early)))
        with m.If(mac_valid & mac_last):
            m.d.sync += tail.eq(1)
        with m.Elif(tail == GEMM_TAIL):
            m.d.sync += tail.eq(0)
        with m.Elif(tail != 0):
            m.d.sync += tail.eq(tail + 1)
        m.d.comb += combining.eq(tail != 0)
        feed = (tail == 2) | (tail == 4) | (tail == 7)
        pe_load = mac_valid | feed
        pe_feed_zero = ((tail == 2) & short[2]) | ((tail == 4) & short[0])
        pe_zero_acc = issue_zero | ((tail == 3) & short[1])
        latch = tail == GEMM_TAIL
        with m.If(latch):
            m.d.sync += pending.eq(1)
        with m.Elif(transfer):
            m.d.sync += pending.eq(0)
        # the array
        acc = [[Signal(32, name=f"acc_{r}_{c}") for c in range(C)] for r in range(R)]
        word_bits = 16 * C
        for r in range(R):
            # this row's B word: the current word's bank, plus the row's slot index (the low log2(m) bits of
            # its nibble) in a SPARSE_GEMM
            index = (self.idx_data[16 * r:16 * r + 16].word_select(mac_nibble, 4) & mac_mask[:4])
            bank = Signal(max(1, bank_bits), name=f"row_bank_{r}")
            m.d.comb += bank.eq(Mux(mac_sparse, mac_bank + index, mac_bank))
            row_b = Signal(word_bits, name=f"row_b_{r}")
            m.d.comb += row_b.eq(self.b_data.word_select(bank, word_bits) if banks > 1 else self.b_data)
            for c in range(C):
                ports = dict(a=self.a_data[16 * r:16 * r + 16], b=row_b[16 * c:16 * c + 16], load=pe_load, feed=feed,
                             feed_zero=pe_feed_zero, zero_acc=pe_zero_acc)
                if getattr(platform, "shared_pe", False):  # Verilog: one PE module, instantiated R × C times
                    pe_sum = Signal(32, name=f"pe_{r}_{c}_sum")
                    m.submodules[f"pe_{r}_{c}"] = Instance(
                        PE_MODULE, i_clk=ClockSignal(), i_rst=ResetSignal(), o_sum=pe_sum,
                        **{f"i_{name}": value for name, value in ports.items()})
                else:
                    pe = PipelinedMac()
                    m.submodules[f"pe_{r}_{c}"] = pe
                    m.d.comb += [getattr(pe, name).eq(value) for name, value in ports.items()]
                    pe_sum = pe.sum
                with m.If(latch):
                    m.d.sync += acc[r][c].eq(pe_sum)
        # transfer and drain, two rows a step: reads in t+1 .. t+steps, each read's rows a cycle later into the
        # pipelined adders with the step's two accumulator rows (a multiplexer by the step); the write side
        # (addresses, enables, the last step's pushes) goes down a delay line beside the adders' stages, so
        # the sums are written in t+6 .. t+steps+5 while the next drain may already read
        with m.If(transfer):
            m.d.sync += [drain_active.eq(1), drain_count.eq(0), drain_info.eq(cur_info)]
        drain_args = drain_info.inst.args.gemm
        adding = drain_active & (drain_count >= 1)  # the adders take step drain_count - 1
        with m.If(drain_active):
            m.d.sync += drain_count.eq(drain_count + 1)
            with m.If(drain_count == steps):
                m.d.sync += drain_active.eq(0)
        add_step = Signal(range(steps + 1))
        m.d.comb += add_step.eq(drain_count - 1)
        zero_row = Const(0, 32 * C)
        step_rows = []  # the first and the second accumulator row of the step whose old rows arrive
        for j in range(DRAIN_ROWS):
            rows = [Cat(*acc[r]) if r < R else zero_row for r in range(j, DRAIN_ROWS * steps, DRAIN_ROWS)]
            row = Signal(32 * C, name=f"drain_acc_{j}")
            m.d.comb += row.eq(Cat(*rows).word_select(add_step, 32 * C) if steps > 1 else rows[0])
            step_rows.append(row)
        # the write side of the step entering the adders, and its copies ADDER_STAGES cycles down
        write_fields = [("valid", 1), ("first", 17), ("odd", 1), ("second", 1), ("push_prev", 1), ("push_next", 1),
                        ("pc", PC_BITS)]
        last_step = drain_count == steps
        entering = dict(valid=adding, first=drain_args.acc_addr + 2 * add_step, odd=drain_args.acc_addr[0],
                        second=(2 * add_step + 1) < R, push_prev=last_step & drain_info.inst.deps.push_prev,
                        push_next=last_step & drain_info.inst.deps.push_next, pc=drain_info.pc)
        line, in_flight = entering, []
        for stage in range(ADDER_STAGES):
            regs = {name: Signal(width, name=f"drain_w{stage}_{name}") for name, width in write_fields}
            m.d.sync += [regs[name].eq(line[name]) for name, _ in write_fields]
            line = regs
            in_flight.append(regs["valid"])
        writing = line
        # rows p and p + 1 of a step: p in the bank of the GEMM's first row's parity, p + 1 in the other
        odd = drain_args.acc_addr[0]
        read_first = Signal(17)
        m.d.comb += read_first.eq(drain_args.acc_addr + 2 * drain_count)
        read_second = read_first + 1
        m.d.comb += [self.acc_read_addr_even.eq(Mux(odd, read_second, read_first) >> 1),
                     self.acc_read_addr_odd.eq(Mux(odd, read_first, read_second) >> 1)]
        old_first = Mux(odd, self.acc_read_data_odd, self.acc_read_data_even)  # the rows read a cycle ago
        old_second = Mux(odd, self.acc_read_data_even, self.acc_read_data_odd)
        # without accumulate the old rows are replaced by -0: x + (-0) is x for every sum an adder gives (no
        # subnormal, the one NaN, -0 + -0 = -0), so the accumulator rows are written unchanged
        rows_out = []
        for j, old in enumerate((old_first, old_second)):
            row = Signal(32 * C, name=f"drain_row_{j}")
            for c in range(C):
                adder = Fp32Adder(pipelined=True)
                m.submodules[f"drain_add_{j}_{c}"] = adder
                m.d.comb += [adder.a.eq(Mux(drain_args.accumulate, old[32 * c:32 * c + 32], 1 << 31)),
                             adder.b.eq(step_rows[j][32 * c:32 * c + 32]), row[32 * c:32 * c + 32].eq(adder.sum)]
            rows_out.append(row)
        odd_w, write_first = writing["odd"], writing["first"]
        write_second = write_first + 1
        second_valid = writing["second"]  # an odd row count: the last step writes one row
        drain_write = writing["valid"]
        m.d.comb += [self.acc_write_addr_even.eq(Mux(odd_w, write_second, write_first) >> 1),
                     self.acc_write_addr_odd.eq(Mux(odd_w, write_first, write_second) >> 1),
                     self.acc_write_data_even.eq(Mux(odd_w, rows_out[1], rows_out[0])),
                     self.acc_write_data_odd.eq(Mux(odd_w, rows_out[0], rows_out[1])),
                     self.acc_write_en_even.eq(self.alive & drain_write & Mux(odd_w, second_valid, 1)),
                     self.acc_write_en_odd.eq(self.alive & drain_write & Mux(odd_w, 1, second_valid)),
                     self.c2l_push.eq(drain_write & writing["push_prev"]),
                     self.c2s_push.eq(drain_write & writing["push_next"]),
                     self.draining_pc.eq(writing["pc"]),
                     self.busy.eq(reading | mac_valid | combining | pending | drain_active | Cat(*in_flight).any())]
        return m
