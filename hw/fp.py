"""Floating-point units of the processing elements, in Amaranth.

Holds the arithmetic of one PE, bit-exact to the
numerics rule of :mod:`nmsat.sim.numerics` (flush to zero, exact bf16 × bf16
products in fp32, fp32 sums rounded to nearest even, canonical NaN
``0x7FC00000``):

* :class:`Bf16Multiplier` — bf16 × bf16 → fp32 (exact, or ±inf / ±0 out of range);
* :class:`Fp32Adder` — fp32 + fp32 → fp32 (round to nearest even);
* :class:`Bf16Mac` — ``acc + a × b``, the two above in series;
* :class:`PipelinedMac` — the PE: a product register and the pipelined adder fed back on itself, four
  partial sums in flight (rule 5 of :mod:`nmsat.hw.numerics`);
* :class:`Fp32Multiplier` — fp32 × fp32 → fp32 (round to nearest even; the
  weight-update engine's products).

Not here: the sequence that drives a :class:`PipelinedMac` through a GEMM and its combine
(``nmsat.hw.core.compute``), rounding modes other than nearest-even, subnormal support, exception flags,
NaN payload propagation, and the host-side fp32 ↔ bf16 conversions.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .numerics import PARTIAL_SUMS

__all__ = ["ADDER_STAGES", "MULTIPLIER_STAGES", "CANONICAL_NAN_F32", "Bf16Multiplier", "Fp32Adder", "Bf16Mac", "PipelinedMac", "Fp32Multiplier"]

#: register stages of the pipelined :class:`Fp32Adder` (the PE's): one partial sum of rule 5 in flight per stage
ADDER_STAGES = PARTIAL_SUMS
#: register stages of the pipelined :class:`Fp32Multiplier` (the weight-update engine's)
MULTIPLIER_STAGES = 2
#: The only NaN any unit produces (quiet, positive, zero payload beyond the quiet bit).
CANONICAL_NAN_F32 = 0x7FC00000
_INF_F32 = 0x7F800000


def _net(m: Module, name: str, expr, *, register: bool = False) -> Signal:
    """A named signal driven by ``expr``, or with ``register`` its register (no reset: data only).

    Amaranth inlines an expression at every use, so an intermediate that is
    used more than once is given its own signal (keeps elaboration and the
    emitted netlist linear in the design size).
    """
    expr = Value.cast(expr)
    sig = Signal(expr.shape(), name=name, reset_less=register)
    if register:
        m.d.sync += sig.eq(expr)
    else:
        m.d.comb += sig.eq(expr)
    return sig


def _classify(x: Value, frac_bits: int):
    """(sign, biased exponent, fraction, zero-or-subnormal, NaN, inf) of a float with an 8-bit exponent."""
    exp, frac = x[frac_bits:frac_bits + 8], x[:frac_bits]
    top = exp == 0xFF
    return x[frac_bits + 8], exp, frac, exp == 0, top & (frac != 0), top & (frac == 0)


def _product_cases(a, b) -> Value:
    """The special cases of a product from its operands' classes (``_classify``), as bits (NaN: a NaN operand
    or 0 × inf; inf: an infinite operand; zero: a zero operand)."""
    _, _, _, zero_a, nan_a, inf_a = a
    _, _, _, zero_b, nan_b, inf_b = b
    return Cat(nan_a | nan_b | (zero_a & inf_b) | (inf_a & zero_b), inf_a | inf_b, zero_a | zero_b)


def _product_out(m: Module, out, sign, cases, overflow, underflow, normal) -> None:
    """Drive a multiplier's fp32 result: NaN, ±inf (an infinite operand or ``overflow``), ±0 (a zero operand
    or ``underflow``), else ``normal`` (``cases`` from :func:`_product_cases`)."""
    nan, inf, zero = cases[0], cases[1], cases[2]
    with m.If(nan):
        m.d.comb += out.eq(CANONICAL_NAN_F32)
    with m.Elif(inf | overflow):
        m.d.comb += out.eq(Cat(Const(_INF_F32, 31), sign))
    with m.Elif(zero | underflow):
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
        _product_out(m, self.product, sign, _product_cases(a, b), exp >= 0xFF, exp <= 0, Cat(frac, exp[0:8], sign))
        return m


class Fp32Adder(wiring.Component):
    """fp32 + fp32 rounded to nearest, ties to even (rule 3 of :mod:`nmsat.sim.numerics`).

    Combinational (latency 0), or with ``pipelined=True`` in :data:`ADDER_STAGES` (four) register stages,
    latency 4, a new pair of operands every cycle: (1) order, exponent difference and significands;
    (2) alignment; (3) the add, the leading-zero count and the normalising shift by its multiple of 8;
    (4) the rest of the shift, rounding and the special cases, into the registered ``sum``.  The PE and the
    drain use the pipelined form (``nmsat.hw.core.compute``) and the weight-update engine's lanes (``nmsat.hw.core.update``).

    Subnormal operands are read as zeros of the same sign and subnormal sums
    are flushed to a zero with the sign of the sum.  An exact zero sum of
    operands of opposite signs is +0, (−0) + (−0) = −0.  A sum beyond fp32's
    range is ±inf.  A NaN operand or inf − inf gives the canonical NaN
    ``0x7FC00000``; other infinities follow IEEE 754.

    Datapath (built for LUT count: the array repeats it rows × cols times, and a VU9P has about six
    DSP48E2 slices per thousand LUTs, so two shifters are multiplications by a power of two, each
    one DSP slice's 27 × 18 multiplier instead of a tree of LUT multiplexers): the operands are ordered by
    their raw magnitude bits (a subnormal orders like the zero it is read as); the significands get their
    hidden bit, or are zero for an exponent of 0; the smaller one is aligned in a 27-bit field (24 bits +
    guard + round + sticky): its significand times 2^(15 − d mod 16) holds it shifted right by d mod 16 with
    what was shifted out below, a shift by 16 more takes the product's upper bits, and the bits left below
    the field are ORed into the sticky bit (an exponent difference above 27 moves all of it there); one
    28-bit adder adds it, or its complement plus one; the sum's leading zeros are counted byte by byte
    (the first byte with a one, and the count within it: fewer LUTs and levels than one priority chain
    over 28 bits), a shift by their multiple of 8 is a multiplexer and the rest (0 .. 7) a product with
    2^rest; the fraction is rounded by adding the round-up bit to the packed exponent and fraction, so a
    carry out of the fraction lands in the exponent (and ``0x7F7FFFFF`` + 1 becomes inf).  Any correct
    round-to-nearest-even adder gives the same bits (``benchmarks/pe_logic_depth.py`` has the PE's cost).

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

    def __init__(self, *, pipelined: bool = False):
        self.pipelined = pipelined
        super().__init__()

    def elaborate(self, platform):
        m = Module()

        def cut(name, expr):  # a stage boundary: a register when pipelined, else a wire
            return _net(m, name, expr, register=self.pipelined)

        a, b = self.a, self.b
        sign_a, sign_b = a[31], b[31]
        top_a, top_b = a[23:31] == 0xFF, b[23:31] == 0xFF
        inf_a, nan_a = top_a & (a[0:23] == 0), top_a & (a[0:23] != 0)
        inf_b, nan_b = top_b & (b[0:23] == 0), top_b & (b[0:23] != 0)
        subtract = sign_a ^ sign_b
        # the special cases, decided from the operands: NaN, ±inf (its sign), an exact zero's sign
        special = Cat(nan_a | nan_b | (inf_a & inf_b & subtract), inf_a | inf_b, Mux(inf_a, sign_a, sign_b),
                      sign_a & sign_b)

        # order by magnitude: x is the larger, y the smaller
        swap = _net(m, "swap", b[0:31] > a[0:31])
        sign_x = Mux(swap, sign_b, sign_a)
        mag_x = _net(m, "mag_x", Mux(swap, b[0:31], a[0:31]))
        mag_y = _net(m, "mag_y", Mux(swap, a[0:31], b[0:31]))
        exp_x, exp_y = mag_x[23:31], mag_y[23:31]

        def significand(mag, exp):  # 24 bits with the hidden one; 0 for a (flushed) zero
            return Cat(mag[0:23], Const(1, 1)) & Cat(*([exp != 0] * 24))

        # stage 1 ends: the significands, the exponent difference and what the later stages need
        sig_x, sig_y = cut("sig_x", significand(mag_x, exp_x)), cut("sig_y", significand(mag_y, exp_y))
        diff = cut("diff", exp_x - exp_y)  # 0 .. 254 (exp_x >= exp_y)
        keep = cut("keep_1", Cat(exp_x, sign_x, subtract, special))

        # alignment, the shift by the low four bits of d as a product (a DSP slice's multiplier, not a LUT shifter):
        # sig_y * 2^(15 - d mod 16) holds (sig_y << 3) >> (d mod 16) in bits 12 .. 38 and what was shifted out
        # below them; a shift by 16 more (d[4]) takes bits 28 .. 38
        onehot = _net(m, "align_onehot", Const(1, 16) << (15 - diff[0:4])[0:4])
        shifted = _net(m, "align_product", sig_y * onehot[0:16])  # 40 bits
        far = diff[4]
        field = Mux(far, shifted[28:40], shifted[12:39])
        sticky = (shifted[0:12] != 0) | (far & (shifted[12:28] != 0))
        y_aligned = cut("y_aligned", Mux(diff > 27, Cat(sig_y != 0, Const(0, 26)), field | sticky))
        x_ext = cut("x_ext", Cat(Const(0, 3), sig_x))  # 27 bits
        keep = cut("keep_2", keep)
        exp_x, sign_x, subtract, special = keep[0:8], keep[8], keep[9], keep[10:14]

        # 28-bit sum / difference in one adder (x >= y, so the difference is not negative)
        flip = Cat(*([subtract] * 28))
        total = _net(m, "total", (x_ext + (Cat(y_aligned, Const(0, 1)) ^ flip) + subtract)[0:28])

        # normalise: the leading-zero count, a shift by its multiple of 8 (LUTs) in stage 3, and the rest (0 .. 7)
        # as a product in stage 4 (a DSP slice's multiplier)
        # by bytes from the top (bits 27..20, 19..12, 11..4, 3..0): the first with a one, and its own count
        groups = [total[max(0, hi - 8):hi] for hi in (28, 20, 12, 4)]
        any_one = [_net(m, f"lz_any_{i}", g != 0) for i, g in enumerate(groups)]
        first = Signal(2)  # the byte the leading one is in (3: none above the last)
        with m.If(any_one[0]):
            m.d.comb += first.eq(0)
        with m.Elif(any_one[1]):
            m.d.comb += first.eq(1)
        with m.Elif(any_one[2]):
            m.d.comb += first.eq(2)
        with m.Else():
            m.d.comb += first.eq(3)
        within = []
        for i, g in enumerate(groups):
            count = Signal(3, name=f"lz_in_{i}")
            width = len(g)
            for bit in range(width):  # priority in the byte: its highest one
                with m.If(g[bit]):
                    m.d.comb += count.eq(width - 1 - bit)
            within.append(count)
        lz_full = Signal(5)
        m.d.comb += lz_full.eq(Cat(Array(within)[first], first))
        coarse = Signal(28)
        m.d.comb += coarse.eq(Mux(first[1], Mux(first[0], total << 24, total << 16),
                                  Mux(first[0], total << 8, total))[0:28])
        coarse = cut("norm_high", coarse)
        lz = cut("lz", lz_full)
        nonzero = cut("nonzero", total != 0)
        keep = cut("keep_3", keep)
        exp_x, sign_x, special = keep[0:8], keep[8], keep[10:14]
        fine = lz[0:3]
        low = _net(m, "norm_product", coarse[0:26] * (Const(1, 8) << fine)[0:8])  # 34 bits
        # the top two bits: shifting by lz never moves a one out, so they only matter for fine = 0 or 1
        top = Mux(fine == 0, Cat(Const(0, 26), coarse[26:28]), Mux(fine == 1, Cat(Const(0, 27), coarse[26]), 0))
        norm = _net(m, "norm", low[0:28] | top)
        mant = norm[4:27]  # 23 fraction bits below the leading one
        guard = norm[3]
        rest = norm[0:3] != 0
        round_up = guard & (rest | mant[0])

        # biased exponent of the leading one: exp_x + 1 - lz, range -26 .. 255
        exp = _net(m, "exp", (exp_x + 1 - lz).as_signed())
        overflow = exp >= 0xFF
        underflow = exp <= 0
        rounded = Cat(mant, exp[0:8]) + round_up  # carries into the exponent; 0x7F800000 is inf

        is_nan, is_inf, inf_sign, zero_sign = special[0], special[1], special[2], special[3]
        assert ADDER_STAGES == 4, "the stage boundaries above are built for four stages"
        result = Signal(32)
        with m.If(is_nan):
            m.d.comb += result.eq(CANONICAL_NAN_F32)
        with m.Elif(is_inf):
            m.d.comb += result.eq(Cat(Const(_INF_F32, 31), inf_sign))
        with m.Elif(~nonzero):
            # exact zero: -0 only for (-0) + (-0)
            m.d.comb += result.eq(Cat(Const(0, 31), zero_sign))
        with m.Elif(overflow):
            m.d.comb += result.eq(Cat(Const(_INF_F32, 31), sign_x))
        with m.Elif(underflow):
            m.d.comb += result.eq(Cat(Const(0, 31), sign_x))
        with m.Else():
            m.d.comb += result.eq(Cat(rounded[0:31], sign_x))
        # stage 4 ends: the registered sum
        if self.pipelined:
            m.d.sync += self.sum.eq(result)
        else:
            m.d.comb += self.sum.eq(result)
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


class PipelinedMac(wiring.Component):
    """The PE: ``a × b`` into a product register, and a pipelined :class:`Fp32Adder` whose registered
    ``sum`` is its own other operand, so :data:`ADDER_STAGES` (four) partial sums circulate, one per stage.

    Each cycle the adder starts ``(zero_acc ? +0 : sum) + product`` and its result is ``sum`` four cycles
    later.  The product register loads when ``load`` is high: ``a × b`` (exact, :class:`Bf16Multiplier`),
    or with ``feed`` the current ``sum`` (+0 with ``feed_zero``), so the partials can be added pairwise
    through the same adder; otherwise it holds.  Fed a GEMM's products on consecutive cycles with
    ``zero_acc`` for the first four, step t lands in the partial of ``t mod 4``; the sequence that combines
    them as rule 5 says is the compute unit's (``nmsat.hw.core.compute``).

    Attributes
    ----------
    a, b : In(16)
        Operands, bf16 bit patterns (read in the cycle ``load`` is high).
    load, feed, feed_zero, zero_acc : In(1)
        Controls, above.
    sum : Out(32)
        The adder's registered output, fp32 bit pattern.
    """

    a: In(16)
    b: In(16)
    load: In(1)
    feed: In(1)
    feed_zero: In(1)
    zero_acc: In(1)
    sum: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = Bf16Multiplier()
        m.submodules.add = add = Fp32Adder(pipelined=True)
        product = Signal(32, reset_less=True)
        with m.If(self.load):
            m.d.sync += product.eq(Mux(self.feed, Mux(self.feed_zero, 0, add.sum), mul.product))
        m.d.comb += [mul.a.eq(self.a), mul.b.eq(self.b),
                     add.a.eq(Mux(self.zero_acc, 0, add.sum)), add.b.eq(product), self.sum.eq(add.sum)]
        return m


class Fp32Multiplier(wiring.Component):
    """fp32 × fp32 rounded to nearest, ties to even (``nmsat.sim.numerics.mul_f32``).

    Combinational (latency 0), or with ``pipelined=True`` in :data:`MULTIPLIER_STAGES` (two) register
    stages, latency 2, a new pair of operands every cycle: (1) the significand product (DSP slices), the
    exponent and the special cases; (2) normalising, rounding and the special cases, into the registered
    ``product``.  The weight-update engine's lanes use the pipelined form (``nmsat.hw.core.update``).

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

    def __init__(self, *, pipelined: bool = False):
        self.pipelined = pipelined
        super().__init__()

    def elaborate(self, platform):
        m = Module()

        def cut(name, expr):  # a stage boundary: a register when pipelined, else a wire
            return _net(m, name, expr, register=self.pipelined)

        a, b = _classify(self.a, 23), _classify(self.b, 23)
        exp_a, exp_b, frac_a, frac_b = a[1], b[1], a[2], b[2]
        # stage 1 ends: the 24 x 24 -> 48-bit significand product (value in [1, 4)), the exponent, the cases
        sig = cut("sig", Cat(frac_a, Const(1, 1)) * Cat(frac_b, Const(1, 1)))
        exp_sum = cut("exp_sum", exp_a + exp_b)  # 9 bits
        sign = cut("sign", a[0] ^ b[0])
        cases = cut("cases", _product_cases(a, b))
        top = sig[47]
        # normalised: the leading one at bit 47, then 23 kept bits, the guard bit and the sticky bits
        norm = _net(m, "norm", Mux(top, sig, sig << 1)[:48])
        kept = norm[24:47]
        guard = norm[23]
        sticky = norm[0:23] != 0
        round_up = guard & (sticky | kept[0])
        rounded = _net(m, "rounded", kept + round_up)  # 24 bits: a carry out means 2.0
        carry = rounded[23]
        exp = _net(m, "exp", (exp_sum + top - 127).as_signed())  # biased exponent before rounding
        exp_rounded = _net(m, "exp_rounded", exp + carry)
        underflow = exp <= 0  # the exact product is below 2^-126
        overflow = (exp_rounded >= 0xFF) & ~underflow
        result = Signal(32)
        _product_out(m, result, sign, cases, overflow, underflow, Cat(rounded[0:23], exp_rounded[0:8], sign))
        # stage 2 ends: the registered product
        if self.pipelined:
            m.d.sync += self.product.eq(result)
        else:
            m.d.comb += self.product.eq(result)
        return m
