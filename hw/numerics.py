"""The numerics rule of the core, written once, and the host-side conversions every part uses.

Formats: operands bf16, accumulators fp32 (IEEE 754 binary32).  The rule,
written once (``docs/architecture.md`` repeats it):

1. **Flush to zero.** A subnormal operand, product or sum is replaced by a
   zero of the same sign.  No unit ever produces or consumes a subnormal.
2. **Products are exact.** A bf16 × bf16 product has at most 16 significant
   bits, so it is exact in fp32 unless its exponent leaves fp32's normal range:
   above it the product is ±inf, below it ±0 (rule 1).
3. **Sums round to nearest even** in fp32 (overflow to ±inf).  An exact zero
   sum of operands of opposite signs is +0; (−0) + (−0) = −0.
4. **NaN.** Any NaN operand, ∞ − ∞ and 0 × ∞ give the canonical quiet NaN
   ``0x7FC00000``.  Infinities otherwise follow IEEE 754.
5. **Order.** A GEMM's T reduction steps (its k words, a sparse GEMM's
   slots, a kernel walk's taps × words: the order the unit reads them) are
   dealt into ``PARTIAL_SUMS`` (four) partial sums, one per stage of the PE's
   pipelined adder: step t goes to partial ``(t − T) mod 4``, so the last
   step lands in partial 3.  Each partial starts from +0 and adds its
   products one at a time in increasing t; the output is
   ``(p0 + p1) + (p2 + p3)``, each sum rounded.  A GEMM instruction with
   ``accumulate`` then adds its result to the accumulator buffer (one more
   rounded sum).

Conversions on the host side: fp32 → bf16 rounds to nearest even (NaN →
canonical bf16 NaN ``0x7FC0``); bf16 → fp32 is exact.

Here: the rule, its partial-sum count, the canonical NaNs, fp32 ↔ bf16 conversions and the flush of rule 1/4, in numpy
(the compiler packs operands with them).  Not here: the vectorised MACs of the simulator
(:mod:`nmsat.sim.numerics`), the gateware fp units (:mod:`nmsat.hw.fp`), timing or buffers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PARTIAL_SUMS", "partial_of", "CANONICAL_NAN_F32", "CANONICAL_NAN_BF16", "f32_to_bf16_bits", "bf16_bits_to_f32", "flush_f32"]

#: rule 5: the partial sums an output is accumulated in (the PE's adder pipeline holds one per stage)
PARTIAL_SUMS = 4

CANONICAL_NAN_F32 = np.uint32(0x7FC00000)
CANONICAL_NAN_BF16 = np.uint16(0x7FC0)
_EXP_MASK = np.uint32(0x7F800000)
_SIGN_MASK = np.uint32(0x80000000)


def f32_to_bf16_bits(x) -> np.ndarray:
    """fp32 values → bf16 bit patterns (uint16), round to nearest even, NaN canonical."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = np.asarray(((bits + rounding) >> np.uint32(16)).astype(np.uint16))
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():  # rare: the common case skips the select
        out = np.where(nan, CANONICAL_NAN_BF16, out).astype(np.uint16)
    return out


def bf16_bits_to_f32(bits) -> np.ndarray:
    """bf16 bit patterns → fp32 values (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def flush_f32(x: np.ndarray) -> np.ndarray:
    """Rules 1 and 4 applied to fp32 values: subnormals → signed zero, NaN → canonical NaN."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    exponent = bits & _EXP_MASK
    bits = np.where(exponent == 0, bits & _SIGN_MASK, bits)
    bits = np.where((exponent == _EXP_MASK) & ((bits & np.uint32(0x007FFFFF)) != 0), CANONICAL_NAN_F32, bits)
    return bits.astype(np.uint32).view(np.float32)


def partial_of(step, steps: int):
    """Rule 5: the partial sum that reduction step ``step`` (of ``steps``) adds into."""
    return (step - steps) % PARTIAL_SUMS
