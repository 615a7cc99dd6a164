"""The core simulator: hand-computed timing, numerics against torch, serial ≡ pipelined, errors."""

import dataclasses

import numpy as np
import pytest
import torch

from nmsat.dataflow.gemm import compile_gemm, read_c
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Buffer, ErrorCode, Opcode, Status, encode, to_bytes
from nmsat.hw.timing import CHECK_LATENCY
from nmsat.sim import numerics as nx
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()


def run_words(words, cfg=TINY, serial=False, memory_bytes=1 << 16, data=None):
    """Run ``words`` placed at address 0 of a zeroed memory of ``memory_bytes`` (with ``data`` placed)."""
    mem = np.zeros(memory_bytes, dtype=np.uint8)
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    mem[:blob.size] = blob
    if data:
        for addr, arr in data.items():
            raw = np.ascontiguousarray(arr).view(np.uint8).ravel()
            mem[addr:addr + raw.size] = raw
    return CoreModel(cfg).run(mem, 0, len(words), serial=serial), mem


def small_program():
    return [
        encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=0, rows=4, dram_addr=0x1000, dram_stride=8),
        encode(Opcode.LOAD, push_next=1, buffer=Buffer.B, sram_addr=0, rows=4, dram_addr=0x2000, dram_stride=8),
        encode(Opcode.GEMM, pop_prev=1, push_next=1, a_addr=0, b_addr=0, acc_addr=0, k=4),
        encode(Opcode.STORE, pop_prev=1, buffer=Buffer.ACC, sram_addr=0, rows=4, dram_addr=0x3000, dram_stride=16),
        encode(Opcode.FINISH),
    ]


def test_hand_computed_cycle_count():
    """The latency rules of docs/architecture.md, worked by hand for the tiny preset (Lr=4, Lw=2, 8-byte bus).

    fetch: 5 instructions = 10 beats at cycles 4..13, each instruction in the instruction memory with its
    check code CHECK_LATENCY = 5 cycles after its last beat (18) → dispatch from cycle 19 (d = 19, 20, 21, 22;
    FINISH 23).  LOAD A starts 20, data 24..27.  LOAD B starts 21 (one AR after A), data 28..31, pushes at 31.
    GEMM starts 32: reads 32..35, last MAC data 36, the PEs' tail 37..49 (the partial sums added, the
    result latched in 49), transfer 50, drain of 4 rows two a cycle (reads 51, 52; through the four adder
    stages; writes 56, 57) ends 57.  STORE starts 58, 4 words × 2 beats, last response 58 + 8 + 2 = 68.
    FINISH retires in 69 → 70 cycles.
    """
    assert CHECK_LATENCY == 5
    result, _ = run_words(small_program())
    assert result.status is Status.DONE and result.cycles == 70
    assert result.token_stall == {"load": 0, "compute": 10, "store": 35, "sparsify": 0}
    assert result.busy["compute"] == 26


def test_small_program_numerics():
    """Against an independent reference: rule 5 by hand in fp32 scalars (four partials, then paired).

    Row 0 of A is [2^24, 1, 1, -2^24] down k with B all ones: the partials give
    (2^24 + 1) + (1 - 2^24) = 2^24 - (2^24 - 1) = 1 (2^24 + 1 rounds to 2^24); one chain in increasing k
    gives 0, reversed 2.  The other rows are random; every output must match the reference bit for bit.
    """
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 4)).astype(np.float32)  # buffer words: a[k] is the A column for step k
    a[:, 0] = [2.0 ** 24, 1.0, 1.0, -2.0 ** 24]
    b = np.ones((4, 4), dtype=np.float32)
    b[:, 1:] = rng.standard_normal((4, 3))
    abits, bbits = nx.f32_to_bf16_bits(a), nx.f32_to_bf16_bits(b)
    result, mem = run_words(small_program(), data={0x1000: abits, 0x2000: bbits})
    out = mem[0x3000:0x3000 + 64].view(np.float32).reshape(4, 4)
    av, bv = nx.bf16_bits_to_f32(abits), nx.bf16_bits_to_f32(bbits)
    ref = np.zeros((4, 4), dtype=np.float32)
    for r in range(4):
        for c in range(4):
            parts = [np.float32(av[k, r] * bv[k, c]) for k in range(4)]  # k = 4: step k is partial k
            ref[r, c] = np.float32(np.float32(parts[0] + parts[1]) + np.float32(parts[2] + parts[3]))
    assert result.ok and out[0, 0] == 1.0
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("cfg", [TINY, SATConfig.vcu1525()], ids=["tiny", "vcu1525"])
@pytest.mark.parametrize("m,n,k", [(4, 4, 4), (7, 9, 13), (33, 17, 70), (64, 40, 96)])
def test_gemm_matches_torch_is_race_free_and_serial_is_slower(cfg, m, n, k):
    """The compiler's program against torch; its tokens leave no access unordered (the hazard check, which a
    dropped token trips: see test_a_dropped_token_is_a_hazard); serial mode only adds cycles."""
    rng = np.random.default_rng(m * n * k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    prog = compile_gemm(cfg, a, b)
    mem_p, mem_s = prog.memory.copy(), prog.memory.copy()
    pipelined = CoreModel(cfg).run(mem_p, prog.program_addr, prog.length)
    serial = CoreModel(cfg).run(mem_s, prog.program_addr, prog.length, serial=True)
    assert pipelined.ok and serial.ok and pipelined.race_free and serial.race_free
    assert np.array_equal(mem_p, mem_s)
    assert serial.cycles > pipelined.cycles
    ta = torch.from_numpy(a).to(torch.bfloat16).double()
    tb = torch.from_numpy(b).to(torch.bfloat16).double()
    ref = (ta @ tb).numpy()
    out = read_c(prog, mem_p)
    tol = 1e-6 * np.abs(ta.numpy()) @ np.abs(tb.numpy()) * k + 1e-30  # fp32 accumulation error bound
    assert np.all(np.abs(out - ref) <= tol)


def error_case(words, **kw):
    result, _ = run_words(words, **kw)
    assert result.status is Status.ERROR
    return result


def test_bad_opcode_stops_at_dispatch():
    r = error_case([encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=0x1000, dram_stride=8), 0xF, encode(Opcode.FINISH)])
    # 3 instructions = 6 beats at 4..9, checked by 14, dispatch from 15: LOAD at 15, the bad word is current at 16
    assert (r.error, r.error_pc, r.cycles) == (ErrorCode.BAD_OPCODE, 1, 17)
    assert error_case([0]).error is ErrorCode.BAD_OPCODE  # zeroed memory is not a program


@pytest.mark.parametrize("word,code", [
    (encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=250, rows=10, dram_addr=0, dram_stride=8), ErrorCode.SRAM_RANGE),
    (encode(Opcode.LOAD, buffer=Buffer.B, rows=1, dram_addr=4, dram_stride=8), ErrorCode.DRAM_RANGE),
    (encode(Opcode.LOAD, buffer=Buffer.B, rows=2, dram_addr=(1 << 32) - 8, dram_stride=8), ErrorCode.DRAM_RANGE),
    (encode(Opcode.LOAD, buffer=Buffer.B, rows=0, dram_addr=0, dram_stride=8), ErrorCode.BAD_ARGS),
    (encode(Opcode.STORE, buffer=Buffer.A, rows=1, dram_addr=0, dram_stride=8), ErrorCode.BAD_ARGS),
    (encode(Opcode.LOAD, buffer=Buffer.ACC, rows=1, dram_addr=0, dram_stride=16), ErrorCode.BAD_ARGS),
    (encode(Opcode.SPARSIFY, length=0, n=1, m_log2=2, src_stride=8, dst_offset=4096), ErrorCode.BAD_ARGS),
    (encode(Opcode.SPARSIFY, length=9, n=5, m_log2=2, src_stride=8, dst_offset=4096), ErrorCode.BAD_ARGS),
    (encode(Opcode.SPARSIFY, length=9, n=1, m_log2=1, src_stride=8, dst_offset=4096), ErrorCode.BAD_ARGS),
    (encode(Opcode.SPARSIFY, length=9, n=1, m_log2=2, src_stride=12, dst_offset=4096), ErrorCode.DRAM_RANGE),
    (encode(Opcode.SPARSIFY, length=9, n=1, m_log2=2, src_stride=8, dst_offset=4100), ErrorCode.DRAM_RANGE),
    (encode(Opcode.SPARSIFY, src_addr=(1 << 32) - 64, length=9, n=1, m_log2=2, src_stride=8, dst_offset=0),
     ErrorCode.DRAM_RANGE),
    (encode(Opcode.GEMM, k=0), ErrorCode.BAD_ARGS),
    (encode(Opcode.GEMM, k=4, acc_addr=62), ErrorCode.SRAM_RANGE),
    (encode(Opcode.FINISH, push_next=1), ErrorCode.BAD_ARGS),
])
def test_static_errors(word, code):
    r = error_case([word, encode(Opcode.FINISH)])
    # 4 beats, the first instruction current (and its code raised) in dispatch_start = Lr + 4 + CHECK_LATENCY
    assert (r.error, r.error_pc, r.cycles) == (code, 0, TINY.mem_read_latency + 4 + CHECK_LATENCY + 1)


def test_deadlock_is_reported_not_hung():
    r = error_case([encode(Opcode.GEMM, pop_prev=1, k=4), encode(Opcode.FINISH)])
    # dispatch at 13, the GEMM waits from 14 on a token no one will push; quiet from cycle 14
    assert (r.error, r.error_pc, r.cycles) == (ErrorCode.DEADLOCK, 0, 15)


def test_static_error_behind_a_blocked_unit_is_raised_when_current():
    words = [encode(Opcode.GEMM, pop_prev=1, k=4), 0xF, encode(Opcode.FINISH)]
    r = error_case(words)
    # GEMM dispatched at 15, the bad word current at 16: the error wins over the later deadlock
    assert (r.error, r.error_pc, r.cycles) == (ErrorCode.BAD_OPCODE, 1, 17)


def test_token_overflow():
    words = [encode(Opcode.LOAD, push_next=1, buffer=Buffer.A, rows=1, dram_addr=0x1000, dram_stride=8)] * 20
    r = error_case(words + [encode(Opcode.FINISH)])
    assert r.error is ErrorCode.TOKEN_OVERFLOW and r.error_pc == TINY.token_limit


def test_program_length_and_finish_checks():
    assert error_case([encode(Opcode.GEMM, k=1)]).error is ErrorCode.NO_FINISH
    mem = np.zeros(1 << 16, dtype=np.uint8)
    assert CoreModel(TINY).run(mem, 0, 0).error is ErrorCode.PROGRAM_TOO_LONG
    assert CoreModel(TINY).run(mem, 0, TINY.imem_depth + 1).error is ErrorCode.PROGRAM_TOO_LONG
    assert CoreModel(TINY).run(mem, 4, 1).error is ErrorCode.DRAM_RANGE


def test_latency_changes_timing_as_the_rules_say():
    words = small_program()
    base, _ = run_words(words)
    slower, _ = run_words(words, cfg=dataclasses.replace(TINY, mem_read_latency=10))
    # +6 on the fetch and +6 on the first LOAD; LOAD B overlaps LOAD A, so its latency is hidden
    assert slower.cycles - base.cycles == 6 + 6


def test_queue_depth_changes_timing_as_the_rules_say():
    """A STORE waiting for its token holds the only store-queue entry, so the dispatcher stops in front of
    the next STORE and the LOAD behind it waits.  5 instructions = 10 beats: dispatch from 19 (the checks).

    depth 4: d = 19, 20, 21, 22; GEMM starts 20, transfer 42 (8 reads, the SRAM latency, the PEs' tail of
    13), drain ends 49 (push: 2 reads, the four adder stages); STORE0 50..54, STORE1 52..56; LOAD starts 23,
    data 27; FINISH retires 57: 58 cycles.
    depth 1: STORE1 is dispatched when STORE0 has started (50) in 51, the LOAD in 52; it starts 53,
    its data arrives in 57; FINISH retires 58: 59 cycles.
    """
    words = [encode(Opcode.GEMM, push_next=1, k=8),
             encode(Opcode.STORE, pop_prev=1, buffer=Buffer.ACC, rows=1, dram_addr=0x3000, dram_stride=16),
             encode(Opcode.STORE, buffer=Buffer.ACC, rows=1, dram_addr=0x3010, dram_stride=16),
             encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=0x1000, dram_stride=8),
             encode(Opcode.FINISH)]
    deep, _ = run_words(words)
    shallow, _ = run_words(words, cfg=dataclasses.replace(TINY, queue_depth=1))
    assert (deep.cycles, shallow.cycles) == (58, 59)


def test_time_program_matches_run_and_is_memoised_safely():
    prog = compile_gemm(TINY, np.ones((9, 13), np.float32), np.ones((13, 6), np.float32))
    core = CoreModel(TINY)
    first = core.time_program(prog.words)
    first.busy["load"] = -1  # a caller's change must not leak into the cache
    again = core.time_program(prog.words)
    full = CoreModel(TINY).run(prog.memory.copy(), prog.program_addr, prog.length)
    assert again.cycles == full.cycles and again.busy == full.busy and again.token_stall == full.token_stall
    assert core.time_program(prog.words, serial=True).cycles > again.cycles


def test_burst_cut_rules():
    from nmsat.hw.timing import burst_count, bursts

    # contiguous: one run, cut at the 4 KiB page and at max_burst_beats (16 beats of 8 bytes)
    assert bursts(TINY, 4096 - 16, 5, 8, 8) == [(4080, 2), (4096, 3)]
    assert bursts(TINY, 0, 40, 8, 8) == [(0, 16), (128, 16), (256, 8)]
    # strided: one run per row (ACC words are two beats)
    assert bursts(TINY, 0, 3, 16, 48) == [(0, 2), (48, 2), (96, 2)]
    assert burst_count(TINY, 4096 - 16, 5, 8, 8) == 2 and burst_count(TINY, 0, 3, 16, 48) == 3


# ---------------------------------------------------------------- hazards, the memory model, bad calls


def _without_flag(prog, opcode, flag):
    """The compiler's program with ``flag`` cleared on the first instruction of ``opcode`` that has it."""
    from nmsat.hw.isa import decode

    bit = {"pop_prev": 4, "pop_next": 5, "push_prev": 6, "push_next": 7}[flag]
    words = list(prog.words)
    index = next(i for i, w in enumerate(words) if decode(w).opcode == opcode.value and getattr(decode(w), flag))
    words[index] &= ~(1 << bit)
    mem = prog.memory.copy()
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    mem[prog.program_addr:prog.program_addr + blob.size] = blob
    return mem


@pytest.mark.parametrize("opcode,flag,storage", [(Opcode.GEMM, "pop_prev", {"A", "B"}),
                                                 (Opcode.STORE, "pop_prev", {"ACC"})])
def test_a_dropped_token_is_a_hazard(opcode, flag, storage):
    """Without the RTL: a GEMM that does not wait for its LOADs, a STORE that does not wait for its GEMM."""
    rng = np.random.default_rng(0)
    # B three tiles wide: the LOADs of B, not the GEMMs, set the pace, so a GEMM that takes its successor's
    # token starts before its operands are in
    prog = compile_gemm(TINY, rng.standard_normal((9, 40)).astype(np.float32),
                        rng.standard_normal((40, 17)).astype(np.float32))
    assert CoreModel(TINY).run(prog.memory.copy(), prog.program_addr, prog.length).race_free
    result = CoreModel(TINY).run(_without_flag(prog, opcode, flag), prog.program_addr, prog.length)
    assert result.hazards and {h.storage for h in result.hazards} <= storage
    assert all(h.kind == "read after write" and h.first_pc < h.second_pc for h in result.hazards)


def test_a_load_of_bytes_a_store_is_still_writing_is_a_hazard():
    words = [encode(Opcode.GEMM, k=1, push_next=1),
             encode(Opcode.STORE, pop_prev=1, buffer=Buffer.ACC, rows=4, dram_addr=0x3000, dram_stride=16),
             encode(Opcode.LOAD, buffer=Buffer.A, rows=2, dram_addr=0x3008, dram_stride=8),
             encode(Opcode.FINISH)]
    result, _ = run_words(words)
    assert [(h.storage, h.kind, h.first_pc, h.second_pc) for h in result.hazards] == [("DRAM", "read after write", 1, 2)]


def test_beats_past_the_memory_get_decerr_in_the_cycle_the_rules_say():
    """LOAD: 2 instructions = 4 beats, dispatch at 13 (the checks), the LOAD starts 14, its beat arrives (DECERR)
    in 18.
    STORE: C rows 32 bytes apart, 2 beats each, one burst each; the 2nd row is past the 0x2010-byte memory:
    its burst's last beat goes out 2 cycles after the first burst's and its response Lw = 2 later.
    Fetch: a 24-byte memory holds 3 of the program's 4 beats: beat 3 arrives (DECERR) in cycle Lr + 3 = 7."""
    load = [encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=4096, dram_stride=8), encode(Opcode.FINISH)]
    r, _ = run_words(load, memory_bytes=4096)
    assert (r.status, r.error, r.error_pc, r.cycles, r.executed) == (Status.ERROR, ErrorCode.AXI_ERROR, 0, 19, 1)
    store = [encode(Opcode.STORE, buffer=Buffer.ACC, rows=2, dram_addr=0x1FF0, dram_stride=32), encode(Opcode.FINISH)]
    r, mem = run_words(store, memory_bytes=0x2010)
    # dispatch at 13, STORE starts 14, beats 15..18 (bursts end at 16 and 18), responses at 18 and 20
    assert (r.error, r.error_pc, r.cycles) == (ErrorCode.AXI_ERROR, 0, 21)
    fetch = np.zeros(24, dtype=np.uint8)
    fetch[:] = np.frombuffer(to_bytes(load), dtype=np.uint8)[:24]
    r = CoreModel(TINY).run(fetch, 0, 2)
    assert (r.error, r.error_pc, r.cycles, r.executed) == (ErrorCode.AXI_ERROR, 0, 8, 0)
    # the bytes of a LOAD past the end read as zero: A word 0 is zero after the LOAD above
    core = CoreModel(TINY)
    core.a[:] = 7
    mem = np.zeros(4096, dtype=np.uint8)
    mem[:32] = np.frombuffer(to_bytes(load), dtype=np.uint8)
    core.run(mem, 0, 2)
    assert not core.a[0].any() and (core.a[1] == 7).all()


def test_bad_calls_are_refused():
    mem = np.zeros(1 << 12, dtype=np.uint8)
    core = CoreModel(TINY)
    with pytest.raises(ValueError, match="program_addr must be an int in 0..2\\^64-1"):
        core.run(mem, -16, 1)
    with pytest.raises(ValueError, match="program_len must be an int"):
        core.run(mem, 0, -1)
    with pytest.raises(ValueError, match="contiguous, writeable"):
        core.run(np.zeros(1 << 13, dtype=np.uint8)[::2], 0, 1)
    with pytest.raises(TypeError, match="1-D numpy uint8"):
        core.run(np.zeros(64, dtype=np.float32), 0, 1)


def test_a_sparsify_writing_over_its_own_source_is_a_hazard():
    """Its chunks are read one after another, the earlier ones' output in between: the bytes depend on it."""
    words = [encode(Opcode.SPARSIFY, src_addr=0x1000, transpose=1, length=16, src_stride=0x40, n=2, m_log2=3,
                    dst_offset=0x20), encode(Opcode.FINISH)]
    result = run_words(words)[0]
    assert result.ok and [(h.first_pc, h.second_pc) for h in result.hazards] == [(0, 0)]
    apart = [encode(Opcode.SPARSIFY, src_addr=0x1000, transpose=1, length=16, src_stride=0x40, n=2, m_log2=3,
                    dst_offset=0x400), encode(Opcode.FINISH)]
    assert run_words(apart)[0].race_free


def test_kernel_walk_reads_each_taps_words_in_walk_order():
    """A 2 × 3 walk (strides 10 and 3 B words, k = 2 per tap) against a plain loop over the formula of
    docs/architecture.md §3: step t·k + i reads A word t·k + i and B word o_t + i, o_t = th·10 + tw·3."""
    rng = np.random.default_rng(4)
    a = nx.f32_to_bf16_bits(rng.standard_normal((12, 4)).astype(np.float32))  # 6 taps × 2 A words
    b = nx.f32_to_bf16_bits(rng.standard_normal((18, 4)).astype(np.float32))  # B words 0 .. 17
    words = [encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=0, rows=12, dram_addr=0x1000, dram_stride=8),
             encode(Opcode.LOAD, push_next=1, buffer=Buffer.B, sram_addr=0, rows=18, dram_addr=0x2000, dram_stride=8),
             encode(Opcode.GEMM, pop_prev=1, push_next=1, a_addr=0, b_addr=0, acc_addr=0, k=2, taps_h=2, taps_w=3,
                    tap_h_stride=10, tap_w_stride=3),
             encode(Opcode.STORE, pop_prev=1, buffer=Buffer.ACC, sram_addr=0, rows=4, dram_addr=0x3000, dram_stride=16),
             encode(Opcode.FINISH)]
    result, mem = run_words(words, data={0x1000: a, 0x2000: b})
    assert result.ok and result.gemm_macs == 12 * 16
    av, bv = nx.bf16_bits_to_f32(a), nx.bf16_bits_to_f32(b)
    ref = np.zeros((4, 4), np.float32)
    for r in range(4):
        for c in range(4):
            parts = [np.float32(0.0)] * 4  # rule 5: 12 steps, step j into partial j mod 4
            for t in range(6):
                th, tw = divmod(t, 3)
                for i in range(2):
                    j = t * 2 + i
                    parts[j % 4] = np.float32(parts[j % 4] + np.float32(av[j, r] * bv[th * 10 + tw * 3 + i, c]))
            ref[r, c] = np.float32(np.float32(parts[0] + parts[1]) + np.float32(parts[2] + parts[3]))
    assert np.array_equal(mem[0x3000:0x3040].view(np.uint32).reshape(4, 4), ref.view(np.uint32))
    # a walk of T taps costs what a GEMM of T·k words does
    plain, _ = run_words(words[:2] + [encode(Opcode.GEMM, pop_prev=1, push_next=1, k=12)] + words[3:],
                         data={0x1000: a, 0x2000: b})
    assert plain.cycles == result.cycles


def test_transposing_load_writes_each_blocks_columns_and_ends_cols_cycles_late():
    """Two 4 × 4 blocks 48 bytes apart, transposed into A: word b·4 + j is lane j of block b's four words; the
    LOAD's words are all written cols cycles after its last beat (the hand-computed rule of §6)."""
    blocks = np.arange(2 * 6 * 4, dtype=np.uint16).reshape(2, 6, 4)  # block b at 0x1000 + 48·b: its first 4 words
    load = encode(Opcode.LOAD, buffer=Buffer.A, tile_transpose=1, sram_addr=8, rows=2, dram_addr=0x1000, dram_stride=48)
    result, _ = run_words([load, encode(Opcode.FINISH)], data={0x1000: blocks})
    core = CoreModel(TINY)
    mem = np.zeros(1 << 16, np.uint8)
    mem[:32] = np.frombuffer(to_bytes([load, encode(Opcode.FINISH)]), np.uint8)
    mem[0x1000:0x1000 + blocks.nbytes] = blocks.view(np.uint8).ravel()
    core.run(mem, 0, 2)
    expected = blocks[:, :4, :].transpose(0, 2, 1).reshape(8, 4)  # [block, lane j, word r]
    assert np.array_equal(core.a[8:16], expected)
    # fetch: 2 instructions = 4 beats at 4..7, checked by 12, dispatch 13; LOAD starts 14 (two bursts: the
    # blocks are not one run), data 18..25 (8 beats), words written 26..29 → FINISH retires 30 → 31 cycles
    assert result.cycles == 31
    plain, _ = run_words([encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=8, rows=8, dram_addr=0x1000, dram_stride=8),
                          encode(Opcode.FINISH)])
    assert plain.cycles == result.cycles - TINY.cols
