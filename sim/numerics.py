"""The numerics rule (:mod:`nmsat.hw.numerics`) in vectorised numpy: products, sums and whole MAC sequences.

The reference the RTL's fp units are checked against and what the simulator
computes with.  The conversions and the flush live in
:mod:`nmsat.hw.numerics` and are re-exported here for convenience.  The
MAC sequences' fast path (no product or sum can be subnormal) also runs as
loops compiled with numba when it is installed — the same order of
operations, held bit-equal to the numpy loop by ``tests/sim/test_numerics.py``.

Not here: the rule's text, timing, buffers or the instruction stream.
"""

from __future__ import annotations

import numpy as np

from ..hw.isa import VectorFunc
from ..hw.numerics import PARTIAL_SUMS, partial_of, CANONICAL_NAN_BF16, CANONICAL_NAN_F32, bf16_bits_to_f32, f32_to_bf16_bits, flush_f32

__all__ = [
    "CANONICAL_NAN_F32", "CANONICAL_NAN_BF16", "f32_to_bf16_bits", "bf16_bits_to_f32", "flush_f32",
    "mul_bf16", "add_f32", "mul_f32", "sgd_update", "vector_op", "mac_sequence", "mac_sequence_per_row",
    "mac_sequence_gathered",
]


def mul_bf16(a_bits, b_bits) -> np.ndarray:
    """Exact bf16 × bf16 products as fp32 (rule 2), inputs as bf16 bit patterns."""
    a = flush_f32(bf16_bits_to_f32(a_bits))
    b = flush_f32(bf16_bits_to_f32(b_bits))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return flush_f32(a * b)


def add_f32(x, y) -> np.ndarray:
    """fp32 + fp32 under the rule (RNE, flush to zero, canonical NaN)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return flush_f32(flush_f32(x) + flush_f32(y))


def mul_f32(x, y) -> np.ndarray:
    """fp32 × fp32 under the rule: subnormal operands read as zeros; a product whose exact value is below
    2^-126 in magnitude is a zero of its sign (decided before rounding); otherwise round to nearest even
    (overflow to ±inf); NaN canonical (``nmsat.hw.fp.Fp32Multiplier``)."""
    a = flush_f32(np.asarray(x, dtype=np.float32)).astype(np.float64)
    b = flush_f32(np.asarray(y, dtype=np.float32)).astype(np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        exact = a * b  # 24 x 24 significant bits: exact in float64
        tiny = np.abs(exact) < 2.0 ** -126
        out = np.where(tiny, np.copysign(0.0, exact), exact).astype(np.float32)
    return flush_f32(out)


def sgd_update(w, v, g, lr, momentum, decay) -> tuple[np.ndarray, np.ndarray]:
    """WEIGHT_UPDATE's arithmetic, one fp32 operation at a time in this order (each under the rule):
    ``d = g + λ·w``, ``v' = μ·v + d``, ``w' = w − η·v'`` (the subtraction adds η·v' with its sign flipped).
    Returns ``(w', v')``; torch's SGD with momentum, weight decay, no dampening, no Nesterov."""
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    w, v, g = f32(w), f32(v), f32(g)
    d = add_f32(g, mul_f32(f32(decay), w))
    v_new = add_f32(mul_f32(f32(momentum), v), d)
    step = mul_f32(f32(lr), v_new)
    w_new = add_f32(w, (step.view(np.uint32) ^ np.uint32(0x80000000)).view(np.float32))
    return w_new, v_new


def _order_key(bits: np.ndarray) -> np.ndarray:
    """fp32 bits → unsigned keys in the order of their values, −0 just below +0 (not for NaNs)."""
    return np.where(bits >> np.uint32(31) != 0, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


def vector_op(func, x_bits, y_bits) -> np.ndarray:
    """VECTOR's element function on bit patterns: uint32 (fp32 elements) or uint16 (bf16, widened exactly,
    the result rounded to nearest even).  Operands are read under the rule (subnormals as zeros of their
    sign); every result is one of the rule: ADD :func:`add_f32`, SUB ``x + (−y)``, MUL :func:`mul_f32`, RELU_GRAD +0 where
    ``y ≤ 0`` else ``x`` (a NaN y passes x: torch's ``threshold_backward``), MAX the larger (−0 below +0; NaN if either is NaN); NaNs canonical."""
    bf16 = np.asarray(x_bits).dtype == np.uint16
    widen = bf16_bits_to_f32 if bf16 else (lambda b: np.asarray(b, dtype=np.uint32).view(np.float32))
    x, y = flush_f32(widen(x_bits)), flush_f32(widen(y_bits))
    func = VectorFunc(func)
    if func is VectorFunc.ADD:
        z = add_f32(x, y)
    elif func is VectorFunc.SUB:
        z = add_f32(x, (y.view(np.uint32) ^ np.uint32(0x80000000)).view(np.float32))
    elif func is VectorFunc.MUL:
        z = mul_f32(x, y)
    elif func is VectorFunc.RELU_GRAD:
        z = np.where(y <= 0, np.float32(0.0), x).astype(np.float32)  # a NaN y passes x, as in torch
    else:  # MAX
        xb, yb = x.view(np.uint32), y.view(np.uint32)
        nan = np.isnan(x) | np.isnan(y)
        z = np.where(nan, CANONICAL_NAN_F32, np.where(_order_key(xb) >= _order_key(yb), xb, yb))
        z = z.astype(np.uint32).view(np.float32)
    z = flush_f32(z)
    return f32_to_bf16_bits(z) if bf16 else z.view(np.uint32)


_SAFE_PRODUCT = np.float32(2.0 ** -102)


_prange = range  # numba's parallel range when compiled (below)


def _widen_flush(bits):
    """bf16 bits → fp32 under rules 1 and 4, and the smallest nonzero magnitude (inf if none).  Two
    branch-free loops: the widening, then the least magnitude key of the normal numbers and infinities
    (bf16 magnitudes order as their low 15 bits; zeros and subnormals read as zero, NaNs do not count)."""
    n = bits.shape[0]
    out = np.empty(n, np.uint32)
    for i in range(n):
        w = np.uint32(bits[i]) << np.uint32(16)
        e = w & np.uint32(0x7F800000)
        w = w & np.uint32(0x80000000) if e == 0 else w
        out[i] = np.uint32(0x7FC00000) if (e == np.uint32(0x7F800000)) and (w & np.uint32(0x007FFFFF)) != 0 else w
    least = np.uint16(0xFFFF)
    for i in range(n):
        m = bits[i] & np.uint16(0x7FFF)
        key = m if (m >= np.uint16(0x0080)) and (m <= np.uint16(0x7F80)) else np.uint16(0xFFFF)
        least = key if key < least else least
    return out, least


def _widen(bits):
    """:func:`_widen_flush` compiled, its least key as a value: (fp32 array, smallest nonzero magnitude)."""
    out, least = _KERNELS.widen_flush(bits)
    smallest = np.inf if least == 0xFFFF else float(np.uint32(np.uint32(least) << np.uint32(16)).view(np.float32))
    return out.view(np.float32), smallest


def _mac_gathered(a, b, rows, out):
    """out[t, p, r, :] += a[t, j, r] · b[t, rows[t, j, r], :] for j in order, p the partial of step j."""
    shift = PARTIAL_SUMS - a.shape[1] % PARTIAL_SUMS
    for t in _prange(a.shape[0]):
        for r in range(a.shape[2]):
            for j in range(a.shape[1]):
                p = (j + shift) % PARTIAL_SUMS
                x = a[t, j, r]
                w = rows[t, j, r]
                for c in range(b.shape[2]):
                    out[t, p, r, c] += x * b[t, w, c]


def _canonical_nans(bits):
    """NaNs (in place, fp32 bits) → the canonical NaN: the fast path's sums are never subnormal."""
    for i in _prange(bits.shape[0]):
        w = bits[i]
        if (w & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (w & np.uint32(0x007FFFFF)) != 0:
            bits[i] = np.uint32(0x7FC00000)


def _mac_dense(a, b, out):
    """out[t, p, r, :] += a[t, k, r] · b[t, k, :] for k in order, p the partial of step k (rule 5; fp32
    products and sums, one rounding each)."""
    shift = PARTIAL_SUMS - a.shape[1] % PARTIAL_SUMS
    for t in _prange(a.shape[0]):
        for r in range(a.shape[2]):
            for k in range(a.shape[1]):
                p = (k + shift) % PARTIAL_SUMS
                x = a[t, k, r]
                for c in range(b.shape[2]):
                    out[t, p, r, c] += x * b[t, k, c]


def _mac_per_row(a, b, out):
    """out[t, p, r, :] += a[t, j, r] · b[t, j, r, :] for j in order, p the partial of step j."""
    shift = PARTIAL_SUMS - a.shape[1] % PARTIAL_SUMS
    for t in _prange(a.shape[0]):
        for r in range(a.shape[2]):
            for j in range(a.shape[1]):
                p = (j + shift) % PARTIAL_SUMS
                x = a[t, j, r]
                for c in range(b.shape[3]):
                    out[t, p, r, c] += x * b[t, j, r, c]


# The fast path's loops compiled (numba, both cores): bf16 × bf16 products are exact in fp32, so a fused
# multiply-add would round exactly as a product then a sum does; each partial adds in increasing k either way.
try:
    from numba import njit, prange as _prange
except ImportError:  # numpy's loop below does it
    _KERNELS = None
else:
    from types import SimpleNamespace
    _parallel = njit(parallel=True, cache=True, nogil=True)
    _KERNELS = SimpleNamespace(mac_dense=_parallel(_mac_dense), mac_per_row=_parallel(_mac_per_row),
                               mac_gathered=_parallel(_mac_gathered), canonical_nans=_parallel(_canonical_nans),
                               widen_flush=njit(cache=True, nogil=True)(_widen_flush))


def mac_sequence(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """``out[..., r, c] = Σ_k a[..., k, r] · b[..., k, c]`` in the rule's order (rule 5: four partial sums
    over the steps, then ``(p0 + p1) + (p2 + p3)``).

    ``a_bits``: ``[..., K, R]`` and ``b_bits``: ``[..., K, C]`` bf16 bit patterns.
    Returns fp32 ``[..., R, C]``.  Vectorised over every output; one numpy step per k.

    Fast path: if every nonzero product is at least 2^-102 in magnitude (checked
    from the smallest nonzero operands), no product or partial sum can be
    subnormal — a nonzero sum of such products is a multiple of 2^-118 — and
    rule 1 never fires inside the loop; NaNs are made canonical once at the end
    (a NaN stays NaN through every later sum).  Then the loop is one multiply
    and one add per k, in place.
    """
    return _sequence(a_bits, b_bits, per_row=False)


def mac_sequence_per_row(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """``out[..., r, c] = Σ_j a[..., j, r] · b[..., j, r, c]``: each row its own B operand (the sparse GEMM's
    gathered words), in the rule's order.  ``a_bits`` ``[..., J, R]``, ``b_bits`` ``[..., J, R, C]``."""
    return _sequence(a_bits, b_bits, per_row=True)


def mac_sequence_gathered(a_bits: np.ndarray, b_words: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """:func:`mac_sequence_per_row` with ``b[..., j, r, :] = b_words[..., rows[..., j, r], :]``: the sparse
    GEMM's B words ``[..., W, C]`` and, per slot and row, which of them the row takes (``rows``
    ``[..., J, R]``), without building the gathered ``[..., J, R, C]`` operand when the compiled fast path
    applies."""
    if _KERNELS is not None:
        a_bits, b_words = np.ascontiguousarray(a_bits, dtype=np.uint16), np.ascontiguousarray(b_words, dtype=np.uint16)
        a, min_a = _widen(a_bits.reshape(-1))
        b, min_b = _widen(b_words.reshape(-1))
        if np.float64(min_a) * np.float64(min_b) >= _SAFE_PRODUCT:  # as _sequence's fast path
            k, r = a_bits.shape[-2:]
            w, c = b_words.shape[-2:]
            lead = a_bits.shape[:-2]
            parts = np.zeros((int(np.prod(lead, dtype=np.int64)), PARTIAL_SUMS, r, c), dtype=np.float32)
            _KERNELS.mac_gathered(a.reshape(-1, k, r), b.reshape(-1, w, c),
                                  np.ascontiguousarray(rows, dtype=np.int64).reshape(-1, k, r), parts)
            return _combine_fast(parts).reshape(lead + (r, c))
    return _sequence(a_bits, _gather(b_words, rows), per_row=True)


def _gather(b_words: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[..., J, R, C]``: ``b_words[..., rows[..., j, r], :]``."""
    lead = b_words.shape[:-2]
    flat_b = b_words.reshape((-1,) + b_words.shape[-2:])
    flat_rows = np.asarray(rows).reshape((flat_b.shape[0],) + rows.shape[-2:])
    out = flat_b[np.arange(flat_b.shape[0])[:, None, None], flat_rows]
    return out.reshape(lead + rows.shape[-2:] + b_words.shape[-1:])


def _combine_fast(parts: np.ndarray) -> np.ndarray:
    """Rule 5's ``(p0 + p1) + (p2 + p3)`` of ``parts[n, 4, R, C]`` on the fast path (no sum is subnormal),
    NaNs made canonical once."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = (parts[:, 0] + parts[:, 1]) + (parts[:, 2] + parts[:, 3])
    if _KERNELS is not None:
        _KERNELS.canonical_nans(out.reshape(-1).view(np.uint32))
        return out
    return flush_f32(out)


def _combine(parts: np.ndarray) -> np.ndarray:
    """Rule 5's ``(p0 + p1) + (p2 + p3)`` of ``parts[4, ...]``, every sum under the rule."""
    return add_f32(add_f32(parts[0], parts[1]), add_f32(parts[2], parts[3]))


def _sequence(a_bits: np.ndarray, b_bits: np.ndarray, *, per_row: bool) -> np.ndarray:
    if _KERNELS is not None:  # widen, flush and find the smallest nonzero magnitude in one pass each
        a_bits, b_bits = np.ascontiguousarray(a_bits, dtype=np.uint16), np.ascontiguousarray(b_bits, dtype=np.uint16)
        a, min_a = _widen(a_bits.reshape(-1))
        b, min_b = _widen(b_bits.reshape(-1))
        a, b = a.reshape(a_bits.shape), b.reshape(b_bits.shape)
    else:
        a = flush_f32(bf16_bits_to_f32(a_bits))
        b = flush_f32(bf16_bits_to_f32(b_bits))
        abs_a, abs_b = np.abs(a), np.abs(b)
        min_a = abs_a[abs_a > 0].min(initial=np.inf)
        min_b = abs_b[abs_b > 0].min(initial=np.inf)
    k = a.shape[-2]
    out_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-3] if per_row else b.shape[:-2]) + (a.shape[-1], b.shape[-1])
    # the partial sums of rule 5: parts[p] holds steps t with (t - k) mod 4 == p
    parts = np.zeros((PARTIAL_SUMS,) + out_shape, dtype=np.float32)

    def b_at(i):
        return b[..., i, :, :] if per_row else b[..., i, None, :]

    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if np.float64(min_a) * np.float64(min_b) >= _SAFE_PRODUCT:
            if _KERNELS is not None and parts[0].size:
                lead = out_shape[:-2]
                r, c = out_shape[-2:]
                flat = np.zeros((int(np.prod(lead, dtype=np.int64)), PARTIAL_SUMS, r, c), dtype=np.float32)
                a3 = np.ascontiguousarray(np.broadcast_to(a, lead + a.shape[-2:])).reshape(-1, k, r)
                if per_row:
                    b4 = np.ascontiguousarray(np.broadcast_to(b, lead + b.shape[-3:])).reshape(-1, k, r, c)
                    _KERNELS.mac_per_row(a3, b4, flat)
                else:
                    b3 = np.ascontiguousarray(np.broadcast_to(b, lead + b.shape[-2:])).reshape(-1, k, c)
                    _KERNELS.mac_dense(a3, b3, flat)
                return _combine_fast(flat).reshape(out_shape)
            prod = np.empty(out_shape, dtype=np.float32)
            for i in range(k):
                np.multiply(a[..., i, :, None], b_at(i), out=prod)
                part = parts[partial_of(i, k)]
                np.add(part, prod, out=part)
            flat = np.moveaxis(parts, 0, -3).reshape((-1, PARTIAL_SUMS) + out_shape[-2:])
            return _combine_fast(flat).reshape(out_shape)
        for i in range(k):
            p = partial_of(i, k)
            parts[p] = flush_f32(parts[p] + flush_f32(a[..., i, :, None] * b_at(i)))
    return _combine(parts)
