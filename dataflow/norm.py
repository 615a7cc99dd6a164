"""Batch normalisation on the accelerator (training mode, no affine parameters): the batch statistics and the
normalisation as convolution walks, the per-channel coefficients by one written fp32 rule.

A batch norm of ``y [N, C, H, W]`` (bf16, a convolution's output) over its ``M = N·H·W`` values per channel:

1. **Channel sums** (:func:`compile_channel_sums`): a WU walk of a 1×1 convolution with ``dY = d`` and
   ``X = [y; 1]`` reduces over batch and pixels in the fp32 accumulators: ``dW[c, c] = Σ d·y`` and
   ``dW[c, ones] = Σ d`` (products of bf16 are exact, rule 2 of :mod:`nmsat.hw.numerics`).  Forward:
   ``d = y`` (``Σ y²``, ``Σ y``); backward: ``d`` the output gradient (``Σ dout·y``, ``Σ dout``).
2. **Coefficients** (:func:`bn_coefficients`, :func:`bn_grad_coefficients`): O(C) fp32 arithmetic on the
   host between the programs, IEEE binary32 round-to-nearest, one operation at a time in the order written
   there (numpy float32).  The variance is ``E[y²] − mean²`` (clamped at 0): one pass, so it loses accuracy
   when a channel's mean is large against its spread.
3. **Apply** (:func:`compile_channel_affine`): ``out[c] = Σ_t s_t[c]·x_t[c] + b[c]`` as a 1×1 FF walk over
   the stacked inputs and two constant-one channels, weights the diagonals of the coefficients; each fp32
   coefficient is the sum of two bf16 weights (:func:`split_bf16`: ``hi = bf16(v)``, ``lo = bf16(v − hi)``,
   relative error ≤ 2⁻¹⁶), so each of its inputs is read twice.  The sum is fp32 (rule 5), stored bf16, ReLU
   fused when asked.  Forward: ``x̂ = rstd·y + (−mean·rstd)``; the residual block's ``relu(bn(y) + r)`` is
   one apply with ``r`` a term of coefficient 1.  Backward (torch's formula rearranged so it reads ``y``,
   not ``x̂``): ``dx = a·dout + b·y + c``.

Host work left here, named: the stacking of the inputs with the ones channels (a copy per apply, like every
move between programs) and the O(C) coefficients.  Not here: where the norms sit in a network
(``nmsat.sw.cnn_step``), or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.config import SATConfig
from ..hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits, flush_f32
from . import conv

__all__ = ["EPS", "split_bf16", "ChannelSums", "compile_channel_sums", "BnCoefficients", "bn_coefficients",
           "bn_grad_coefficients", "affine_weights", "compile_channel_affine"]

#: torch's default ``BatchNorm2d`` eps
EPS = 1e-5


def split_bf16(v) -> tuple[np.ndarray, np.ndarray]:
    """fp32 ``v`` as ``hi + lo``, both bf16 values (as fp32): ``hi = bf16(v)``, ``lo = bf16(v − hi)`` (flushed
    as the core flushes a subnormal operand)."""
    v = np.asarray(v, np.float32)
    hi = bf16_bits_to_f32(f32_to_bf16_bits(v))
    with np.errstate(invalid="ignore"):
        rest = np.where(np.isfinite(v), v - hi, np.float32(0)).astype(np.float32)
    return hi, flush_f32(bf16_bits_to_f32(f32_to_bf16_bits(rest)))


def _check_act(name: str, bits: np.ndarray) -> None:
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16 or bits.ndim != 4:
        raise ValueError(f"batch norm: {name} must be bf16 bits (uint16) [N, C, H, W], got "
                         f"{getattr(bits, 'dtype', type(bits).__name__)} {getattr(bits, 'shape', '')}")


def _with_ones(cfg: SATConfig, bits: np.ndarray) -> np.ndarray:
    """``bits`` padded to whole ``cols`` tiles of channels, then a tile whose first channel is all ones."""
    n, c, h, w = bits.shape
    width = -(-c // cfg.cols) * cfg.cols
    out = np.zeros((n, width + cfg.cols, h, w), np.uint16)
    out[:, :c] = bits
    out[:, width] = f32_to_bf16_bits(np.float32(1.0))
    return out


@dataclass
class ChannelSums:
    """The channel-sums program (a WU walk) and where its two sums are in its result."""

    program: conv.WuProgram
    channels: int
    ones: int  # the column of the ones channel

    def read(self, memory: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(``Σ d·y``, ``Σ d``) per channel, fp32 ``[C]``."""
        g = self.program.read_grad(memory)
        c = np.arange(self.channels)
        return g[c, c].copy(), g[c, self.ones].copy()


def compile_channel_sums(cfg: SATConfig, d_bits: np.ndarray, y_bits: np.ndarray) -> ChannelSums:
    """Σ over batch and pixels of ``d·y`` and of ``d`` per channel (bf16 ``[N, C, H, W]`` both), one WU walk."""
    _check_act("d", d_bits)
    _check_act("y", y_bits)
    if d_bits.shape != y_bits.shape:
        raise ValueError(f"batch norm: the two inputs differ in shape ({d_bits.shape} vs {y_bits.shape})")
    if cfg.rows != cfg.cols:
        raise ValueError(f"config {cfg.name}: channel sums run as a WU walk, which needs rows == cols")
    x = _with_ones(cfg, y_bits)
    return ChannelSums(conv.compile_wu(cfg, d_bits, x, 1), d_bits.shape[1], -(-d_bits.shape[1] // cfg.cols) * cfg.cols)


@dataclass(frozen=True)
class BnCoefficients:
    """A forward batch norm's fp32 per-channel numbers: ``x̂ = rstd·y + shift``."""

    count: int  # M, values per channel
    mean: np.ndarray
    rstd: np.ndarray
    shift: np.ndarray


def _count(count: int) -> np.float32:
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"batch norm: the values per channel must be a positive integer, got {count!r}")
    return np.float32(1.0 / count)


def bn_coefficients(sum_sq: np.ndarray, sums: np.ndarray, count: int, eps: float = EPS) -> BnCoefficients:
    """The forward rule, fp32 one operation at a time: ``inv = fp32(1/M)``, ``mean = Σy·inv``,
    ``var = max(Σy²·inv − mean·mean, 0)``, ``rstd = 1 / sqrt(var + eps)``, ``shift = −(mean·rstd)``.
    NaN or ±inf sums give NaN or ±inf coefficients (IEEE), which the walks carry into the outputs."""
    f = np.float32
    inv = _count(count)
    s2, s1 = np.asarray(sum_sq, f), np.asarray(sums, f)
    with np.errstate(all="ignore"):
        mean = f(s1 * inv)
        var = np.maximum(f(f(s2 * inv) - f(mean * mean)), f(0))
        rstd = f(f(1) / np.sqrt(f(var + f(eps))))
        shift = f(-f(mean * rstd))
    return BnCoefficients(count, mean.astype(f), rstd.astype(f), shift.astype(f))


def bn_grad_coefficients(fwd: BnCoefficients, sum_dy: np.ndarray, sum_d: np.ndarray):
    """The backward rule, ``dx = a·dout + b·y + c`` (torch's ``rstd·(dout − mean(dout) − x̂·mean(dout·x̂))``
    with ``x̂ = rstd·(y − mean)``), fp32 one operation at a time: ``t = Σdout·y − mean·Σdout``,
    ``a = rstd``, ``b = −(((rstd·rstd)·rstd)·t)·inv``, ``c = −((rstd·Σdout)·inv) − b·mean``."""
    f = np.float32
    inv = _count(fwd.count)
    sdy, sd = np.asarray(sum_dy, f), np.asarray(sum_d, f)
    with np.errstate(all="ignore"):
        t = f(sdy - f(fwd.mean * sd))
        b = f(-f(f(f(f(fwd.rstd * fwd.rstd) * fwd.rstd) * t) * inv))
        c = f(f(-f(f(fwd.rstd * sd) * inv)) - f(b * fwd.mean))
    return fwd.rstd.copy(), b.astype(f), c.astype(f)


def affine_weights(channels: int, scales: list, bias: np.ndarray) -> np.ndarray:
    """The 1×1 weights ``[C, K, 1, 1]`` (fp32 of bf16 values) of :func:`compile_channel_affine`: per term a
    diagonal (coefficient ``None``: the identity) or two (``hi``, ``lo``), then the bias's ``hi`` and ``lo`` on
    the two ones channels."""
    c = np.arange(channels)
    blocks = [np.eye(channels, dtype=np.float32)[None] if s is None else
              np.stack([np.diag(part) for part in split_bf16(np.broadcast_to(s, (channels,)))]) for s in scales]
    diag = np.concatenate(blocks)  # [copies, C, C]
    w = np.zeros((channels, len(diag) * channels + 2, 1, 1), np.float32)
    for i, block in enumerate(diag):
        w[:, i * channels:(i + 1) * channels, 0, 0] = block
    hi, lo = split_bf16(np.broadcast_to(np.asarray(bias, np.float32), (channels,)))
    w[c, -2, 0, 0], w[c, -1, 0, 0] = hi, lo
    return w


def compile_channel_affine(cfg: SATConfig, terms: list[tuple[np.ndarray, np.ndarray | None]], bias: np.ndarray, *,
                           relu: bool = False) -> conv.ConvProgram:
    """``out[n, c] = Σ_t s_t[c]·x_t[n, c] + bias[c]`` (``terms`` of bf16 ``x_t [N, C, H, W]`` and fp32
    ``s_t [C]``, ``None`` for 1) as one 1×1 walk; ``relu``: ReLU in the STOREs.  Output bf16 ``[N, C, H, W]``."""
    if not terms:
        raise ValueError("batch norm: an affine combination needs at least one term")
    for i, (bits, _) in enumerate(terms):
        _check_act(f"term {i}", bits)
    shape = terms[0][0].shape
    if any(bits.shape != shape for bits, _ in terms):
        raise ValueError(f"batch norm: the terms differ in shape ({[b.shape for b, _ in terms]})")
    n, c, h, w = shape
    for s in [s for _, s in terms if s is not None] + [bias]:
        if np.shape(s) not in ((), (c,)):
            raise ValueError(f"batch norm: a coefficient must be a scalar or [{c}], got shape {np.shape(s)}")
    weights = affine_weights(c, [s for _, s in terms], bias)
    stack = [bits for bits, s in terms for _ in range(1 if s is None else 2)]
    ones = np.broadcast_to(f32_to_bf16_bits(np.float32(1.0)), (n, 2, h, w))
    x = np.concatenate(stack + [ones], axis=1)
    plan, = conv.plan_conv(cfg, n, x.shape[1], c, (h, w), 1, weight=weights)
    return conv.compile_walks(cfg, [plan.walk], plan.src, x, plan.dst, None, relu=relu)
