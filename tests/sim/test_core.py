"""The core simulator: hand-computed timing, numerics against torch, serial ≡ pipelined, errors."""

import dataclasses

import numpy as np
import pytest
import torch

from nmsat.dataflow.gemm import compile_gemm, read_c
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Buffer, ErrorCode, Opcode, Status, encode, to_bytes
from nmsat.sim import numerics as nx
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()


def run_words(words, cfg=TINY, serial=False, memory_bytes=1 << 16, data=None):
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

    fetch: 5 instructions = 10 beats, first at cycle 4 → dispatch from cycle 14 (d = 14, 15, 16, 17; FINISH 18).
    LOAD A starts 15, data 19..22.  LOAD B starts 16 (one AR after A), data 23..26, pushes at 26.
    GEMM starts 27: reads 27..30, last MAC 31, transfer 32, drain of 4 rows + 2 stages ends 37.
    STORE starts 38, 4 words × 2 beats, last response 38 + 8 + 2 = 48.  FINISH retires in 49 → 50 cycles.
    """
    result, _ = run_words(small_program())
    assert result.status is Status.DONE and result.cycles == 50
    assert result.token_stall == {"load": 0, "compute": 10, "store": 20}
    assert result.busy["compute"] == 11


def test_small_program_numerics():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 4)).astype(np.float32)  # buffer words: a[k] is the A column for step k
    b = rng.standard_normal((4, 4)).astype(np.float32)
    abits, bbits = nx.f32_to_bf16_bits(a), nx.f32_to_bf16_bits(b)
    result, mem = run_words(small_program(), data={0x1000: abits, 0x2000: bbits})
    out = mem[0x3000:0x3000 + 64].view(np.float32).reshape(4, 4)
    ref = nx.bf16_bits_to_f32(abits).astype(np.float64).T @ nx.bf16_bits_to_f32(bbits).astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    assert np.array_equal(out, nx.mac_sequence(abits, bbits))


@pytest.mark.parametrize("cfg", [TINY, SATConfig.vcu1525()], ids=["tiny", "vcu1525"])
@pytest.mark.parametrize("m,n,k", [(4, 4, 4), (7, 9, 13), (33, 17, 70), (64, 40, 96)])
def test_gemm_matches_torch_and_serial_equals_pipelined(cfg, m, n, k):
    rng = np.random.default_rng(m * n * k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    prog = compile_gemm(cfg, a, b)
    mem_p, mem_s = prog.memory.copy(), prog.memory.copy()
    pipelined = CoreModel(cfg).run(mem_p, prog.program_addr, prog.length)
    serial = CoreModel(cfg).run(mem_s, prog.program_addr, prog.length, serial=True)
    assert pipelined.ok and serial.ok
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
    # 3 instructions = 6 beats, dispatch from 10: LOAD at 10, the bad word is current at 11
    assert (r.error, r.error_pc, r.cycles) == (ErrorCode.BAD_OPCODE, 1, 12)
    assert error_case([0]).error is ErrorCode.BAD_OPCODE  # zeroed memory is not a program


@pytest.mark.parametrize("word,code", [
    (encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=250, rows=10, dram_addr=0, dram_stride=8), ErrorCode.SRAM_RANGE),
    (encode(Opcode.LOAD, buffer=Buffer.B, rows=1, dram_addr=4, dram_stride=8), ErrorCode.DRAM_RANGE),
    (encode(Opcode.LOAD, buffer=Buffer.B, rows=2, dram_addr=(1 << 32) - 8, dram_stride=8), ErrorCode.DRAM_RANGE),
    (encode(Opcode.LOAD, buffer=Buffer.B, rows=0, dram_addr=0, dram_stride=8), ErrorCode.BAD_ARGS),
    (encode(Opcode.STORE, buffer=Buffer.A, rows=1, dram_addr=0, dram_stride=8), ErrorCode.BAD_ARGS),
    (encode(Opcode.LOAD, buffer=Buffer.ACC, rows=1, dram_addr=0, dram_stride=16), ErrorCode.BAD_ARGS),
    (encode(Opcode.LOAD, pop_prev=1, buffer=Buffer.A, rows=1, dram_addr=0, dram_stride=8), ErrorCode.BAD_ARGS),
    (encode(Opcode.GEMM, k=0), ErrorCode.BAD_ARGS),
    (encode(Opcode.GEMM, k=4, acc_addr=62), ErrorCode.SRAM_RANGE),
    (encode(Opcode.FINISH, push_next=1), ErrorCode.BAD_ARGS),
])
def test_static_errors(word, code):
    r = error_case([word, encode(Opcode.FINISH)])
    assert (r.error, r.error_pc, r.cycles) == (code, 0, TINY.mem_read_latency + 4 + 1)


def test_deadlock_is_reported_not_hung():
    r = error_case([encode(Opcode.GEMM, pop_prev=1, k=4), encode(Opcode.FINISH)])
    # dispatch at 8, the GEMM waits from 9 on a token no one will push; quiet from cycle 9
    assert (r.error, r.error_pc, r.cycles) == (ErrorCode.DEADLOCK, 0, 10)


def test_static_error_behind_a_blocked_unit_is_raised_when_current():
    words = [encode(Opcode.GEMM, pop_prev=1, k=4), 0xF, encode(Opcode.FINISH)]
    r = error_case(words)
    # GEMM dispatched at 10, the bad word current at 11: the error wins over the later deadlock
    assert (r.error, r.error_pc, r.cycles) == (ErrorCode.BAD_OPCODE, 1, 12)


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


def test_queue_depth_and_latency_change_timing_as_the_rules_say():
    words = small_program()
    base, _ = run_words(words)
    slower, _ = run_words(words, cfg=dataclasses.replace(TINY, mem_read_latency=10))
    # +6 on the fetch and +6 on the first LOAD; LOAD B overlaps LOAD A, so its latency is hidden
    assert slower.cycles - base.cycles == 6 + 6


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
    from nmsat.sim.timing import burst_count, bursts

    # contiguous: one run, cut at the 4 KiB page and at max_burst_beats (16 beats of 8 bytes)
    assert bursts(TINY, 4096 - 16, 5, 8, 8) == [(4080, 2), (4096, 3)]
    assert bursts(TINY, 0, 40, 8, 8) == [(0, 16), (128, 16), (256, 8)]
    # strided: one run per row (ACC words are two beats)
    assert bursts(TINY, 0, 3, 16, 48) == [(0, 2), (48, 2), (96, 2)]
    assert burst_count(TINY, 4096 - 16, 5, 8, 8) == 2 and burst_count(TINY, 0, 3, 16, 48) == 3
