"""The static checks of one instruction, pipelined: what the fetch unit stores beside each instruction.

:class:`InstructionCheck` takes an instruction in cycle t and gives, in
cycle t + ``nmsat.hw.timing.CHECK_LATENCY``, the same instruction and its
static error code: BAD_OPCODE, BAD_ARGS, SRAM_RANGE or DRAM_RANGE (the
first of them that applies, the order of ``docs/architecture.md`` §4), or
NONE.  NO_FINISH depends on the PC, not the instruction: the dispatcher
adds it.  The rule is ``nmsat.sim.core.check_program``'s; every range sum
is rewritten as a comparison against a remainder computed a stage earlier
(``x + y > K`` as ``y > K − x``), so that no stage holds more than one
carry chain and a compare (``benchmarks/core_logic_depth.py``).

Not here: where the codes are kept (the fetch unit writes them into the
instruction memory, the dispatcher reads them) or the run's errors.
"""

from amaranth.hdl import Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import IDX_SLOTS_PER_WORD, SATConfig
from ..isa import INSTRUCTION_BITS, Buffer, ErrorCode, Instruction, Opcode, VectorFunc
from ..timing import CHECK_LATENCY
from .common import clog2

__all__ = ["InstructionCheck"]


class InstructionCheck(wiring.Component):
    """``inst`` in, ``inst_out`` and ``code`` out ``CHECK_LATENCY`` cycles later (one register a stage, the
    input's included).  ``program_addr``: the address of the program being fetched (a FINISH may chain only
    to a later one), held during the fetch."""

    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        super().__init__({"inst": In(INSTRUCTION_BITS), "program_addr": In(64),
                          "inst_out": Out(INSTRUCTION_BITS), "code": Out(ErrorCode)})

    def elaborate(self, platform):
        assert CHECK_LATENCY == 5, "the stages below are written for five registers"
        assert IDX_SLOTS_PER_WORD == 4, "ceil(slots / 4) below is a shift by 2"
        m = Module()
        cfg = self.cfg
        top = 1 << cfg.addr_bits  # one past the last byte of the address space
        align = clog2(cfg.bus_bytes)
        burst = cfg.max_burst_beats * cfg.bus_bytes
        burst_align = clog2(burst) if burst > 1 else 0

        def reg(name: str, value) -> Signal:
            """``value`` one cycle later."""
            value = Value.cast(value)
            sig = Signal(value.shape(), name=name)
            m.d.sync += sig.eq(value)
            return sig

        # the instruction at each stage: stage 0 is the input register
        stages = [reg("inst_0", self.inst)]
        for k in range(1, CHECK_LATENCY):
            stages.append(reg(f"inst_{k}", stages[-1]))
        m.d.comb += self.inst_out.eq(stages[-1])
        i1, i2, i3 = (Instruction(stages[k]) for k in range(3))  # the instruction stages 1, 2 and 3 read

        # ---- stage 1: decode, the arguments' own checks, remainders
        op, deps = i1.opcode, i1.deps
        mem, gemm, sparse = i1.args.mem, i1.args.gemm, i1.args.sparse
        sp, up, vec, fin = i1.args.sparsify, i1.args.update, i1.args.vector, i1.args.finish
        is_load, is_store, is_finish = op == Opcode.LOAD, op == Opcode.STORE, op == Opcode.FINISH
        is_dense, is_sparse = op == Opcode.GEMM, op == Opcode.SPARSE_GEMM
        is_sparsify, is_update, is_vector = op == Opcode.SPARSIFY, op == Opcode.WEIGHT_UPDATE, op == Opcode.VECTOR
        known = is_load | is_store | is_dense | is_sparse | is_finish | is_sparsify | is_update | is_vector
        is_mem = is_load | is_store
        # the units form a ring (load → compute → store → sparsify → load): only FINISH has no neighbours
        no_neighbour = is_finish & (deps.pop_prev | deps.pop_next | deps.push_prev | deps.push_next)
        buf, transposing = mem.buffer, mem.tile_transpose
        mem_bad_args = is_mem & ((is_store & (buf != Buffer.ACC)) | (is_load & (buf == Buffer.ACC)) | (mem.rows == 0) |
                                 (is_load & (mem.bf16 | mem.relu)) |
                                 (transposing & (is_store | ((buf != Buffer.A) & (buf != Buffer.B)) |
                                                 (cfg.rows != cfg.cols))))
        gemm_zero = is_dense & (gemm.k == 0)
        m_value = Signal(8)
        m.d.comb += m_value.eq(Const(1, 8) << sparse.m_log2)  # SPARSIFY's n and m_log2 share these offsets
        supported = Const(0, 1)
        for value in cfg.sparse_m:
            supported = supported | (sparse.m_log2 == value.bit_length() - 1)
        pattern_bad = (sparse.n == 0) | (sparse.n > m_value) | ~supported
        sparse_bad = is_sparse & ((sparse.groups == 0) | pattern_bad | ((sparse.b_addr & (m_value - 1)) != 0) |
                                  ((sparse.tap_h_stride & (m_value - 1)) != 0) |
                                  ((sparse.tap_w_stride & (m_value - 1)) != 0))
        sparsify_bad = is_sparsify & ((sp.length == 0) | pattern_bad)
        update_bad = is_update & (up.words == 0)
        vector_bad = is_vector & ((vec.beats == 0) | (vec.func.as_value() >= len(VectorFunc)))
        s1 = {
            "known": reg("known", known), "is_mem": reg("is_mem", is_mem), "is_dense": reg("is_dense", is_dense),
            "is_sparse": reg("is_sparse", is_sparse), "is_sparsify": reg("is_sparsify", is_sparsify),
            "is_update": reg("is_update", is_update), "is_vector": reg("is_vector", is_vector),
            "args_bad": reg("args_bad", no_neighbour | mem_bad_args | gemm_zero | sparse_bad | sparsify_bad |
                            update_bad | vector_bad),
            # a chain only goes forward in memory, so every chain ends
            "chain_back": reg("chain_back", is_finish & (fin.next_len != 0) & (fin.next_addr <= self.program_addr)),
        }
        depth = Signal(17)
        with m.Switch(buf):
            for b in Buffer:
                with m.Case(b):
                    m.d.comb += depth.eq(cfg.depth(b))
        # LOAD/STORE: buffer words (a transposing LOAD writes rows · cols), the last byte in memory
        s1["sram_end"] = reg("sram_end", mem.sram_addr + Mux(is_load & transposing, mem.rows * cfg.cols, mem.rows))
        s1["depth"] = reg("depth", depth)
        dram_word = Mux(is_store & mem.bf16, cfg.acc_word_bytes // 2,  # a bf16 STORE's words
                        Mux(is_load & transposing, cfg.rows * cfg.b_word_bytes,
                            Mux(buf == Buffer.B, cfg.b_word_bytes, Mux(buf == Buffer.ACC, cfg.acc_word_bytes,
                                                                       cfg.a_word_bytes))))
        s1["rows_m1"] = reg("rows_m1", (mem.rows - 1)[:16])
        s1["word_m1"] = reg("word_m1", dram_word - 1)
        s1["mem_room"] = reg("mem_room", (top - 1) - mem.dram_addr)  # bytes past dram_addr, less one
        s1["mem_align"] = reg("mem_align", (mem.dram_addr[:align] != 0) | (mem.dram_stride[:align] != 0))
        # GEMMs (SPARSE_GEMM shares the addresses and the walk): the walk, room left in A, B and ACC, IDX
        walk_h = Mux(gemm.taps_h == 0, 1, gemm.taps_h)
        walk_w = Mux(gemm.taps_w == 0, 1, gemm.taps_w)
        s1["taps"] = reg("taps", (walk_h * walk_w)[:6])
        s1["walk_h_m1"], s1["walk_w_m1"] = reg("walk_h_m1", (walk_h - 1)[:3]), reg("walk_w_m1", (walk_w - 1)[:3])
        s1["a_room"] = reg("a_room", cfg.a_depth - gemm.a_addr)
        s1["b_room"] = reg("b_room", cfg.b_depth - gemm.b_addr)
        s1["acc_bad"] = reg("acc_bad", gemm.acc_addr > cfg.acc_depth - cfg.rows)
        # the IDX words: idx_addr + ceil(slots / 4) > idx_depth  ⇔  slots > 4 · (idx_depth − idx_addr)
        s1["idx_room4"] = reg("idx_room4", (cfg.idx_depth - sparse.idx_addr) * IDX_SLOTS_PER_WORD)
        # SPARSIFY: the span read per lane (whole chunks), groups, the output's address
        E = cfg.sparsify_chunk
        span = Signal(17)
        m.d.comb += span.eq((sp.length + E - 1) & ~(E - 1))
        sp_groups = Signal(17)
        m.d.comb += sp_groups.eq((sp.length + m_value - 1) >> sparse.m_log2)
        s1["sp_groups"] = reg("sp_groups", sp_groups)
        s1["n5"] = reg("n5", sp.n * (1 + IDX_SLOTS_PER_WORD))  # slots and index slots: G·n·5/4, rounded up below
        s1["span_m1"] = reg("span_m1", (span - 1)[:17])
        s1["sp_other_m1"] = reg("sp_other_m1", Mux(sp.transpose, span * 4, 4 * cfg.rows) - 1)
        s1["sp_dst"] = reg("sp_dst", sp.src_addr + sp.dst_offset)
        s1["src_room"] = reg("src_room", (top - 1) - sp.src_addr)
        s1["sp_align"] = reg("sp_align", (sp.src_addr[:align] != 0) | (sp.src_stride[:align] != 0) |
                             (sp.dst_offset[:align] != 0))
        # WEIGHT_UPDATE: its bytes, less one; w, v and g
        s1["up_bytes_m1"] = reg("up_bytes_m1", up.words * (4 * cfg.rows) - 1)
        s1["w_room"] = reg("w_room", (top - 1) - up.w_addr)
        s1["wv"], s1["wg"] = reg("wv", up.w_addr + up.v_offset), reg("wg", up.w_addr + up.g_offset)
        s1["up_align"] = reg("up_align", (up.w_addr[:burst_align] != 0) | (up.v_offset[:burst_align] != 0) |
                             (up.g_offset[:burst_align] != 0))
        # VECTOR: its bytes, less one; x, y and z (the offsets count bursts, signed)
        s1["vec_bytes_m1"] = reg("vec_bytes_m1", vec.beats * cfg.bus_bytes - 1)
        s1["x_room"] = reg("x_room", (top - 1) - vec.x_addr)
        s1["xy"] = reg("xy", vec.x_addr + vec.y_offset * burst)
        s1["xz"] = reg("xz", vec.x_addr + vec.z_offset * burst)
        s1["vec_align"] = reg("vec_align", vec.x_addr[:burst_align] != 0)

        # ---- stage 2: products, the remainders less what is known
        gemm2, sparse2, mem2, sp2 = i2.args.gemm, i2.args.sparse, i2.args.mem, i2.args.sparsify
        s2 = {name: reg(f"{name}_2", s1[name]) for name in (
            "known", "is_mem", "is_dense", "is_sparse", "is_sparsify", "is_update", "is_vector", "acc_bad",
            "mem_room", "mem_align", "word_m1", "a_room", "idx_room4", "sp_align", "sp_other_m1", "src_room",
            "up_bytes_m1", "up_align", "vec_bytes_m1", "vec_align")}
        s2["args_bad"] = reg("args_bad_2", s1["args_bad"] | s1["chain_back"])
        s2["mem_sram"] = reg("mem_sram", s1["is_mem"] & (s1["sram_end"] > s1["depth"]))
        s2["mem_span"] = reg("mem_span", s1["rows_m1"] * mem2.dram_stride)  # bytes from the first row to the last
        s2["steps"] = reg("steps", s1["taps"] * gemm2.k)  # SPARSE_GEMM: taps · groups
        s2["tap_h"] = reg("tap_h", s1["walk_h_m1"] * gemm2.tap_h_stride)
        s2["tap_w"] = reg("tap_w", s1["walk_w_m1"] * gemm2.tap_w_stride)
        s2["b_room_dense"] = reg("b_room_dense", s1["b_room"] - gemm2.k)
        s2["b_room_sparse"] = reg("b_room_sparse", s1["b_room"] - (sparse2.groups << sparse2.m_log2))
        s2["sp_slots5"] = reg("sp_slots5", s1["sp_groups"] * s1["n5"])
        s2["sp_src_span"] = reg("sp_src_span", Mux(sp2.transpose, (cfg.rows - 1) * sp2.src_stride,
                                                    s1["span_m1"] * sp2.src_stride))
        s2["dst_room"] = reg("dst_room", top - s1["sp_dst"])
        s2["up_bad_w"] = reg("up_bad_w", s1["up_bytes_m1"] > s1["w_room"])
        s2["v_room"], s2["g_room"] = reg("v_room", (top - 1) - s1["wv"]), reg("g_room", (top - 1) - s1["wg"])
        s2["vec_bad_x"] = reg("vec_bad_x", s1["vec_bytes_m1"] > s1["x_room"])
        s2["vec_below"] = reg("vec_below", (s1["xy"] < 0) | (s1["xz"] < 0))
        s2["y_room"], s2["z_room"] = reg("y_room", (top - 1) - s1["xy"]), reg("z_room", (top - 1) - s1["xz"])

        # ---- stage 3: sums of two products or of a product and a constant
        n3 = i3.args.sparse.n
        s3 = {name: reg(f"{name}_3", s2[name]) for name in (
            "known", "is_mem", "is_dense", "is_sparse", "is_sparsify", "is_update", "is_vector", "args_bad",
            "mem_sram", "mem_room", "mem_align", "acc_bad", "idx_room4", "b_room_dense", "b_room_sparse", "sp_align",
            "src_room", "dst_room", "up_align", "up_bad_w", "vec_align", "vec_bad_x", "vec_below")}
        s3["mem_last"] = reg("mem_last", s2["mem_span"] + s2["word_m1"])  # last byte − dram_addr
        s3["dense_a_bad"] = reg("dense_a_bad", s2["steps"] > s2["a_room"])
        s3["a_room"] = reg("a_room_3", s2["a_room"])
        s3["last_tap"] = reg("last_tap", s2["tap_h"] + s2["tap_w"])
        s3["slots"] = reg("slots", s2["steps"] * n3)
        s3["src_last"] = reg("src_last", s2["sp_src_span"] + s2["sp_other_m1"])  # last byte − src_addr
        # output bytes: (slots + ceil(slots / 4)) · a_word_bytes = ceil(5·slots / 4) · a_word_bytes
        s3["dst_bytes"] = reg("dst_bytes", ((s2["sp_slots5"] + IDX_SLOTS_PER_WORD - 1) >> 2) * cfg.a_word_bytes)
        s3["up_bad_vg"] = reg("up_bad_vg", (s2["up_bytes_m1"] > s2["v_room"]) | (s2["up_bytes_m1"] > s2["g_room"]))
        s3["vec_bad_yz"] = reg("vec_bad_yz", (s2["vec_bytes_m1"] > s2["y_room"]) | (s2["vec_bytes_m1"] > s2["z_room"]))

        # ---- stage 4: the comparisons left, then the code
        s = s3
        sram_bad = reg("sram_bad", s["mem_sram"] | (s["is_dense"] & (s["dense_a_bad"] | s["acc_bad"] |
                                                                      (s["last_tap"] > s["b_room_dense"]))) |
                       (s["is_sparse"] & ((s["slots"] > s["a_room"]) | (s["slots"] > s["idx_room4"]) | s["acc_bad"] |
                                          (s["last_tap"] > s["b_room_sparse"]))))
        dram_bad = reg("dram_bad", (s["is_mem"] & (s["mem_align"] | (s["mem_last"] > s["mem_room"]))) |
                       (s["is_sparsify"] & (s["sp_align"] | (s["src_last"] > s["src_room"]) |
                                            (s["dst_bytes"] > s["dst_room"]))) |
                       (s["is_update"] & (s["up_align"] | s["up_bad_w"] | s["up_bad_vg"])) |
                       (s["is_vector"] & (s["vec_align"] | s["vec_below"] | s["vec_bad_x"] | s["vec_bad_yz"])))
        known4, args4 = reg("known_4", s["known"]), reg("args_bad_4", s["args_bad"])
        with m.If(~known4):
            m.d.comb += self.code.eq(ErrorCode.BAD_OPCODE)
        with m.Elif(args4):
            m.d.comb += self.code.eq(ErrorCode.BAD_ARGS)
        with m.Elif(sram_bad):
            m.d.comb += self.code.eq(ErrorCode.SRAM_RANGE)
        with m.Elif(dram_bad):
            m.d.comb += self.code.eq(ErrorCode.DRAM_RANGE)
        return m
