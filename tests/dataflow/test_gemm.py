"""The GEMM compiler: instruction counts known before emitting, GEMMs cut into several programs, operand types."""

import dataclasses
import time

import numpy as np
import pytest

from nmsat.dataflow.gemm import compile_gemm, layout_gemm, plan_gemm, program_instructions, read_c
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 9, 13), (33, 17, 300), (64, 200, 40), (5, 130, 700)])
def test_instruction_count_is_known_from_the_plan(m, n, k):
    lay = layout_gemm(TINY, m, n, k)
    assert lay.instructions == program_instructions(TINY, lay.plan) + len(lay.programs)
    assert all(len(words) <= TINY.imem_depth for _, words in lay.programs)


def test_a_gemm_longer_than_the_instruction_memory_runs_as_several_programs():
    """At tiny (1,024 instructions) a 64x200x40 GEMM needs several programs; each fits, and together they give
    the bytes and (summed) cycles of one program on a core with a larger instruction memory."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((64, 40)).astype(np.float32)
    b = rng.standard_normal((40, 200)).astype(np.float32)
    prog = compile_gemm(TINY, a, b)
    assert len(prog.runs) > 1 and all(length <= TINY.imem_depth for _, length in prog.runs)
    with pytest.raises(ValueError, match="runs as .* programs"):
        prog.program_addr
    memory = prog.memory.copy()
    result = CoreModel(TINY).run_sequence(memory, prog.runs)
    assert result.ok and result.race_free
    big = dataclasses.replace(TINY, name="tiny-big-imem", imem_depth=1 << 16)
    one = compile_gemm(big, a, b, plan=prog.plan)
    assert len(one.runs) == 1
    one_memory = one.memory.copy()
    single = CoreModel(big).run(one_memory, one.program_addr, one.length)
    assert np.array_equal(read_c(prog, memory), read_c(one, one_memory))
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.allclose(read_c(prog, memory), ref, rtol=0.05, atol=0.2)
    assert result.cycles > single.cycles  # every run fetches and fills the pipeline again
    assert result.gemm_macs == single.gemm_macs


def test_too_long_a_reduction_is_refused_at_once():
    cfg = dataclasses.replace(TINY, name="tiny-short-imem", imem_depth=16)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="16-instruction memory"):
        plan_gemm(cfg, 4, 4, 1 << 16)
    assert time.perf_counter() - t0 < 5


def test_a_resnet18_batch128_layer_fits_by_cutting():
    """layer1 BP of ResNet-18/CIFAR at batch 128 (576 x 131072 x 64) needs more than the vcu1525's 65,536
    instructions: it is cut into programs that each fit, counted before emitting."""
    card = SATConfig.vcu1525()
    plan = plan_gemm(card, 576, 131072, 64)
    assert program_instructions(card, plan) > card.imem_depth
    lay = layout_gemm(card, 576, 131072, 64)
    assert len(lay.programs) > 1 and all(len(w) <= card.imem_depth for _, w in lay.programs)
    result = CoreModel(card).time_programs(words for _, words in lay.programs)
    assert result.ok and result.utilisation(card) > 0.5


@pytest.mark.parametrize("bad,message", [
    (np.ones((4, 4), dtype=np.uint16), "pass bf16_bits=True"),
    (np.ones((4, 4), dtype=np.complex64), "real floating-point"),
    (np.ones((4, 4), dtype=np.int32), "real floating-point"),
])
def test_operands_must_be_real_floating_point(bad, message):
    with pytest.raises(TypeError, match=message):
        compile_gemm(TINY, bad, np.ones((4, 4), dtype=np.float32))


def test_bf16_bit_patterns_are_taken_when_asked():
    bits = np.full((4, 4), 0x3F80, dtype=np.uint16)  # 1.0
    prog = compile_gemm(TINY, bits, bits, bf16_bits=True)
    memory = prog.memory.copy()
    assert CoreModel(TINY).run(memory, prog.program_addr, prog.length).ok
    assert (read_c(prog, memory) == 4.0).all()
    with pytest.raises(TypeError, match="must be uint16 bit patterns"):
        compile_gemm(TINY, np.ones((4, 4), np.float32), bits, bf16_bits=True)


PATTERNS = [(1, 4), (2, 4), (1, 8), (2, 8), (4, 8)]


@pytest.mark.parametrize("n,m", PATTERNS)
@pytest.mark.parametrize("rows,k,cols", [(4, 8, 4), (9, 37, 13), (33, 100, 17), (8, 300, 40)])
def test_sparse_gemm_matches_torch_on_the_masked_weights(rows, k, cols, n, m):
    """C = (A ⊙ nm_mask(A)) · B with bf16 operands, against float64 torch; the program is race-free."""
    import torch

    from nmsat.dataflow.gemm import compile_sparse_gemm
    from nmsat.sw.bdwp import nm_mask

    rng = np.random.default_rng(rows * k + n * m)
    a = rng.standard_normal((rows, k)).astype(np.float32)
    b = rng.standard_normal((k, cols)).astype(np.float32)
    prog = compile_sparse_gemm(TINY, a, b, n, m)
    memory = prog.memory.copy()
    result = CoreModel(TINY).run_sequence(memory, prog.runs)
    assert result.ok and result.race_free
    mask = nm_mask(torch.from_numpy(a), n, m, dim=1).numpy()
    a16 = torch.from_numpy(a).bfloat16().double().numpy() * mask
    b16 = torch.from_numpy(b).bfloat16().double().numpy()
    bound = 1e-6 * (np.abs(a16) @ np.abs(b16)) * k + 1e-30  # fp32 accumulation error bound
    assert np.all(np.abs(read_c(prog, memory) - a16 @ b16) <= bound)


def test_sparse_gemm_is_faster_by_about_m_over_n_on_a_large_layer():
    """At the card preset, a 512x512x4608 GEMM: 4:8 at ≥ 95% of the ideal 2x (timing only; the full
    per-layer table is a benchmark)."""
    card = SATConfig.vcu1525()
    core = CoreModel(card)
    dense = core.time_programs(w for _, w in layout_gemm(card, 512, 512, 4608).programs)
    sparse = core.time_programs(w for _, w in layout_gemm(card, 512, 512, 4608, pattern=(4, 8)).programs)
    assert dense.ok and sparse.ok and dense.cycles / sparse.cycles >= 0.95 * 2


def test_sparse_plans_are_refused_for_patterns_the_core_lacks():
    with pytest.raises(ValueError, match="m = 16 is not supported"):
        plan_gemm(TINY, 4, 4, 64, pattern=(2, 16))
    with pytest.raises(ValueError, match="1 <= n <= m"):
        plan_gemm(TINY, 4, 4, 64, pattern=(5, 4))


def test_c_stored_row_major_lands_in_a_row_major_array():
    """``c_row_stride``: the WU GEMM's dW in the master weights' layout (rows of C contiguous, padded)."""
    from nmsat.dataflow.gemm import emit_gemm, pack_a, pack_b, plan_gemm
    from nmsat.hw.isa import Opcode, encode, to_bytes
    from nmsat.hw.numerics import f32_to_bf16_bits
    from nmsat.sim.core import CoreModel

    cfg = SATConfig.tiny()
    rng = np.random.default_rng(0)
    m, n, k = 7, 10, 9
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    plan = plan_gemm(cfg, m, n, k)
    stride = 4 * 16  # 16 fp32 per row: more than Nt·cols = 12
    a_packed, b_packed = pack_a(cfg, f32_to_bf16_bits(a)), pack_b(cfg, f32_to_bf16_bits(b))
    a_addr, b_addr, c_addr, prog_addr = 0x1000, 0x2000, 0x3000, 0x4000
    words = emit_gemm(cfg, plan, a_addr=a_addr, b_addr=b_addr, c_addr=c_addr, c_row_stride=stride) + \
        [encode(Opcode.FINISH)]
    memory = np.zeros(0x6000, dtype=np.uint8)
    memory[a_addr:a_addr + a_packed.nbytes] = a_packed.view(np.uint8).ravel()
    memory[b_addr:b_addr + b_packed.nbytes] = b_packed.view(np.uint8).ravel()
    memory[c_addr:c_addr + 8 * stride] = np.full(8 * stride, 0xFF, np.uint8)  # NaN where nothing is stored
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    memory[prog_addr:prog_addr + blob.size] = blob
    result = CoreModel(cfg).run(memory, prog_addr, len(words))
    assert result.ok and result.race_free
    c = memory[c_addr:c_addr + 8 * stride].view(np.float32).reshape(8, 16)
    ref = (f32_to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32).astype(np.float64) @ \
        (f32_to_bf16_bits(b).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    assert np.allclose(c[:m, :n], ref, rtol=1e-5, atol=1e-5)
    assert np.isnan(c[:, 12:]).all()  # past Nt·cols: untouched


@pytest.mark.parametrize("out_bf16", [False, True])
def test_relu_and_bf16_on_store_are_the_rule_applied_to_the_fp32_result(out_bf16):
    """``relu``: a set sign bit (negative, −0, −inf) stores +0; ``out_bf16``: then round to nearest even."""
    from nmsat.hw.numerics import f32_to_bf16_bits
    from nmsat.sim.core import CoreModel

    cfg = SATConfig.tiny()
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((9, 12)).astype(np.float32), rng.standard_normal((12, 7)).astype(np.float32)
    a[0] = 0.0  # a row of exact zeros: +0 results
    a[1, :] = -np.float32(1e30)  # overflow to ±inf
    plain = compile_gemm(cfg, a, b)
    fused = compile_gemm(cfg, a, b, relu=True, out_bf16=out_bf16)
    results = []
    for prog in (plain, fused):
        memory = prog.memory.copy()
        assert CoreModel(cfg).run_sequence(memory, prog.runs).ok
        results.append(read_c(prog, memory))
    c = results[0]
    expected = np.where(c.view(np.uint32) >> 31 != 0, np.float32(0), c)
    if out_bf16:
        expected = (f32_to_bf16_bits(expected).astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(results[1].view(np.uint32), expected.view(np.uint32))
    assert (results[1] >= 0).all() and (c < 0).any()
