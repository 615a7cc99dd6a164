"""Interleave mapping (``nmsat.dataflow.interleave``): a convolution's BP and WU in one stream give the bytes
of the two run apart (same plans), race-free; dX is the BP walk's own; the token placement is what keeps it
race-free; a memory-bound BP hides under its WU at the vcu1525 preset; bad input."""

import dataclasses

import numpy as np
import pytest

from nmsat.dataflow import conv, interleave as il
from nmsat.dataflow.models import build_model
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Opcode, decode_program, to_bytes
from nmsat.hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits
from nmsat.sim.core import CoreModel
from nmsat.sw.iteration import Timer, time_iteration

TINY = SATConfig.tiny()

#: (batch, cin, cout, size, kernel, stride, padding, pattern) that fit a stream's share of the tiny buffers
SHAPES = [(4, 4, 8, 5, 3, 1, 1, None), (3, 4, 8, 6, 3, 2, 1, None), (4, 8, 16, 4, 1, 1, 0, (2, 8)),
          (4, 16, 8, 6, 1, 2, 0, (2, 8)), (5, 8, 8, 3, 1, 1, 0, (1, 4))]


def operands(shape, seed):
    n, cin, cout, hw, k, s, p, _ = shape
    rng = np.random.default_rng(seed)
    w = bf16_bits_to_f32(f32_to_bf16_bits(rng.standard_normal((cout, cin, k, k)).astype(np.float32)))
    ho = (hw + 2 * p - k) // s + 1
    dy = f32_to_bf16_bits(rng.standard_normal((n, cout, ho, ho)).astype(np.float32))
    x = f32_to_bf16_bits(rng.standard_normal((n, cin, hw, hw)).astype(np.float32))
    return w, dy, x


def run(prog, cfg=TINY):
    memory = prog.memory.copy()
    result = CoreModel(cfg).run_sequence(memory, prog.runs)
    assert result.ok and result.race_free, (result.status, result.error, result.hazards[:3])
    return result, prog.read_dx(memory), prog.read_grad(memory)


@pytest.mark.parametrize("shape", SHAPES)
def test_interleaved_backward_gives_the_bytes_of_bp_and_wu_run_apart(shape):
    w, dy, x = operands(shape, seed=sum(shape[:7]))
    kw = dict(stride=shape[5], padding=shape[6], pattern=shape[7])
    merged = il.compile_backward(TINY, w, dy, x, interleaved=True, **kw)
    apart = il.compile_backward(TINY, w, dy, x, interleaved=False, streams=il.STREAMS, **kw)
    assert len(merged.runs) == 1 and len(apart.runs) >= 2
    _, dx_m, g_m = run(merged)
    _, dx_a, g_a = run(apart)
    assert np.array_equal(dx_m, dx_a) and np.array_equal(g_m, g_a)
    assert np.abs(g_m).sum() > 0 and np.count_nonzero(dx_m)
    # dX is the BP walk's (the order of its sums does not depend on the tiles) ...
    bp = conv.compile_walks(TINY, conv.bp_walks(w, shape[3], shape[3], shape[5], shape[6], 1), merged.bp_plans[0].src,
                            dy, merged.dx, shape[7])
    memory = bp.memory.copy()
    assert CoreModel(TINY).run_sequence(memory, bp.runs).ok
    assert np.array_equal(dx_m, bp.read_output(memory))
    # ... and dW the WU walk's up to the order of its fp32 sums over pixels
    wu = conv.compile_wu(TINY, dy, x, shape[4], shape[5], shape[6])
    memory = wu.memory.copy()
    assert CoreModel(TINY).run_sequence(memory, wu.runs).ok
    np.testing.assert_allclose(g_m, wu.read_grad(memory), rtol=1e-4, atol=1e-4)


def test_interleaving_alternates_the_two_streams_steps():
    """The program really is one stream: BP's SPARSE_GEMMs and WU's GEMMs alternate, not one after the other."""
    w, dy, x = operands(SHAPES[2], seed=1)
    prog = il.compile_backward(TINY, w, dy, x, stride=1, padding=0, pattern=(2, 8))
    ops = decode_program(to_bytes(prog.run_words[0]))["opcode"]
    kinds = [op for op in ops if op in (Opcode.GEMM.value, Opcode.SPARSE_GEMM.value)]
    switches = sum(a != b for a, b in zip(kinds, kinds[1:]))
    assert switches > len(kinds) // 8


def test_the_placed_waits_are_what_keeps_the_stream_race_free(monkeypatch):
    """Without the LOADs' waits for a buffer half the simulator's hazard check finds LOADs overwriting a half
    while GEMMs still read it: the waits are needed, not decoration."""
    real = il._waits

    def without(users, done_at, what):
        waits, pushers = real(users, done_at, what)
        return (set(), pushers) if what == "a buffer half" else (waits, pushers)

    monkeypatch.setattr(il, "_waits", without)
    w, dy, x = operands(SHAPES[0], seed=2)
    prog = il.compile_backward(TINY, w, dy, x, stride=1, padding=1)
    memory = prog.memory.copy()
    result = CoreModel(TINY).run_sequence(memory, prog.runs)
    assert not result.race_free or not result.ok


def test_a_wait_covered_by_a_later_one_is_dropped():
    """The token rule for regions used in turn: item t waits for users[t] unless an earlier item already waited
    for a later user (the units run in order); only the users waited for push; an answer issued after its wait
    is refused."""
    waits, pushers = il._waits([None, None, 0, 1, 0, 3, 2], list(range(7)), "x")
    assert waits == {2, 3, 5} and pushers == {0, 1, 3}
    with pytest.raises(ValueError, match="before its answer"):
        il._waits([None, 1], [0, 9], "x")


def test_work_planned_for_the_whole_buffers_is_refused():
    w, dy, x = operands(SHAPES[0], seed=3)
    plans = conv.plan_conv(TINY, 4, 4, 8, 5, 3, 1, 1, "BP", weight=w)
    blocks = conv.walk_blocks(TINY, plans[0], a_addr=0x10000, src_addr=0, dst_addr=0x20000)
    with pytest.raises(ValueError, match="streams=STREAMS"):
        il.interleave(TINY, blocks, blocks)
    with pytest.raises(ValueError, match="both streams"):
        il.interleave(TINY, blocks, [])
    with pytest.raises(ValueError, match="dY is"):
        il.compile_backward(TINY, w, dy[:, :, :2], x, stride=1, padding=1)


def test_a_memory_bound_sparse_bp_hides_under_its_wu():
    """ResNet-50's layer1.0.conv3 (1×1, 64 → 256 at 56²): its 2:8 BP walk loads four dY words per cycle of MACs;
    interleaved with its WU walk the pair takes fewer cycles than the two apart, and the iteration timer keeps
    it; with interleaving off nothing is saved."""
    cfg = SATConfig.vcu1525()
    layer = next(x for x in build_model("resnet50", 32) if x.name == "layer1.0.conv3")
    on = time_iteration(cfg, [layer], (2, 8), pregeneration=False).layers[0]
    off = time_iteration(cfg, [layer], (2, 8), pregeneration=False, interleave=False).layers[0]
    assert off.interleave_saved == 0 and (on.bp, on.wu) == (off.bp, off.wu)
    assert on.interleave_saved > 0.05 * (off.bp + off.wu) and on.gemm == off.gemm - on.interleave_saved
    timer = Timer(cfg, CoreModel(cfg))
    bp, wu = (next(g for g in layer.gemms if g.stage == s) for s in ("BP", "WU"))
    together = timer.interleaved(layer, bp, wu, (2, 8))
    assert together >= (bp.macs * 2 / 8 + wu.macs) / (cfg.rows * cfg.cols)  # no faster than its MACs allow


def test_a_frame_too_long_for_one_program_is_cut_and_a_block_too_long_is_refused():
    """18 BP blocks share one WU block: with a small instruction memory the frame keeps the BP blocks that fit
    and the rest run alone, in as many programs as needed, still ≡ apart; a WU block longer than the memory
    is an error (the iteration timer then keeps BP and WU apart)."""
    w, dy, x = operands(SHAPES[4], seed=4)
    cfg = dataclasses.replace(TINY, imem_depth=200)
    kw = dict(stride=1, padding=0, pattern=(1, 4))
    merged = il.compile_backward(cfg, w, dy, x, interleaved=True, **kw)
    assert len(merged.runs) > 1 and all(length <= 200 for _, length in merged.runs)
    apart = il.compile_backward(cfg, w, dy, x, interleaved=False, streams=il.STREAMS, **kw)
    _, dx_m, g_m = run(merged, cfg)
    _, dx_a, g_a = run(apart, cfg)
    assert np.array_equal(dx_m, dx_a) and np.array_equal(g_m, g_a)
    with pytest.raises(ValueError, match="does not fit"):
        il.compile_backward(dataclasses.replace(TINY, imem_depth=40), w, dy, x, interleaved=True, **kw)
