"""Batch norm on the accelerator (``nmsat.dataflow.norm``): the channel sums and the affine walk on the simulator
against the numerics rule computed here (bit for bit), the whole forward and backward against torch's
``batch_norm`` (bf16 tolerance), the written NaN behaviour, and bad input."""

import dataclasses

import numpy as np
import pytest

from nmsat.dataflow import norm
from nmsat.hw.config import SATConfig
from nmsat.hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits
from nmsat.sim import numerics
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()


def run(program):
    memory = program.memory.copy()
    result = CoreModel(TINY).run_sequence(memory, list(program.runs))
    assert result.ok and result.race_free, (result.status, result.error, result.hazards[:3])
    return memory


def bits(rng, shape, scale=1.0, offset=0.0):
    return f32_to_bf16_bits((rng.standard_normal(shape) * scale + offset).astype(np.float32))


def hi_lo(v):
    hi = bf16_bits_to_f32(f32_to_bf16_bits(np.asarray(v, np.float32)))
    return [hi, bf16_bits_to_f32(f32_to_bf16_bits(v - hi))]


def affine_reference(program, terms, bias, relu):
    """The affine program by the rule, tile by tile of ``rows`` channels: the 1×1 walk over the tile's inputs
    stacked (a scaled term twice, weighted by its coefficient's hi and lo; the identity once), then two ones
    channels weighted by the bias's hi and lo; per pixel and channel block of ``cb`` inputs the products in
    channel order (``mac_sequence``), the blocks added in order, stored bf16 (ReLU first if asked)."""
    R = TINY.rows
    n, c, h, w = terms[0][0].shape
    out = []
    for i, plan in enumerate(program.plans):
        chans = slice(i * R, (i + 1) * R)
        pad = lambda a: np.concatenate([a, np.zeros(a.shape[:1] + (R - a.shape[1],) + a.shape[2:], a.dtype)], 1)
        stacked, columns = [], []
        for bits, s in terms:
            if s is None:
                stacked.append(pad(bits[:, chans]))
                columns.append(np.diag((np.arange(R) + i * R < c).astype(np.float32)))
            else:
                sv = np.zeros(R, np.float32)
                sv[:len(s[chans])] = s[chans]
                for part in hi_lo(sv):
                    stacked.append(pad(bits[:, chans]))
                    columns.append(np.diag(part))
        bv = np.zeros(R, np.float32)
        bv[:len(bias[chans])] = bias[chans]
        stacked.append(np.full((n, 2, h, w), 0x3F80, np.uint16))
        columns += [part[:, None] for part in hi_lo(bv)]
        x = np.concatenate(stacked, axis=1)
        a = f32_to_bf16_bits(np.concatenate(columns, axis=1).T)  # [K, R]
        k, cb = x.shape[1], plan.src.cb
        b = x.transpose(2, 3, 1, 0).reshape(h * w, k, n)  # [P, K, N]
        acc = None
        for k0 in range(0, k, cb):
            part = numerics.mac_sequence(np.broadcast_to(a[k0:k0 + cb], (h * w,) + a[k0:k0 + cb].shape),
                                         b[:, k0:k0 + cb])
            acc = part if acc is None else numerics.add_f32(acc, part)
        if relu:
            acc = np.where(acc > 0, acc, np.float32(0)).astype(np.float32)
        out.append(f32_to_bf16_bits(acc).reshape(h, w, R, n).transpose(3, 2, 0, 1))
    return np.concatenate(out, axis=1)[:, :c]


SHAPES = [(5, 8, 6, 5), (4, 4, 3, 3), (2, 12, 4, 4), (9, 3, 2, 7), (1, 8, 8, 6)]  # (2, …) and (1, …) fold rows into lanes


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_sums_are_the_sums(shape):
    rng = np.random.default_rng(sum(shape))
    d, y = bits(rng, shape), bits(rng, shape, 2.0, 0.5)
    sums = norm.compile_channel_sums(TINY, d, y)
    s_dy, s_d = sums.read(run(sums))
    df, yf = bf16_bits_to_f32(d).astype(np.float64), bf16_bits_to_f32(y).astype(np.float64)
    exact_dy, exact_d = (df * yf).sum(axis=(0, 2, 3)), df.sum(axis=(0, 2, 3))
    m = shape[0] * shape[2] * shape[3]
    # fp32 sums of exact products: at most one rounding per term
    assert np.all(np.abs(s_dy - exact_dy) <= m * 2 ** -23 * np.abs(df * yf).sum(axis=(0, 2, 3)))
    assert np.all(np.abs(s_d - exact_d) <= m * 2 ** -23 * np.abs(df).sum(axis=(0, 2, 3)))
    assert s_dy.dtype == np.float32 and s_d.shape == (shape[1],)


@pytest.mark.parametrize("relu,residual,channels,batch", [(False, False, 8, 5), (True, False, 6, 5), (True, True, 8, 5),
                                                          (False, True, 3, 5), (True, True, 6, 1)])  # 1: folded
def test_the_affine_walk_is_the_rule_bit_for_bit(relu, residual, channels, batch):
    rng = np.random.default_rng(3 + channels)
    shape = (batch, channels, 4, 3)
    y, r = bits(rng, shape), bits(rng, shape)
    scale, bias = (rng.standard_normal(channels).astype(np.float32) for _ in range(2))
    terms = [(y, scale)] + ([(r, None)] if residual else [])
    prog = norm.compile_channel_affine(TINY, terms, bias, relu=relu)
    out = prog.read(run(prog))
    assert out.shape == shape
    assert np.array_equal(out, affine_reference(prog, terms, bias, relu))


def test_rows_fold_into_the_lanes_when_the_batch_leaves_them_idle():
    assert [norm.lane_fold(TINY, n, h) for n, h in ((4, 6), (2, 4), (1, 8), (1, 6), (3, 5))] == [1, 2, 4, 6, 5]
    big = SATConfig.vcu1525()
    assert norm.lane_fold(big, 32, 32) == 1 and norm.lane_fold(big, 8, 112) == 4 and norm.lane_fold(big, 8, 7) == 7
    # a batch of 8 at vcu1525 runs its norms on full lanes: fewer cycles than four times a batch of 32's quarter
    core = CoreModel(big)
    cycles = {n: sum(core.time_programs(p).cycles for p in norm.norm_programs(big, n, 32, 16, 16).values())
              for n in (8, 32)}
    assert cycles[8] < 0.4 * cycles[32]


def test_split_bf16_is_two_bf16_values_summing_to_the_fp32():
    v = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 10.0 ** np.arange(-3, 7).repeat(100)
    hi, lo = norm.split_bf16(v)
    for part in (hi, lo):
        assert np.array_equal(bf16_bits_to_f32(f32_to_bf16_bits(part)), part)
    assert np.all(np.abs((hi.astype(np.float64) + lo) - v) <= 2 ** -16 * np.abs(v))


def bn_on_core(y, relu=False, residual=None):
    sums = norm.compile_channel_sums(TINY, y, y)
    coef = norm.bn_coefficients(*sums.read(run(sums)), y.shape[0] * y.shape[2] * y.shape[3])
    prog = norm.compile_channel_affine(TINY, [(y, coef.rstd)] + ([(residual, None)] if residual is not None else []),
                                       coef.shift, relu=relu)
    return prog.read(run(prog)), coef


def bn_grad_on_core(dout, y, coef):
    sums = norm.compile_channel_sums(TINY, dout, y)
    a, b, c = norm.bn_grad_coefficients(coef, *sums.read(run(sums)))
    prog = norm.compile_channel_affine(TINY, [(dout, a), (y, b)], c)
    return prog.read(run(prog))


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_are_torchs_batch_norm(shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10 + sum(shape))
    y, dout = bits(rng, shape, 3.0, 1.5), bits(rng, shape)
    yt = torch.tensor(bf16_bits_to_f32(y).copy(), requires_grad=True)
    ref = torch.nn.functional.batch_norm(yt, None, None, training=True, eps=norm.EPS)
    ref.backward(torch.tensor(bf16_bits_to_f32(dout).copy()))
    out, coef = bn_on_core(y)
    ref = ref.detach().numpy()
    assert np.abs(bf16_bits_to_f32(out) - ref).max() <= 2 ** -8 * np.abs(ref).max()
    assert np.allclose(coef.mean, yt.detach().numpy().mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    dx, grad = bf16_bits_to_f32(bn_grad_on_core(dout, y, coef)), yt.grad.numpy()
    assert np.linalg.norm(dx - grad) <= 2 ** -7 * np.linalg.norm(grad)


def test_relu_of_bn_plus_a_residual_is_one_walk():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    y, r = bits(rng, (4, 8, 5, 5), 2.0, -1.0), bits(rng, (4, 8, 5, 5))
    out, _ = bn_on_core(y, relu=True, residual=r)
    ref = torch.relu(torch.nn.functional.batch_norm(torch.tensor(bf16_bits_to_f32(y).copy()), None, None,
                                                    training=True, eps=norm.EPS) + torch.tensor(bf16_bits_to_f32(r)))
    ref = ref.numpy()
    assert np.abs(bf16_bits_to_f32(out) - ref).max() <= 2 ** -7 * np.abs(ref).max()
    assert (bf16_bits_to_f32(out) >= 0).all()


def test_a_nan_input_poisons_its_channel_and_its_pixel_as_written():
    """The rule: a NaN makes its channel's statistics NaN (every value of that channel), and at its pixel the
    other channels' zero weights multiply it (0 × NaN = NaN, rule 4)."""
    rng = np.random.default_rng(5)
    y = bits(rng, (4, 4, 3, 3))
    y[1, 2, 0, 1] = 0x7FC0
    out = bf16_bits_to_f32(bn_on_core(y)[0])
    expected = np.zeros(out.shape, bool)
    expected[:, 2] = True
    expected[1, :, 0, 1] = True
    assert np.array_equal(np.isnan(out), expected)


def test_an_infinite_input_or_an_overflowing_sum_makes_its_channel_nan():
    s2, s1 = np.array([4.0, np.inf, 1.0], np.float32), np.array([2.0, 1.0, np.nan], np.float32)
    coef = norm.bn_coefficients(s2, s1, 4)
    assert np.isfinite(coef.rstd[0]) and np.isnan(coef.rstd[1:]).all() and np.isnan(coef.shift[1:]).all()
    hi, lo = norm.split_bf16(np.array([3.4e38, -3.4e38, np.inf, 1.0], np.float32))
    assert np.isinf(hi[:3]).all() and (lo[:3] == 0).all() and hi[3] == 1.0


def test_bad_input_is_a_clear_error():
    y = np.zeros((2, 4, 3, 3), np.uint16)
    with pytest.raises(ValueError, match="bf16 bits"):
        norm.compile_channel_sums(TINY, y.astype(np.float32), y)
    with pytest.raises(ValueError, match="differ in shape"):
        norm.compile_channel_sums(TINY, y, y[:, :2])
    with pytest.raises(ValueError, match="rows == cols"):
        norm.compile_channel_sums(dataclasses.replace(TINY, cols=8, b_depth=512), y, y)
    with pytest.raises(ValueError, match="positive integer"):
        norm.bn_coefficients(np.ones(4, np.float32), np.ones(4, np.float32), 0)
    with pytest.raises(ValueError, match="at least one term"):
        norm.compile_channel_affine(TINY, [], np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"scalar or \[4\]"):
        norm.compile_channel_affine(TINY, [(y, np.ones(3, np.float32))], np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="differ in shape"):
        norm.compile_channel_affine(TINY, [(y, None), (y[:1], None)], 0.0)


@pytest.mark.parametrize("shape,residual", [((5, 8, 6, 5), False), ((4, 6, 3, 3), True), ((1, 6, 8, 3), False)])
def test_the_programs_timed_without_data_take_the_compiled_programs_cycles(shape, residual):
    """``norm_programs`` (what ``nmsat.sw.iteration`` times) is the norm as compiled, cycle for cycle."""
    rng = np.random.default_rng(6)
    y, r, dout = bits(rng, shape), bits(rng, shape), bits(rng, shape)
    coef = np.ones(shape[1], np.float32)

    def cycles(programs):
        total = 0
        for prog in programs:
            result = CoreModel(TINY).run_sequence(prog.memory.copy(), list(prog.runs))
            assert result.ok
            total += result.cycles
        return total
    forward = [norm.compile_channel_sums(TINY, y, y),
               norm.compile_channel_affine(TINY, [(y, coef)] + ([(r, None)] if residual else []), coef, relu=True)]
    backward = [norm.compile_channel_sums(TINY, dout, y), norm.compile_channel_affine(TINY, [(dout, coef), (y, coef)], coef)]
    timed = norm.norm_programs(TINY, *shape, residual=residual)
    core = CoreModel(TINY)
    assert core.time_programs(timed["forward"]).cycles == cycles(forward)
    assert core.time_programs(timed["backward"]).cycles == cycles(backward)
