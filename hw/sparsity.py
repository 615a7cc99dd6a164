"""The N:M selection rule and the compressed operand format, in numpy: what the sparsifier computes and
the sparse GEMM reads.

The rule (the same as ``nmsat.sw.bdwp.nm_mask``, written for fp32 bit
patterns): in every group of ``m`` consecutive elements along the reduction
dimension, keep the ``n`` whose *key* is largest, the key being the value's
bit pattern with the sign cleared (for finite values exactly ``|w|``; NaN
ranks above ±inf, which rank above every finite value; −0 equals +0).  Equal
keys go to the lower index.  A length that is not a multiple of ``m`` is
padded with zeros at the end, and pads never win, so a short last group of
``r`` elements keeps ``min(n, r)`` real elements.

Compressed form of an operand ``A[rows, K]`` (groups along K): ``G =
ceil(K / m)`` groups of ``n`` *slots*; slot ``j`` of row ``r`` holds a value
(bf16, rounded to nearest even) and an index ``i < m`` (the element ``g·m + i``
of its group ``g = j // n``), the slots of a group in increasing index.  Slots
a short last group cannot fill hold +0 and the index of a pad position, so
every group has exactly ``n`` slots.

Not here: the torch masks of BDWP training (:mod:`nmsat.sw.bdwp`), packing
for the buffers (:mod:`nmsat.dataflow`), or the gateware.
"""

from __future__ import annotations

import numpy as np

from .numerics import f32_to_bf16_bits

__all__ = ["check_pattern", "nm_keep", "compress"]


def check_pattern(n: int, m: int) -> None:
    """Raise ``ValueError`` unless ``1 <= n <= m`` are ints."""
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"N:M sparsity: {name} must be an int, got {value!r}")
    if m < 1 or not 1 <= n <= m:
        raise ValueError(f"N:M sparsity: need 1 <= n <= m, got n={n}, m={m}")


def _keys(values: np.ndarray) -> np.ndarray:
    """The ranking key of fp32 values: the bit pattern with the sign cleared, as int64."""
    return (np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.int64)


def nm_keep(values: np.ndarray, n: int, m: int) -> np.ndarray:
    """Boolean mask of the kept elements of ``values[..., K]`` (groups along the last axis)."""
    check_pattern(n, m)
    values = np.asarray(values, dtype=np.float32)
    length = values.shape[-1]
    groups = -(-length // m)
    key = np.full(values.shape[:-1] + (groups * m,), -1, dtype=np.int64)  # pads rank below every real element
    key[..., :length] = _keys(values)
    key = key.reshape(values.shape[:-1] + (groups, m))
    # a stable sort of -key puts larger keys first and equal keys in index order
    order = np.argsort(-key, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m), axis=-1)
    keep = (rank < n) & (key >= 0)
    return keep.reshape(values.shape[:-1] + (groups * m,))[..., :length]


def compress(values: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The compressed form of ``values[rows, K]``: bf16 bits ``[rows, G·n]`` and indices ``[rows, G·n]`` (uint8)."""
    check_pattern(n, m)
    values = np.asarray(values, dtype=np.float32)
    rows, length = values.shape
    groups = -(-length // m)
    padded = np.zeros((rows, groups * m), dtype=np.float32)
    padded[:, :length] = values
    keep = np.zeros((rows, groups * m), dtype=bool)
    keep[:, :length] = nm_keep(values, n, m)
    keep = keep.reshape(rows, groups, m)
    # slots: the kept indices in increasing order, then pad positions (never kept) to fill n
    score = np.where(keep, 0, 1) * m + np.arange(m)  # kept first, each part in index order
    order = np.argsort(score, axis=-1, kind="stable")[..., :n]  # [rows, G, n]
    filled = np.take_along_axis(keep, order, axis=-1)
    gathered = np.take_along_axis(padded.reshape(rows, groups, m), order, axis=-1)
    vals = np.where(filled, gathered, np.float32(0.0))
    bits = f32_to_bf16_bits(vals).reshape(rows, groups * n)
    return bits, order.astype(np.uint8).reshape(rows, groups * n)
