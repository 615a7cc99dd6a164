"""The dispatcher: checks the current instruction and sends it, in order, to the queue of its unit.

One instruction per cycle at most; a static error (bad opcode, arguments,
buffer or DRAM range, the end of the program without FINISH) is raised in
the cycle the instruction becomes current; FINISH retires when every unit
is idle; serial mode waits for everything before each dispatch.

Not here: the queues (the top level's FIFOs) or the units behind them.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import IDX_SLOTS_PER_WORD, SATConfig
from ..isa import INSTRUCTION_BITS, Buffer, ErrorCode, Instruction, Opcode, VectorFunc
from .common import PC_BITS, Entry, clog2
from .fetch import imem_geometry

__all__ = ["Dispatcher"]


class Dispatcher(wiring.Component):
    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        _, width, words = imem_geometry(cfg)
        super().__init__({
            "running": In(1), "fetching": In(1), "serial": In(1), "program_len": In(32),
            "program_addr": In(64),  # where the program being run is (a chain only goes forward from it)
            "all_idle": In(1),  # no unit busy, every queue empty
            "imem_addr": Out(range(words)), "imem_data": In(width),
            "entry": Out(Entry),  # the instruction being dispatched and its PC
            "load_ready": In(1), "compute_ready": In(1), "store_ready": In(1), "sparsify_ready": In(1),  # room
            "to_load": Out(1), "to_compute": Out(1), "to_store": Out(1), "to_sparsify": Out(1),
            "dispatch": Out(1),
            "finish": Out(1),  # FINISH retires this cycle
            "next_addr": Out(40), "next_len": Out(21),  # the current FINISH's next program (0: none)
            "static_error": Out(1), "static_code": Out(ErrorCode),
            "pc": Out(PC_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        per_word, _, _ = imem_geometry(cfg)
        pc = self.pc
        cur = Instruction(Signal(INSTRUCTION_BITS))
        m.d.comb += cur.as_value().eq(self.imem_data.word_select(pc % per_word, INSTRUCTION_BITS) if per_word > 1
                                      else self.imem_data[:INSTRUCTION_BITS])
        dispatch = self.dispatch
        m.d.comb += self.imem_addr.eq(Mux(self.fetching, 0, (pc + dispatch) // per_word if per_word > 1 else pc + dispatch))
        with m.If(dispatch):
            m.d.sync += pc.eq(pc + 1)

        op, deps = cur.opcode, cur.deps
        memargs, gemm, sparse = cur.args.mem, cur.args.gemm, cur.args.sparse
        is_load, is_store, is_finish = op == Opcode.LOAD, op == Opcode.STORE, op == Opcode.FINISH
        is_dense, is_sparse = op == Opcode.GEMM, op == Opcode.SPARSE_GEMM
        is_gemm = is_dense | is_sparse
        is_sparsify = op == Opcode.SPARSIFY
        is_update = op == Opcode.WEIGHT_UPDATE
        is_vector = op == Opcode.VECTOR
        known = is_load | is_store | is_gemm | is_finish | is_sparsify | is_update | is_vector
        at_end = pc == self.program_len
        # the units form a ring (load → compute → store → sparsify → load): only FINISH has no neighbours
        no_neighbour = is_finish & (deps.pop_prev | deps.pop_next | deps.push_prev | deps.push_next)
        # a chain only goes forward in memory, so every chain ends
        chain_back = is_finish & (cur.args.finish.next_len != 0) & (cur.args.finish.next_addr <= self.program_addr)
        buf = memargs.buffer
        transposing = memargs.tile_transpose
        mem_bad_args = (is_load | is_store) & ((is_store & (buf != Buffer.ACC)) | (is_load & (buf == Buffer.ACC)) |
                                               (memargs.rows == 0) | (is_load & (memargs.bf16 | memargs.relu)) |
                                               (transposing & (is_store | ((buf != Buffer.A) & (buf != Buffer.B)) |
                                                               (cfg.rows != cfg.cols))))
        depth = Signal(17)
        word_bytes = Signal(16)
        with m.Switch(buf):
            for b in Buffer:
                with m.Case(b):
                    m.d.comb += [depth.eq(cfg.depth(b)), word_bytes.eq(cfg.word_bytes(b))]
        # a transposing LOAD writes rows · cols words, and reads blocks of rows B words
        sram_bad = (is_load | is_store) & (memargs.sram_addr + Mux(is_load & transposing, memargs.rows * cfg.cols,
                                                                   memargs.rows) > depth)
        last_byte = Signal(64)
        dram_word = Mux(is_store & memargs.bf16, cfg.acc_word_bytes // 2,  # a bf16 STORE's words
                        Mux(is_load & transposing, cfg.rows * cfg.b_word_bytes, word_bytes))
        m.d.comb += last_byte.eq(memargs.dram_addr + (memargs.rows - 1) * memargs.dram_stride + dram_word)
        align = clog2(cfg.bus_bytes)
        dram_bad = (is_load | is_store) & ((memargs.dram_addr[:align] != 0) | (memargs.dram_stride[:align] != 0) |
                                           (last_byte > (1 << cfg.addr_bits)))
        # the kernel walk (both GEMMs share its fields): taps, and the B words past b_addr its last tap starts at
        walk_h = Mux(gemm.taps_h == 0, 1, gemm.taps_h)
        walk_w = Mux(gemm.taps_w == 0, 1, gemm.taps_w)
        taps = Signal(6)
        last_tap = Signal(17)
        m.d.comb += [taps.eq(walk_h * walk_w),
                     last_tap.eq((walk_h - 1) * gemm.tap_h_stride + (walk_w - 1) * gemm.tap_w_stride)]
        dense_steps = Signal(22)
        m.d.comb += dense_steps.eq(taps * gemm.k)
        gemm_zero = is_dense & (gemm.k == 0)
        gemm_range = is_dense & ((gemm.a_addr + dense_steps > cfg.a_depth) |
                                 (gemm.b_addr + last_tap + gemm.k > cfg.b_depth) |
                                 (gemm.acc_addr + cfg.rows > cfg.acc_depth))
        # SPARSE_GEMM: an N:M pattern of the config, groups (and taps) aligned in B; slots, groups and index
        # words in range
        m_value = Signal(8)
        supported = Const(0, 1)
        m.d.comb += m_value.eq(Const(1, 8) << sparse.m_log2)
        for value in cfg.sparse_m:
            supported = supported | (sparse.m_log2 == value.bit_length() - 1)
        slots = Signal(27)
        m.d.comb += slots.eq(taps * sparse.groups * sparse.n)
        sparse_bad = is_sparse & ((sparse.groups == 0) | (sparse.n == 0) | (sparse.n > m_value) | ~supported |
                                  ((sparse.b_addr & (m_value - 1)) != 0) |
                                  ((sparse.tap_h_stride & (m_value - 1)) != 0) |
                                  ((sparse.tap_w_stride & (m_value - 1)) != 0))
        sparse_range = is_sparse & ((sparse.a_addr + slots > cfg.a_depth) |
                                    (sparse.b_addr + last_tap + sparse.groups * m_value > cfg.b_depth) |
                                    (sparse.idx_addr + ((slots + IDX_SLOTS_PER_WORD - 1) >> 2) > cfg.idx_depth) |
                                    (sparse.acc_addr + cfg.rows > cfg.acc_depth))
        # SPARSIFY: an N:M pattern of the config, a length; source and output aligned and inside the address space
        sp = cur.args.sparsify
        sp_m = Signal(8)
        sp_supported = Const(0, 1)
        m.d.comb += sp_m.eq(Const(1, 8) << sp.m_log2)
        for value in cfg.sparse_m:
            sp_supported = sp_supported | (sp.m_log2 == value.bit_length() - 1)
        sparsify_bad = is_sparsify & ((sp.length == 0) | (sp.n == 0) | (sp.n > sp_m) | ~sp_supported)
        E = cfg.sparsify_chunk
        sp_span = Signal(17)  # elements read per lane: length rounded up to whole chunks
        m.d.comb += sp_span.eq((sp.length + E - 1) & ~(E - 1))
        sp_slots = Signal(22)
        m.d.comb += sp_slots.eq(((sp.length + sp_m - 1) >> sp.m_log2) * sp.n)
        sp_src_end, sp_dst, sp_dst_end = Signal(64), Signal(64), Signal(64)
        m.d.comb += [sp_src_end.eq(Mux(sp.transpose, sp.src_addr + (cfg.rows - 1) * sp.src_stride + sp_span * 4,
                                       sp.src_addr + (sp_span - 1) * sp.src_stride + 4 * cfg.rows)),
                     sp_dst.eq(sp.src_addr + sp.dst_offset),
                     sp_dst_end.eq(sp_dst + (sp_slots + ((sp_slots + IDX_SLOTS_PER_WORD - 1) >> 2)) * cfg.a_word_bytes)]
        sparsify_dram = is_sparsify & ((sp.src_addr[:align] != 0) | (sp.src_stride[:align] != 0) |
                                       (sp.dst_offset[:align] != 0) | (sp_src_end > (1 << cfg.addr_bits)) |
                                       (sp_dst_end > (1 << cfg.addr_bits)))
        # WEIGHT_UPDATE: some words; w, v and g aligned to a whole burst and inside the address space
        up = cur.args.update
        up_bytes = Signal(64)
        m.d.comb += up_bytes.eq(up.words * (4 * cfg.rows))
        burst_align = clog2(cfg.max_burst_beats * cfg.bus_bytes) if cfg.max_burst_beats * cfg.bus_bytes > 1 else 0
        up_ends = [up.w_addr + up_bytes, up.w_addr + up.v_offset + up_bytes, up.w_addr + up.g_offset + up_bytes]
        update_bad = is_update & (up.words == 0)
        update_dram = is_update & ((up.w_addr[:burst_align] != 0) | (up.v_offset[:burst_align] != 0) |
                                   (up.g_offset[:burst_align] != 0) |
                                   (up_ends[0] > (1 << cfg.addr_bits)) | (up_ends[1] > (1 << cfg.addr_bits)) |
                                   (up_ends[2] > (1 << cfg.addr_bits)))
        # VECTOR: some beats, a function it has; x, y and z burst-aligned (the offsets count bursts) and inside
        # the address space
        vec = cur.args.vector
        burst = cfg.max_burst_beats * cfg.bus_bytes
        vec_bytes = Signal(64)
        m.d.comb += vec_bytes.eq(vec.beats * cfg.bus_bytes)
        vec_ends = [Signal(signed(66), name=f"vec_end_{k}") for k in range(3)]
        m.d.comb += [vec_ends[0].eq(vec.x_addr + vec_bytes), vec_ends[1].eq(vec.x_addr + vec.y_offset * burst + vec_bytes),
                     vec_ends[2].eq(vec.x_addr + vec.z_offset * burst + vec_bytes)]
        vector_bad = is_vector & ((vec.beats == 0) | (vec.func.as_value() >= len(VectorFunc)))
        vector_dram = is_vector & ((vec.x_addr[:burst_align] != 0) | (vec_ends[1] < vec_bytes) | (vec_ends[2] < vec_bytes) |
                                   (vec_ends[0] > (1 << cfg.addr_bits)) | (vec_ends[1] > (1 << cfg.addr_bits)) |
                                   (vec_ends[2] > (1 << cfg.addr_bits)))
        code = self.static_code
        with m.If(at_end):
            m.d.comb += code.eq(ErrorCode.NO_FINISH)
        with m.Elif(~known):
            m.d.comb += code.eq(ErrorCode.BAD_OPCODE)
        with m.Elif(no_neighbour | chain_back | mem_bad_args | gemm_zero | sparse_bad | sparsify_bad | update_bad | vector_bad):
            m.d.comb += code.eq(ErrorCode.BAD_ARGS)
        with m.Elif(sram_bad | gemm_range | sparse_range):
            m.d.comb += code.eq(ErrorCode.SRAM_RANGE)
        with m.Elif(dram_bad | sparsify_dram | update_dram | vector_dram):
            m.d.comb += code.eq(ErrorCode.DRAM_RANGE)
        m.d.comb += self.static_error.eq(self.running & (code != ErrorCode.NONE))

        target_ready = Mux(is_load, self.load_ready, Mux(is_gemm, self.compute_ready,
                                                         Mux(is_store, self.store_ready, self.sparsify_ready)))
        to_vector = is_sparsify | is_update | is_vector  # the sparsifier's queue, shared with the stream engine
        m.d.comb += [dispatch.eq(self.running & ~self.static_error & (is_load | is_gemm | is_store | to_vector) &
                                 target_ready &
                                 (~self.serial | self.all_idle)),
                     self.entry.inst.eq(cur), self.entry.pc.eq(pc),
                     self.to_load.eq(dispatch & is_load), self.to_compute.eq(dispatch & is_gemm),
                     self.to_store.eq(dispatch & is_store), self.to_sparsify.eq(dispatch & to_vector),
                     self.finish.eq(self.running & ~self.static_error & is_finish & self.all_idle),
                     self.next_addr.eq(cur.args.finish.next_addr), self.next_len.eq(cur.args.finish.next_len)]
        return m
