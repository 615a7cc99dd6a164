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


def affine_reference(program, stacked_bits, weights, relu):
    """A 1×1 walk by the rule: per pixel and channel block of ``cb`` inputs, the products in channel order
    (``mac_sequence``), the blocks added in order, stored bf16 (ReLU first if asked)."""
    plan = program.plans[0]
    n, k, h, w = stacked_bits.shape
    cb = plan.src.cb
    a = f32_to_bf16_bits(weights[:, :, 0, 0].T)  # [K, C]
    b = stacked_bits.transpose(2, 3, 1, 0).reshape(h * w, k, n)  # [P, K, N]
    acc = None
    for k0 in range(0, k, cb):
        part = numerics.mac_sequence(np.broadcast_to(a[k0:k0 + cb], (h * w,) + a[k0:k0 + cb].shape), b[:, k0:k0 + cb])
        acc = part if acc is None else numerics.add_f32(acc, part)
    if relu:
        acc = np.where(acc > 0, acc, np.float32(0)).astype(np.float32)
    return f32_to_bf16_bits(acc).reshape(h, w, -1, n).transpose(3, 2, 0, 1)


SHAPES = [(5, 8, 6, 5), (4, 4, 3, 3), (2, 12, 4, 4), (9, 3, 2, 7)]


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_sums_are_the_sums(shape):
    rng = np.random.default_rng(sum(shape))
    d, y = bits(rng, shape), bits(rng, shape, 2.0, 0.5)
    sums = norm.compile_channel_sums(TINY, d, y)
    s_dy, s_d = sums.read(run(sums.program))
    df, yf = bf16_bits_to_f32(d).astype(np.float64), bf16_bits_to_f32(y).astype(np.float64)
    exact_dy, exact_d = (df * yf).sum(axis=(0, 2, 3)), df.sum(axis=(0, 2, 3))
    m = shape[0] * shape[2] * shape[3]
    # fp32 sums of exact products: at most one rounding per term
    assert np.all(np.abs(s_dy - exact_dy) <= m * 2 ** -23 * np.abs(df * yf).sum(axis=(0, 2, 3)))
    assert np.all(np.abs(s_d - exact_d) <= m * 2 ** -23 * np.abs(df).sum(axis=(0, 2, 3)))
    assert s_dy.dtype == np.float32 and s_d.shape == (shape[1],)


@pytest.mark.parametrize("relu,residual", [(False, False), (True, False), (True, True)])
def test_the_affine_walk_is_the_rule_bit_for_bit(relu, residual):
    rng = np.random.default_rng(3)
    shape = (5, 8, 4, 3)
    y, r = bits(rng, shape), bits(rng, shape)
    scale, bias = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    terms = [(y, scale)] + ([(r, None)] if residual else [])
    prog = norm.compile_channel_affine(TINY, terms, bias, relu=relu)
    out = prog.read_output(run(prog))
    stacked = np.concatenate([y, y] + ([r] if residual else []) + [np.full((5, 2, 4, 3), 0x3F80, np.uint16)], axis=1)
    def hi_lo(v):
        hi = bf16_bits_to_f32(f32_to_bf16_bits(v))
        return [hi, bf16_bits_to_f32(f32_to_bf16_bits(v - hi))]
    columns = [np.diag(part) for part in hi_lo(scale)] + ([np.eye(8, dtype=np.float32)] if residual else [])
    columns += [part[:, None] for part in hi_lo(bias)]  # the two ones channels
    weights = np.concatenate(columns, axis=1)[:, :, None, None]
    assert np.array_equal(out, affine_reference(prog, stacked, weights, relu))


def test_split_bf16_is_two_bf16_values_summing_to_the_fp32():
    v = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 10.0 ** np.arange(-3, 7).repeat(100)
    hi, lo = norm.split_bf16(v)
    for part in (hi, lo):
        assert np.array_equal(bf16_bits_to_f32(f32_to_bf16_bits(part)), part)
    assert np.all(np.abs((hi.astype(np.float64) + lo) - v) <= 2 ** -16 * np.abs(v))


def bn_on_core(y, relu=False, residual=None):
    sums = norm.compile_channel_sums(TINY, y, y)
    coef = norm.bn_coefficients(*sums.read(run(sums.program)), y.shape[0] * y.shape[2] * y.shape[3])
    prog = norm.compile_channel_affine(TINY, [(y, coef.rstd)] + ([(residual, None)] if residual is not None else []),
                                       coef.shift, relu=relu)
    return prog.read_output(run(prog)), coef


def bn_grad_on_core(dout, y, coef):
    sums = norm.compile_channel_sums(TINY, dout, y)
    a, b, c = norm.bn_grad_coefficients(coef, *sums.read(run(sums.program)))
    prog = norm.compile_channel_affine(TINY, [(dout, a), (y, b)], c)
    return prog.read_output(run(prog))


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
