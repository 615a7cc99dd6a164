"""Floating-point units of the processing elements, in Amaranth.

Holds the arithmetic of one PE, all combinational and bit-exact to the
numerics rule of :mod:`nmsat.sim.numerics` (flush to zero, exact bf16 × bf16
products in fp32, fp32 sums rounded to nearest even, canonical NaN
``0x7FC00000``):

* :class:`Bf16Multiplier` — bf16 × bf16 → fp32 (exact, or ±inf / ±0 out of range);
* :class:`Fp32Adder` — fp32 + fp32 → fp32 (round to nearest even);
* :class:`Bf16Mac` — ``acc + a × b``, the two above in series;
* :class:`Fp32Multiplier` — fp32 × fp32 → fp32 (round to nearest even; the
  weight-update engine's products).

Not here: pipelining or registers (a PE adds those around these units),
rounding modes other than nearest-even, subnormal support, exception flags,
NaN payload propagation, and the host-side fp32 ↔ bf16 conversions.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CANONICAL_NAN_F32", "Bf16Multiplier", "Fp32Adder", "Bf16Mac", "Fp32Multiplier"]

#: The only NaN any unit produces (quiet, positive, zero payload beyond the quiet bit).
CANONICAL_NAN_F32 = 0x7FC00000
_INF_F32 = 0x7F800000


def _net(m: Module, name: str, expr) -> Signal:
    """A named signal driven by ``expr``.

    Amaranth inlines an expression at every use, so an intermediate that is
    used more than once is given its own signal (keeps elaboration and the
    emitted netlist linear in the design size).
    """
    expr = Value.cast(expr)
    sig = Signal(expr.shape(), name=name)
    m.d.comb += sig.eq(expr)
    return sig


def _leading_zeros(x: Value) -> tuple[Value, Value]:
    """Leading-zero count of ``x`` as a balanced tree.

    Returns ``(count, nonzero)``.  ``x`` is padded at the bottom to a power of
    two; ``count`` is only meaningful when ``nonzero`` is 1.
    """
    width = len(x)
    padded = 1
    while padded < width:
        padded *= 2
    if padded > width:
        x = Cat(Const(0, padded - width), x)

    def tree(v: Value) -> tuple[Value, Value]:
        if len(v) == 1:
            return Cat(), v[0]
        half = len(v) // 2
        count_hi, any_hi = tree(v[half:])
        count_lo, any_lo = tree(v[:half])
        # top half has a one: count in it; else half + count in the low half
        count = Mux(any_hi, Cat(count_hi, Const(0, 1)), Cat(count_lo, Const(1, 1)))
        return count, any_hi | any_lo

    return tree(x)


def _classify(x: Value, frac_bits: int):
    """(sign, biased exponent, fraction, zero-or-subnormal, NaN, inf) of a float with an 8-bit exponent."""
    exp, frac = x[frac_bits:frac_bits + 8], x[:frac_bits]
    top = exp == 0xFF
    return x[frac_bits + 8], exp, frac, exp == 0, top & (frac != 0), top & (frac == 0)


def _product_out(m: Module, out, sign, a, b, overflow, underflow, normal) -> None:
    """Drive a multiplier's fp32 result from the operands' classes (``_classify``): NaN (a NaN operand or
    0 × inf), ±inf, ±0 (a zero operand or ``underflow``), else ``normal``."""
    _, _, _, zero_a, nan_a, inf_a = a
    _, _, _, zero_b, nan_b, inf_b = b
    with m.If(nan_a | nan_b | (zero_a & inf_b) | (inf_a & zero_b)):
        m.d.comb += out.eq(CANONICAL_NAN_F32)
    with m.Elif(inf_a | inf_b | overflow):
        m.d.comb += out.eq(Cat(Const(_INF_F32, 31), sign))
    with m.Elif(zero_a | zero_b | underflow):
        m.d.comb += out.eq(Cat(Const(0, 31), sign))
    with m.Else():
        m.d.comb += out.eq(normal)


class Bf16Multiplier(wiring.Component):
    """Exact bf16 × bf16 product as fp32 (rule 2 of :mod:`nmsat.sim.numerics`).

    Combinational: latency 0.

    Subnormal operands are read as zeros of the same sign.  The 8 × 8-bit
    significand product (at most 16 significant bits) fits the fp32 fraction
    exactly, so nothing is rounded; a result exponent above fp32's range gives
    ±inf, one below its normal range ±0.  A NaN operand or 0 × inf gives the
    canonical NaN ``0x7FC00000``.

    Attributes
    ----------
    a, b : In(16)
        Operands, bf16 bit patterns.
    product : Out(32)
        ``a × b``, fp32 bit pattern.
    """

    a: In(16)
    b: In(16)
    product: Out(32)

    def elaborate(self, platform):
        m = Module()

        a, b = _classify(self.a, 7), _classify(self.b, 7)  # zero covers subnormals (flushed)
        sign = a[0] ^ b[0]
        exp_a, exp_b, frac_a, frac_b = a[1], b[1], a[2], b[2]

        # 8 x 8 -> 16-bit significand product, value in [1, 4)
        sig = _net(m, "sig", Cat(frac_a, Const(1, 1)) * Cat(frac_b, Const(1, 1)))
        top = sig[15]
        # the 15 bits after the leading one, left-aligned in the 23-bit fraction
        frac = Mux(top, Cat(Const(0, 8), sig[0:15]), Cat(Const(0, 9), sig[0:14]))

        # biased exponent of the product: ea + eb - 127 (+1 when sig >= 2), range -125 .. 382
        exp = _net(m, "exp", (exp_a + exp_b + top - 127).as_signed())
        _product_out(m, self.product, sign, a, b, exp >= 0xFF, exp <= 0, Cat(frac, exp[0:8], sign))
        return m


class Fp32Adder(wiring.Component):
    """fp32 + fp32 rounded to nearest, ties to even (rule 3 of :mod:`nmsat.sim.numerics`).

    Combinational: latency 0.

    Subnormal operands are read as zeros of the same sign and subnormal sums
    are flushed to a zero with the sign of the sum.  An exact zero sum of
    operands of opposite signs is +0, (−0) + (−0) = −0.  A sum beyond fp32's
    range is ±inf.  A NaN operand or inf − inf gives the canonical NaN
    ``0x7FC00000``; other infinities follow IEEE 754.

    Datapath: the operands are ordered by magnitude; the smaller significand
    is aligned in a 27-bit field (24 bits + guard + round + sticky) and every
    bit shifted out of it is ORed into the sticky bit (an AND with a
    thermometer mask of the shift amount: the same bit a 51-bit alignment
    shifter would give, for less logic; shifts of 27 or more are clamped, as
    they move everything into the sticky bit); the 28-bit sum or
    difference is normalised by a leading-zero count and one left shift; the
    fraction is rounded by adding the round-up bit to the packed exponent and
    fraction, so a carry out of the fraction lands in the exponent (and
    ``0x7F7FFFFF`` + 1 becomes inf).

    Attributes
    ----------
    a, b : In(32)
        Operands, fp32 bit patterns.
    sum : Out(32)
        ``a + b``, fp32 bit pattern.
    """

    a: In(32)
    b: In(32)
    sum: Out(32)

    def elaborate(self, platform):
        m = Module()

        def unpack(x, n):
            exp, frac = x[23:31], x[0:23]
            is_zero = exp == 0  # zero or subnormal (flushed)
            is_max = exp == 0xFF
            # magnitude after flush to zero (exponent and fraction, 31 bits)
            mag = _net(m, f"mag_{n}", Mux(is_zero, 0, x[0:31]))
            return x[31], mag, is_max & (frac == 0), is_max & (frac != 0)

        sign_a, mag_a, inf_a, nan_a = unpack(self.a, "a")
        sign_b, mag_b, inf_b, nan_b = unpack(self.b, "b")

        # order by magnitude: x is the larger, y the smaller
        swap = _net(m, "swap", mag_b > mag_a)
        sign_x = Mux(swap, sign_b, sign_a)
        mag_x = _net(m, "mag_x", Mux(swap, mag_b, mag_a))
        mag_y = _net(m, "mag_y", Mux(swap, mag_a, mag_b))
        exp_x, exp_y = mag_x[23:31], mag_y[23:31]
        sig_x = Cat(mag_x[0:23], exp_x != 0)  # 24 bits with the hidden one
        sig_y = Cat(mag_y[0:23], exp_y != 0)  # 0 when y is a (flushed) zero
        subtract = sign_a ^ sign_b

        # alignment: y's significand with 3 extra bits, shifted right by the
        # exponent difference; every shift of 27 or more moves all of it out
        diff = _net(m, "diff", exp_x - exp_y)  # 0 .. 254 (exp_x >= exp_y)
        shift = _net(m, "shift", Mux(diff > 27, 27, diff[0:5]))
        y_ext = _net(m, "y_ext", Cat(Const(0, 3), sig_y))  # 27 bits
        y_kept = y_ext >> shift
        # sticky: y bits below the shift, y_ext & ((1 << shift) - 1) != 0
        lost_mask = Cat(*(shift > i for i in range(27)))
        sticky = (y_ext & lost_mask) != 0
        y_aligned = _net(m, "y_aligned", y_kept | sticky)
        x_ext = Cat(Const(0, 3), sig_x)  # 27 bits

        # 28-bit sum / difference (x >= y, so the difference is not negative)
        total = _net(m, "total", Mux(subtract, x_ext - y_aligned, x_ext + y_aligned)[0:28])

        # normalise: shift the leading one to bit 27
        lz, nonzero = _leading_zeros(total)
        lz = _net(m, "lz", lz)
        norm = _net(m, "norm", (total << lz)[0:28])
        mant = norm[4:27]  # 23 fraction bits below the leading one
        guard = norm[3]
        rest = norm[0:3] != 0
        round_up = guard & (rest | mant[0])

        # biased exponent of the leading one: exp_x + 1 - lz, range -26 .. 255
        exp = _net(m, "exp", (exp_x + 1 - lz).as_signed())
        overflow = exp >= 0xFF
        underflow = exp <= 0
        rounded = Cat(mant, exp[0:8]) + round_up  # carries into the exponent; 0x7F800000 is inf

        is_nan = nan_a | nan_b | (inf_a & inf_b & subtract)
        is_inf = inf_a | inf_b

        with m.If(is_nan):
            m.d.comb += self.sum.eq(CANONICAL_NAN_F32)
        with m.Elif(is_inf):
            m.d.comb += self.sum.eq(Cat(Const(_INF_F32, 31), Mux(inf_a, sign_a, sign_b)))
        with m.Elif(~nonzero):
            # exact zero: -0 only for (-0) + (-0)
            m.d.comb += self.sum.eq(Cat(Const(0, 31), sign_a & sign_b))
        with m.Elif(overflow):
            m.d.comb += self.sum.eq(Cat(Const(_INF_F32, 31), sign_x))
        with m.Elif(underflow):
            m.d.comb += self.sum.eq(Cat(Const(0, 31), sign_x))
        with m.Else():
            m.d.comb += self.sum.eq(Cat(rounded[0:31], sign_x))
        return m


class Bf16Mac(wiring.Component):
    """``acc_out = acc_in + a × b``: a :class:`Bf16Multiplier` feeding an :class:`Fp32Adder`.

    Combinational: latency 0.  The product is exact (or ±inf / ±0 / NaN by
    rule 2) and the sum is rounded once, so the result is
    ``numerics.add_f32(acc_in, numerics.mul_bf16(a, b))``.

    Attributes
    ----------
    acc_in : In(32)
        Accumulator, fp32 bit pattern.
    a, b : In(16)
        Operands, bf16 bit patterns.
    acc_out : Out(32)
        ``acc_in + a × b``, fp32 bit pattern.
    """

    acc_in: In(32)
    a: In(16)
    b: In(16)
    acc_out: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = Bf16Multiplier()
        m.submodules.add = add = Fp32Adder()
        m.d.comb += [
            mul.a.eq(self.a),
            mul.b.eq(self.b),
            add.a.eq(self.acc_in),
            add.b.eq(mul.product),
            self.acc_out.eq(add.sum),
        ]
        return m


class Fp32Multiplier(wiring.Component):
    """fp32 × fp32 rounded to nearest, ties to even (``nmsat.sim.numerics.mul_f32``).

    Combinational: latency 0.

    Subnormal operands are read as zeros of the same sign.  The 24 × 24-bit
    significand product is exact; a product whose exact value is below fp32's
    normal range is ±0 (rule 1, decided before rounding), otherwise it is
    rounded to 24 bits, nearest even, and a rounded exponent above the range
    gives ±inf.  A NaN operand or 0 × inf gives the canonical NaN.

    Attributes
    ----------
    a, b : In(32)
        Operands, fp32 bit patterns.
    product : Out(32)
        ``a × b``, fp32 bit pattern.
    """

    a: In(32)
    b: In(32)
    product: Out(32)

    def elaborate(self, platform):
        m = Module()
        a, b = _classify(self.a, 23), _classify(self.b, 23)
        sign = a[0] ^ b[0]
        exp_a, exp_b, frac_a, frac_b = a[1], b[1], a[2], b[2]

        # 24 x 24 -> 48-bit significand product, value in [1, 4)
        sig = _net(m, "sig", Cat(frac_a, Const(1, 1)) * Cat(frac_b, Const(1, 1)))
        top = sig[47]
        # normalised: the leading one at bit 47, then 23 kept bits, the guard bit and the sticky bits
        norm = _net(m, "norm", Mux(top, sig, sig << 1)[:48])
        kept = norm[24:47]
        guard = norm[23]
        sticky = norm[0:23] != 0
        round_up = guard & (sticky | kept[0])
        rounded = _net(m, "rounded", kept + round_up)  # 24 bits: a carry out means 2.0
        carry = rounded[23]
        exp = _net(m, "exp", (exp_a + exp_b + top - 127).as_signed())  # biased exponent before rounding
        exp_rounded = _net(m, "exp_rounded", exp + carry)
        underflow = exp <= 0  # the exact product is below 2^-126
        overflow = (exp_rounded >= 0xFF) & ~underflow
        _product_out(m, self.product, sign, a, b, overflow, underflow, Cat(rounded[0:23], exp_rounded[0:8], sign))
        return m
