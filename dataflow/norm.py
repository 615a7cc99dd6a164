"""Batch normalisation on the accelerator (training mode, no affine parameters): the batch statistics and the
normalisation as convolution walks, the per-channel coefficients by one written fp32 rule.

A batch norm of ``y [N, C, H, W]`` (bf16, a convolution's output) over its ``M = N·H·W`` values per channel,
tile by tile of ``rows`` channels (a tile reads only its own channels: no walk multiplies by the zeros off a
diagonal tile):

1. **Channel sums** (:func:`compile_channel_sums`): per tile a 1×1 WU walk with ``dY`` the tile of ``d`` and
   ``X`` the tile of ``y`` then a tile whose first channel is ones reduces over batch and pixels in the fp32
   accumulators: ``dW[c, c] = Σ d·y`` and ``dW[c, ones] = Σ d`` (products of bf16 are exact, rule 2 of
   :mod:`nmsat.hw.numerics`).  Forward: ``d = y`` (``Σ y²``, ``Σ y``); backward: ``d`` the output gradient
   (``Σ dout·y``, ``Σ dout``).
2. **Coefficients** (:func:`bn_coefficients`, :func:`bn_grad_coefficients`): O(C) fp32 arithmetic on the
   host between the programs, IEEE binary32 round-to-nearest, one operation at a time in the order written
   there (numpy float32).  The variance is ``E[y²] − mean²`` (clamped at 0): one pass, so it loses accuracy
   when a channel's mean is large against its spread.
3. **Apply** (:func:`compile_channel_affine`): ``out[c] = Σ_t s_t[c]·x_t[c] + b[c]``, per tile a 1×1 FF walk
   over the tile's inputs stacked and two constant-one channels, weights the coefficients' diagonals; each
   fp32 coefficient is the sum of two bf16 weights (:func:`split_bf16`: ``hi = bf16(v)``, ``lo = bf16(v − hi)``,
   relative error ≤ 2⁻¹⁶), so each scaled input is read twice.  The sum is fp32 (rule 5), stored bf16, ReLU
   fused when asked.  Forward: ``x̂ = rstd·y + (−mean·rstd)``; the residual block's ``relu(bn(y) + r)`` is one
   apply with ``r`` a term of coefficient 1.  Backward (torch's formula rearranged so it reads ``y``, not
   ``x̂``): ``dx = a·dout + b·y + c``.

A walk's lanes are the batch; below ``cols`` samples the norms fold rows of pixels into it
(:func:`lane_fold`: a norm is per channel over batch and pixels, so where a value sits does not change it).
:func:`norm_programs` gives the same programs without data, for timing (``nmsat.sw.iteration``).  Host work
left here, named: the stacking of each tile's inputs with the ones channels (a copy per program, like every
move between programs; with one batch group a tile of the conv's output is already contiguous) and the O(C)
coefficients.  Not here: where the norms sit in a network (``nmsat.sw.cnn_step``), or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..hw.config import SATConfig
from ..hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits, flush_f32
from . import conv

__all__ = ["EPS", "split_bf16", "NormProgram", "compile_channel_sums", "norm_programs", "lane_fold", "BnCoefficients", "bn_coefficients",
           "bn_grad_coefficients", "affine_weights", "compile_channel_affine"]

#: torch's default ``BatchNorm2d`` eps
EPS = 1e-5


def split_bf16(v) -> tuple[np.ndarray, np.ndarray]:
    """fp32 ``v`` as ``hi + lo``, both bf16 values (as fp32): ``hi = bf16(v)``, ``lo = bf16(v − hi)`` (flushed
    as the core flushes a subnormal operand); ``lo = 0`` where ``hi`` is not finite (NaN, ±inf, or a ``v``
    past bf16's largest value, which rounds to ±inf)."""
    v = np.asarray(v, np.float32)
    hi = bf16_bits_to_f32(f32_to_bf16_bits(v))
    with np.errstate(invalid="ignore", over="ignore"):
        rest = np.where(np.isfinite(v) & np.isfinite(hi), v - hi, np.float32(0)).astype(np.float32)
    return hi, flush_f32(bf16_bits_to_f32(f32_to_bf16_bits(rest)))


def _check_act(name: str, bits: np.ndarray) -> None:
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16 or bits.ndim != 4:
        raise ValueError(f"batch norm: {name} must be bf16 bits (uint16) [N, C, H, W], got "
                         f"{getattr(bits, 'dtype', type(bits).__name__)} {getattr(bits, 'shape', '')}")


def lane_fold(cfg: SATConfig, n: int, h: int) -> int:
    """Rows of pixels folded into the batch (the lanes) so a norm's walks fill ``cols`` lanes: the smallest
    ``f`` dividing ``h`` with ``n·f ≥ cols`` (``h`` if none).  A norm is per channel over batch and pixels, so
    where a value sits does not change it."""
    for f in range(1, h + 1):
        if h % f == 0 and n * f >= cfg.cols:
            return f
    return h


def _to_lanes(bits: np.ndarray, f: int) -> np.ndarray:
    """``[N, C, H, W]`` → ``[N·f, C, H/f, W]``: row block ``i`` of sample ``s`` becomes sample ``s·f + i``."""
    n, c, h, w = bits.shape
    return np.ascontiguousarray(bits.reshape(n, c, f, h // f, w).transpose(0, 2, 1, 3, 4).reshape(n * f, c, h // f, w))


def _from_lanes(bits: np.ndarray, f: int) -> np.ndarray:
    nf, c, hf, w = bits.shape
    return np.ascontiguousarray(bits.reshape(nf // f, f, c, hf, w).transpose(0, 2, 1, 3, 4).reshape(nf // f, c, hf * f, w))


def _tile(cfg: SATConfig, bits: np.ndarray, i: int) -> np.ndarray:
    """Channels ``i·rows …`` of ``bits``, zero-padded to one tile of ``rows``."""
    R = cfg.rows
    out = np.zeros((bits.shape[0], R) + bits.shape[2:], np.uint16)
    part = bits[:, i * R:(i + 1) * R]
    out[:, :part.shape[1]] = part
    return out


def _ones(n: int, channels: int, h: int, w: int, at) -> np.ndarray:
    """``channels`` bf16 channels, those in ``at`` all ones, the rest zeros."""
    out = np.zeros((n, channels, h, w), np.uint16)
    out[:, list(at)] = f32_to_bf16_bits(np.float32(1.0))
    return out


@dataclass
class NormProgram:
    """A norm program with its operands: the memory image, its programs (``runs`` ``(program_addr, length)``, one
    after another; ``run_words`` their instructions), and ``read(memory)`` for its result."""

    memory: np.ndarray
    runs: list[tuple[int, int]]
    run_words: list[list[int]]
    read: Callable[[np.ndarray | None], object]
    plans: list = field(default_factory=list)


def _layout(arrays: list[np.ndarray], out_bytes: int) -> tuple[list[int], int, int]:
    """Addresses of ``arrays`` and of ``out_bytes`` of output after them (each page aligned), and the first free
    address (where the programs go)."""
    addrs, addr = [], 0
    for arr in arrays:
        addrs.append(addr)
        addr = conv._align_up(addr + arr.nbytes)
    out_addr, addr = addr, conv._align_up(addr + out_bytes)
    return addrs, out_addr, addr


def _sums_plan(cfg: SATConfig, n: int, c: int, h: int, w: int) -> tuple[conv.WuPlan, int, int]:
    """The WU plan of one tile's channel sums (dY a tile of ``rows`` channels, X that tile and a ones tile),
    the tiles, and the bytes of a row of the sums' output (``[tiles·rows, 2·rows]`` fp32)."""
    if cfg.rows != cfg.cols:
        raise ValueError(f"config {cfg.name}: channel sums run as WU walks, which need rows == cols")
    R = cfg.rows
    plan = conv.plan_wu(cfg, 2 * R, R, 1, 1, 1, conv.ActLayout(n, R, h, w, 0, R), conv.ActLayout(n, 2 * R, h, w, 0, R))
    return plan, -(-c // R), conv._align_up(2 * R * 4, cfg.bus_bytes)


def _sums_blocks(cfg: SATConfig, plan: conv.WuPlan, tiles: int, row_bytes: int, addrs: list[int], g_addr: int):
    """The blocks of every tile's sums, in one stream: tile ``i``'s dY at ``addrs[2i]``, X at ``addrs[2i + 1]``."""
    blocks = []
    for i in range(tiles):
        blocks += conv.wu_blocks(cfg, plan, dy_addr=addrs[2 * i], x_addr=addrs[2 * i + 1],
                                 g_addr=g_addr + i * cfg.rows * row_bytes, g_row_bytes=row_bytes,
                                 first_step=sum(len(b[0]) for b in blocks), first_block=len(blocks))
    return blocks


def _affine_blocks(cfg: SATConfig, plans: list[conv.ConvPlan], addrs: list[int], out_addr: int, relu: bool):
    """The blocks of every tile's walk, in one stream: tile ``i``'s input at ``addrs[2i]``, weights at
    ``addrs[2i + 1]``, output (its own ``rows`` channels) the ``i``-th after ``out_addr``."""
    blocks = []
    for i, plan in enumerate(plans):
        blocks += conv.walk_blocks(cfg, plan, a_addr=addrs[2 * i + 1], src_addr=addrs[2 * i],
                                   dst_addr=out_addr + i * plan.dst.nbytes(cfg),
                                   first_step=sum(len(b[0]) for b in blocks), first_block=len(blocks), relu=relu)
    return blocks


def norm_programs(cfg: SATConfig, n: int, c: int, h: int, w: int, *, residual: bool = False) -> dict:
    """The programs of one batch norm of ``[n, c, h, w]`` without data (operands at page-aligned addresses, for
    timing): ``"forward"`` the sums and the apply (with a residual term if ``residual``), ``"backward"`` the
    gradient's sums and its apply; each a list of programs (instruction words)."""
    f = lane_fold(cfg, n, h)
    n, h = n * f, h // f
    plan, tiles, row_bytes = _sums_plan(cfg, n, c, h, w)
    base = 1 << (cfg.addr_bits - 2)
    step = conv._align_up(max(plan.dy.nbytes(cfg), plan.x.nbytes(cfg)))
    sums = conv._runs_of(cfg, _sums_blocks(cfg, plan, tiles, row_bytes, [i * step for i in range(2 * tiles)], base),
                         -1)
    out = {}
    for stage, copies in (("forward", 2 + int(residual)), ("backward", 4)):
        apply, = conv.plan_conv(cfg, n, copies * cfg.rows + 2, cfg.rows, (h, w), 1)
        step = conv._align_up(max(apply.src.nbytes(cfg), apply.a_words() * cfg.a_word_bytes))
        blocks = _affine_blocks(cfg, [apply] * tiles, [i * step for i in range(2 * tiles)], base, False)
        out[stage] = sums + conv._runs_of(cfg, blocks, -1)
    return out


def compile_channel_sums(cfg: SATConfig, d_bits: np.ndarray, y_bits: np.ndarray) -> NormProgram:
    """Σ over batch and pixels of ``d·y`` and of ``d`` per channel (bf16 ``[N, C, H, W]`` both): per tile of
    ``rows`` channels a 1×1 WU walk of ``d``'s tile over ``[y's tile; ones]`` (the diagonal tiles only, in one
    program); ``read`` gives (``Σ d·y``, ``Σ d``) fp32 ``[C]``."""
    _check_act("d", d_bits)
    _check_act("y", y_bits)
    if d_bits.shape != y_bits.shape:
        raise ValueError(f"batch norm: the two inputs differ in shape ({d_bits.shape} vs {y_bits.shape})")
    f = lane_fold(cfg, d_bits.shape[0], d_bits.shape[2])
    d_bits, y_bits = _to_lanes(d_bits, f), _to_lanes(y_bits, f)
    n, c, h, w = d_bits.shape
    plan, tiles, row_bytes = _sums_plan(cfg, n, c, h, w)
    ones = _ones(n, cfg.rows, h, w, [0])
    arrays = []
    for i in range(tiles):
        arrays += [conv.pack_act(cfg, plan.dy, _tile(cfg, d_bits, i)),
                   conv.pack_act(cfg, plan.x, np.concatenate([_tile(cfg, y_bits, i), ones], axis=1))]
    R = cfg.rows
    addrs, g_addr, top = _layout(arrays, tiles * R * row_bytes)
    run_words = conv._runs_of(cfg, _sums_blocks(cfg, plan, tiles, row_bytes, addrs, g_addr), -1)
    memory, runs = conv.memory_image(list(zip(addrs, arrays)), top, run_words)

    def read(mem=None):
        m = memory if mem is None else mem
        g = m[g_addr:g_addr + tiles * R * row_bytes].view(np.float32).reshape(tiles * R, -1)[:c]
        ch = np.arange(c)
        return g[ch, ch % R].copy(), g[ch, R].copy()
    return NormProgram(memory, runs, run_words, read, [plan])


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
    A channel whose sums are not both finite (a NaN or ±inf among its values, or an fp32 overflow) gets NaN
    coefficients, which the walks carry into every value of it."""
    f = np.float32
    inv = _count(count)
    s2, s1 = np.asarray(sum_sq, f), np.asarray(sums, f)
    with np.errstate(all="ignore"):
        mean = f(s1 * inv)
        var = np.maximum(f(f(s2 * inv) - f(mean * mean)), f(0))
        rstd = f(f(1) / np.sqrt(f(var + f(eps))))
        shift = f(-f(mean * rstd))
    bad = ~(np.isfinite(s1) & np.isfinite(s2))
    mean, rstd, shift = (np.where(bad, f(np.nan), x).astype(f) for x in (mean, rstd, shift))
    return BnCoefficients(count, mean, rstd, shift)


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


def affine_weights(cfg: SATConfig, scales: list, bias: np.ndarray, tile: int) -> np.ndarray:
    """The 1×1 weights ``[rows, K, 1, 1]`` (fp32 of bf16 values) of output tile ``tile`` in
    :func:`compile_channel_affine`: per term a diagonal (coefficient ``None``: the identity) or two (its ``hi``
    and ``lo``) over the tile's channels, then the bias's ``hi`` and ``lo`` on the two ones channels.  Channels
    past ``C`` (the last tile's padding) get zero weights."""
    R = cfg.rows
    channels = len(bias)
    lanes = np.arange(R)
    live = tile * R + lanes < channels

    def tile_of(v):
        out = np.zeros(R, np.float32)
        out[live] = np.asarray(v, np.float32)[tile * R + lanes[live]]
        return out
    parts = [[live.astype(np.float32)] if s is None else list(split_bf16(tile_of(s))) for s in scales]
    diags = [d for part in parts for d in part]
    w = np.zeros((R, len(diags) * R + 2, 1, 1), np.float32)
    for i, d in enumerate(diags):
        w[lanes, i * R + lanes, 0, 0] = d
    w[lanes, -2, 0, 0], w[lanes, -1, 0, 0] = split_bf16(tile_of(bias))
    return w


def compile_channel_affine(cfg: SATConfig, terms: list[tuple[np.ndarray, np.ndarray | None]], bias, *,
                           relu: bool = False) -> NormProgram:
    """``out[n, c] = Σ_t s_t[c]·x_t[n, c] + bias[c]`` (``terms`` of bf16 ``x_t [N, C, H, W]`` and fp32
    ``s_t [C]``, ``None`` for 1; ``relu``: ReLU in the STOREs) as one program: per tile of ``rows`` channels a
    1×1 FF walk over that tile's inputs stacked and two ones channels, so a tile reads only its own channels.
    A coefficient is hi + lo, so its term is read twice: a bf16 scale alone would err by 2⁻⁹ of ``s·x``, which
    a norm's shift then cancels down to the small ``x − mean`` (the error, not the value, survives).
    ``read`` gives the output, bf16 bits ``[N, C, H, W]``."""
    if not terms:
        raise ValueError("batch norm: an affine combination needs at least one term")
    for i, (bits, _) in enumerate(terms):
        _check_act(f"term {i}", bits)
    shape = terms[0][0].shape
    if any(bits.shape != shape for bits, _ in terms):
        raise ValueError(f"batch norm: the terms differ in shape ({[b.shape for b, _ in terms]})")
    f = lane_fold(cfg, shape[0], shape[2])
    terms = [(_to_lanes(bits, f), s) for bits, s in terms]
    n, c, h, w = terms[0][0].shape
    for s in [s for _, s in terms if s is not None] + [bias]:
        if np.shape(s) not in ((), (c,)):
            raise ValueError(f"batch norm: a coefficient must be a scalar or [{c}], got shape {np.shape(s)}")
    scales = [None if s is None else np.broadcast_to(np.asarray(s, np.float32), (c,)) for _, s in terms]
    bias = np.broadcast_to(np.asarray(bias, np.float32), (c,))
    R, tiles = cfg.rows, -(-c // cfg.rows)
    ones = _ones(n, 2, h, w, [0, 1])
    arrays, plans = [], []
    for i in range(tiles):
        weights = affine_weights(cfg, scales, bias, i)
        stack = [_tile(cfg, bits, i) for (bits, s) in terms for _ in range(1 if s is None else 2)]
        plan, = conv.plan_conv(cfg, n, weights.shape[1], R, (h, w), 1, weight=weights)
        plans.append(plan)
        arrays += [conv.pack_act(cfg, plan.src, np.concatenate(stack + [ones], axis=1)),
                   conv.pack_walk_weights(cfg, plan)["a"]]
    dst = plans[0].dst
    addrs, out_addr, top = _layout(arrays, tiles * dst.nbytes(cfg))
    run_words = conv._runs_of(cfg, _affine_blocks(cfg, plans, addrs, out_addr, relu), -1)
    memory, runs = conv.memory_image(list(zip(addrs, arrays)), top, run_words)

    def read(mem=None):
        m = memory if mem is None else mem
        size = dst.nbytes(cfg)
        parts = [conv.unpack_act(cfg, dst, m[out_addr + i * size:out_addr + (i + 1) * size].view(np.uint16))
                 for i in range(tiles)]
        return _from_lanes(np.concatenate(parts, axis=1)[:, :c], f)
    return NormProgram(memory, runs, run_words, read, plans)
