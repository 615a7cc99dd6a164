"""The fp units of ``nmsat.hw.fp`` in Amaranth's simulator, bit-exact against ``nmsat.sim.numerics``.

Every check drives a whole list of vectors through one simulation (the
simulator is pure Python; one run per vector would be far too slow) and
compares bit patterns with the numpy reference.
"""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator
from hypothesis import Phase, given, settings, strategies as st

from nmsat.hw.fp import CANONICAL_NAN_F32, Bf16Mac, Bf16Multiplier, Fp32Adder, Fp32Multiplier, PipelinedMac
from nmsat.sim import numerics

U32 = st.integers(0, 2**32 - 1)
U16 = st.integers(0, 2**16 - 1)
# No shrinking: a failure message already lists the differing vectors, and
# shrinking 200-vector lists would re-run the simulator thousands of times.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


# ---------------------------------------------------------------- harness


def simulate(dut, inputs: dict[str, list[int]], output: str) -> np.ndarray:
    """Drive ``inputs`` (port name → list of values) through the combinational ``dut`` in one run."""
    ports = {name: getattr(dut, name) for name in inputs}
    columns = [list(map(int, values)) for values in inputs.values()]
    out_port = getattr(dut, output)
    results = []

    async def testbench(ctx):
        for row in zip(*columns):
            for port, value in zip(ports.values(), row):
                ctx.set(port, value)
            await ctx.delay(1e-9)
            results.append(ctx.get(out_port))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    return np.array(results, dtype=np.uint64).astype(np.uint32)


def assert_same(got, ref, operands: dict[str, np.ndarray]):
    ref = np.asarray(ref).view(np.uint32)
    bad = np.nonzero(got != ref)[0]
    if len(bad):
        lines = [
            " ".join(f"{k}={int(v[i]):#x}" for k, v in operands.items()) + f" -> {int(got[i]):#010x}, want {int(ref[i]):#010x}"
            for i in bad[:10]
        ]
        raise AssertionError(f"{len(bad)} of {len(got)} vectors differ:\n" + "\n".join(lines))


def check_adder(a, b):
    a = np.asarray(a, dtype=np.uint64).astype(np.uint32)
    b = np.asarray(b, dtype=np.uint64).astype(np.uint32)
    got = simulate(Fp32Adder(), {"a": a, "b": b}, "sum")
    ref = numerics.add_f32(a.view(np.float32), b.view(np.float32))
    assert_same(got, ref, {"a": a, "b": b})


def check_multiplier(a, b):
    a = np.asarray(a, dtype=np.uint32).astype(np.uint16)
    b = np.asarray(b, dtype=np.uint32).astype(np.uint16)
    got = simulate(Bf16Multiplier(), {"a": a, "b": b}, "product")
    assert_same(got, numerics.mul_bf16(a, b), {"a": a, "b": b})


def check_mac(acc, a, b):
    acc = np.asarray(acc, dtype=np.uint64).astype(np.uint32)
    a = np.asarray(a, dtype=np.uint32).astype(np.uint16)
    b = np.asarray(b, dtype=np.uint32).astype(np.uint16)
    got = simulate(Bf16Mac(), {"acc_in": acc, "a": a, "b": b}, "acc_out")
    ref = numerics.add_f32(acc.view(np.float32), numerics.mul_bf16(a, b))
    assert_same(got, ref, {"acc": acc, "a": a, "b": b})


def f32(x: float) -> int:
    return int(np.float32(x).view(np.uint32))


def fp32_bits(sign, exp, frac):
    return (np.asarray(sign, np.uint64) << 31) | (np.asarray(exp, np.uint64) << 23) | np.asarray(frac, np.uint64)


# ---------------------------------------------------------------- adder

# fp32 values whose pairwise sums hit the special cases, flushes and rounding corners
ADDER_EDGE_VALUES = [
    0x00000000, 0x80000000,                          # ±0
    0x7F800000, 0xFF800000,                          # ±inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF,  # NaNs: canonical, negative, signalling payloads
    0xFFFFFFFF, 0x7FC00001,
    0x00000001, 0x807FFFFF, 0x00400000, 0x80000001,  # subnormals
    0x00800000, 0x80800000, 0x00800001, 0x80800001,  # smallest normals
    0x00FFFFFF, 0x01000000, 0x81000001,
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F7FFFFE, 0x7F000000,  # largest normals
    0x73000000, 0x72FFFFFF,                          # half an ulp of the largest normal and below
    0x3F800000, 0xBF800000, 0x3F800001, 0xBF800001,  # 1 and its neighbours
    0x3F7FFFFF, 0xBF7FFFFF, 0x3FFFFFFF, 0x40000000,
    0x33800000, 0xB3800000, 0x33800001, 0x33000000,  # 2^-24 (half ulp of 1), 2^-24(1+2^-23), 2^-25
    0x34000000, 0xB4000000, 0x337FFFFF,
    0x4B800000, 0x4B7FFFFF, 0xCB800001,              # 2^24 and neighbours
    0x0D800000, 0x8D800001,                          # ~2^-100: huge exponent differences
    f32(1.5), f32(-3.0), f32(0.1), f32(-1e30), f32(1e-30),
]

ADDER_CASES = [
    # ties to even and sticky
    (f32(1.0), 0x33800000),             # 1 + 2^-24: tie, stays 1
    (0x3F800001, 0x33800000),           # (1 + 2^-23) + 2^-24: tie, rounds up to even
    (f32(1.0), 0x33800001),             # just above the tie: sticky decides, rounds up
    (f32(1.0), 0xB3800001),             # 1 - (2^-24 + 2^-47): below 1, rounds to 1 - 2^-24
    (f32(1.0), 0xB3000001),             # 1 - (2^-25 + 2^-48): tie-breaking sticky in subtraction
    (f32(1.0), 0xB3000000),             # 1 - 2^-25: tie, stays 1
    (f32(1.0), 0x0D800000),             # 1 + 2^-100: sticky only
    (f32(1.0), 0x8D800000),             # 1 - 2^-100: sticky only, rounds back to 1
    (0x3F800001, 0x8D800000),           # (1 + 2^-23) - 2^-100
    (0x4B800001, 0x3F800000),           # 2^24 + 2 + 1: tie above 2^24
    (0x4B800000, 0x3F800001),           # 2^24 + (1 + 2^-23): just above the tie
    (0x4B7FFFFF, 0x3F000000),           # (2^24 - 1) + 0.5: tie into the next binade
    # round up into a new binade
    (0x3F7FFFFF, 0x33000000),           # (1 - 2^-24) + 2^-25: tie, rounds to 1.0
    (0x3FFFFFFF, 0x34000000),           # (2 - 2^-23) + 2^-23 = 2 exactly
    (0x3FFFFFFF, 0x33800000),           # (2 - 2^-23) + 2^-24: tie, rounds up to 2
    # overflow
    (0x7F7FFFFF, 0x7F7FFFFF),
    (0x7F7FFFFF, 0x73000000),           # max + half an ulp: tie on an odd mantissa -> inf
    (0x7F7FFFFF, 0x72FFFFFF),           # max + just under half an ulp -> max
    (0xFF7FFFFF, 0xF3000000),
    (0x7F000000, 0x7F000000),           # 2^127 + 2^127 = 2^128 -> inf
    # exact cancellation and a - b with b just below a
    (f32(1.0), f32(-1.0)), (f32(-1.0), f32(1.0)), (0x7F7FFFFF, 0xFF7FFFFF),
    (f32(1.0), 0xBF7FFFFF),             # 1 - (1 - 2^-24) = 2^-24
    (0x3F800001, 0xBF800000),           # 2^-23
    (0x40000000, 0xBFFFFFFF),           # 2 - (2 - 2^-23)
    (0x4B800000, 0xCB7FFFFF),           # 2^24 - (2^24 - 1)
    (0x00800001, 0x80800000),           # difference is subnormal: +0
    (0x80800001, 0x00800000),           # ... and -0 when the larger is negative
    (0x01000000, 0x80FFFFFF),           # 2^-125 - (2^-125 - 2^-149): subnormal
    (0x01800000, 0x817FFFFF),           # 2^-124 - (2^-124 - 2^-148): subnormal
    (0x01000001, 0x80800000),           # 2^-125(1 + 2^-23) - 2^-126: normal
    (0x00800000, 0x00800000),           # min normal doubled
    (0x80000000, 0x80000000), (0x80000000, 0x00000000), (0x00000000, 0x80000000),
    (0x80000001, 0x80000001), (0x80000001, 0x00000001),  # subnormals flush first
    (0x00000001, 0x3F800000), (0x807FFFFF, 0x80800000),
]


def test_adder_edge_cases():
    values = np.array(ADDER_EDGE_VALUES, dtype=np.uint64)
    a, b = np.meshgrid(values, values, indexing="ij")
    cases = np.array(ADDER_CASES, dtype=np.uint64)
    check_adder(np.concatenate([a.ravel(), cases[:, 0], cases[:, 1]]),
                np.concatenate([b.ravel(), cases[:, 1], cases[:, 0]]))


def test_adder_hand_results():
    """A few results written out by hand, independent of numpy."""
    pairs = [
        ((f32(1.0), 0x33800000), f32(1.0)),
        ((0x3F800001, 0x33800000), 0x3F800002),
        ((f32(1.0), 0x33800001), 0x3F800001),
        ((f32(1.0), f32(-1.0)), 0x00000000),
        ((0x80000000, 0x80000000), 0x80000000),
        ((0x80800001, 0x00800000), 0x80000000),
        ((0x7F7FFFFF, 0x73000000), 0x7F800000),
        ((0x7F800000, 0xFF800000), CANONICAL_NAN_F32),
        ((0xFFC00001, f32(1.0)), CANONICAL_NAN_F32),
        ((0xFF800000, f32(1e30)), 0xFF800000),
    ]
    got = simulate(Fp32Adder(), {"a": [p[0][0] for p in pairs], "b": [p[0][1] for p in pairs]}, "sum")
    assert [int(g) for g in got] == [want for _, want in pairs]


@settings(max_examples=15, deadline=None, phases=NO_SHRINK)
@given(st.lists(st.tuples(U32, U32), min_size=200, max_size=200))
def test_adder_random_bits(pairs):
    a, b = zip(*pairs)
    check_adder(a, b)


@settings(max_examples=20, deadline=None, phases=NO_SHRINK)
@given(st.lists(st.tuples(U32, st.integers(-26, 26), st.integers(0, 2**23 - 1), st.booleans(), st.booleans()),
                min_size=200, max_size=200))
def test_adder_close_exponents(rows):
    """Operands whose exponents differ by at most 26, half of them with nearly equal significands."""
    a, b = [], []
    for x, delta, frac, opposite, near in rows:
        exp_b = min(max(((x >> 23) & 0xFF) + delta, 0), 254)
        if near:  # significand within a few ulps of x's: deep cancellation
            frac = ((x & 0x7FFFFF) + (frac & 0xF) - 8) % (1 << 23)
        sign_b = (x >> 31) ^ opposite
        a.append(x)
        b.append((sign_b << 31) | (exp_b << 23) | frac)
    check_adder(a, b)


def test_adder_close_exponents_bulk():
    """Many seeded vectors near cancellation and alignment boundaries (exponent gaps 0..30)."""
    rng = np.random.default_rng(20240611)
    n = 24000
    sign_a = rng.integers(0, 2, n)
    exp_a = rng.integers(1, 255, n)
    frac_a = rng.integers(0, 1 << 23, n)
    gap = rng.integers(-30, 31, n) * (rng.random(n) < 0.5) + rng.integers(-2, 3, n) * (rng.random(n) >= 0.5)
    exp_b = np.clip(exp_a + gap, 0, 255)
    frac_b = np.where(rng.random(n) < 0.4, (frac_a + rng.integers(-4, 5, n)) % (1 << 23), rng.integers(0, 1 << 23, n))
    # a few significands with long runs of ones / zeros for the rounding carry and sticky paths
    special = rng.random(n) < 0.2
    frac_b = np.where(special, rng.choice([0, 1, (1 << 23) - 1, (1 << 22), (1 << 22) - 1], n), frac_b)
    sign_b = np.where(rng.random(n) < 0.7, 1 - sign_a, sign_a)
    check_adder(fp32_bits(sign_a, exp_a, frac_a), fp32_bits(sign_b, exp_b, frac_b))


# ---------------------------------------------------------------- multiplier

MUL_EDGE_VALUES = [
    0x0000, 0x8000,                   # ±0
    0x0001, 0x807F, 0x0040,           # subnormals
    0x0080, 0x8080, 0x00FF,           # smallest normals
    0x7F7F, 0xFF7F, 0x7F00,           # largest normals
    0x7F80, 0xFF80,                   # ±inf
    0x7FC0, 0xFFC0, 0x7F81, 0x7FFF,   # NaNs
    0x3F80, 0xBF80, 0x3FFF, 0x4000, 0x3F81, 0x3FC0, 0x3F00,
    0x1F80, 0x1F00, 0x5F80, 0x5FFF, 0x2000, 0x2080, 0x6000, 0x1FFF,  # around 2^±64
]


def test_multiplier_edge_cases():
    values = np.array(MUL_EDGE_VALUES, dtype=np.uint32)
    a, b = np.meshgrid(values, values, indexing="ij")
    check_multiplier(a.ravel(), b.ravel())


def test_multiplier_exponent_grid():
    """Every pair of exponents (including 0 and 255), with mantissas cycling through corner and random values."""
    rng = np.random.default_rng(7)
    exp_a, exp_b = (g.ravel() for g in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    n = exp_a.size
    corners = np.array([0, 0x7F, 0x40, 0x01, 0x3F])
    frac_a = np.where(np.arange(n) % 2 == 0, corners[np.arange(n) % 5], rng.integers(0, 128, n))
    frac_b = np.where(np.arange(n) % 3 == 0, corners[(np.arange(n) // 5) % 5], rng.integers(0, 128, n))
    sign_a, sign_b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    check_multiplier((sign_a << 15) | (exp_a << 7) | frac_a, (sign_b << 15) | (exp_b << 7) | frac_b)


def test_multiplier_all_mantissas_at_range_edges():
    """All 128 x 128 mantissa pairs, at exponents where the product's top bit decides overflow or underflow."""
    fa, fb = (g.ravel() for g in np.meshgrid(np.arange(128), np.arange(128), indexing="ij"))
    n = fa.size
    exp_pairs = np.array([(127, 127), (64, 63), (63, 63), (191, 191), (190, 191), (1, 126), (254, 128)])
    choice = np.arange(n) % len(exp_pairs)
    sign = np.arange(n) % 4
    check_multiplier(((sign & 1) << 15) | (exp_pairs[choice, 0] << 7) | fa,
                     ((sign >> 1) << 15) | (exp_pairs[choice, 1] << 7) | fb)


@settings(max_examples=15, deadline=None, phases=NO_SHRINK)
@given(st.lists(st.tuples(U16, U16), min_size=200, max_size=200))
def test_multiplier_random_bits(pairs):
    a, b = zip(*pairs)
    check_multiplier(a, b)


# ---------------------------------------------------------------- MAC


def test_mac_edge_cases():
    acc = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x3F800000,
           0xBF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0xBFC00000]
    ops = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x3F80, 0xBF80, 0x7F7F, 0x0080, 0x3FC0]
    grid = np.array(np.meshgrid(acc, ops, ops, indexing="ij"), dtype=np.uint64).reshape(3, -1)
    check_mac(*grid)


@settings(max_examples=10, deadline=None, phases=NO_SHRINK)
@given(st.lists(st.tuples(U32, U16, U16), min_size=200, max_size=200), st.booleans())
def test_mac_random(rows, near):
    acc, a, b = (np.array(c, dtype=np.int64) for c in zip(*rows))
    if near:  # accumulator exponent near the product's: the interesting additions
        prod_exp = np.clip(((a >> 7) & 0xFF) + ((b >> 7) & 0xFF) - 127 + (acc & 3) - 1, 1, 254)
        acc = (acc & 0x807FFFFF) | (prod_exp << 23)
    check_mac(acc, a, b)


# ---------------------------------------------------------------- Verilog


def test_units_convert_to_verilog():
    for unit, ports in [(Bf16Multiplier, ("a", "b", "product")), (Fp32Adder, ("a", "b", "sum")),
                        (Bf16Mac, ("acc_in", "a", "b", "acc_out"))]:
        text = verilog.convert(unit(), name=unit.__name__)
        assert f"module {unit.__name__}" in text
        for port in ports:
            assert port in text


# ---------------------------------------------------------------- fp32 multiplier (the weight-update engine's)


def check_fp32_multiplier(a, b):
    a = np.asarray(a, dtype=np.uint64).astype(np.uint32)
    b = np.asarray(b, dtype=np.uint64).astype(np.uint32)
    got = simulate(Fp32Multiplier(), {"a": a, "b": b}, "product")
    ref = numerics.mul_f32(a.view(np.float32), b.view(np.float32))
    assert_same(got, ref, {"a": a, "b": b})


def test_fp32_multiplier_edge_values_pairwise():
    """Every pair of the adder's edge values: NaN, inf, 0 × inf, flushes, the largest and smallest normals."""
    values = np.array(ADDER_EDGE_VALUES, dtype=np.uint64)
    a, b = np.meshgrid(values, values)
    check_fp32_multiplier(a.ravel(), b.ravel())


def test_fp32_multiplier_rounding_and_range_corners():
    """Ties to even, sticky bits, a carry into the next binade, products just either side of 2^-126 and of the
    largest normal — the places a 48-bit product's rounding goes wrong."""
    cases = [
        (0x3F800001, 0x3F800001),  # (1 + 2^-23)^2 = 1 + 2^-22 + 2^-46: sticky only
        (0x3FFFFFFF, 0x3FFFFFFF),  # (2 - 2^-23)^2: carry into the next binade after rounding
        (0x3FC00001, 0x3FAAAAAB),  # long tails
        (0x00800000, 0x3F800000), (0x00800000, 0x3F7FFFFF),  # 2^-126 · 1 and · (1 - 2^-24): exact just below
        (0x00800001, 0x3F7FFFFF),  # (2^-126)(1 + 2^-23)(1 - 2^-24): exactly above, rounds to 2^-126
        (0x00FFFFFF, 0x3F000001),  # just above 2^-126 after the product
        (0x00FFFFFF, 0x3F000000),  # just below: flushed although it would round up to 2^-126
        (0x7F7FFFFF, 0x3F800001),  # max · (1 + 2^-23): overflows after rounding
        (0x7F7FFFFF, 0x3F7FFFFF),  # max · (1 - 2^-24): rounds back to max
        (0x5F800000, 0x5F800000), (0x5F7FFFFF, 0x60000000),  # 2^64 · 2^64 = 2^128 -> inf; just under
        (0x1F800000, 0x20000000), (0x1F800000, 0x1F800000),  # 2^-64 · 2^-63, 2^-64 · 2^-64 = 2^-128 -> 0
    ]
    a = [x for x, _ in cases] + [y for _, y in cases]
    b = [y for _, y in cases] + [x for x, y in cases]
    check_fp32_multiplier(a + [x | 0x80000000 for x in a], b + b)


@settings(max_examples=10, deadline=None, phases=NO_SHRINK)
@given(st.lists(st.tuples(U32, U32), min_size=200, max_size=200))
def test_fp32_multiplier_random_bit_patterns(pairs):
    check_fp32_multiplier([a for a, _ in pairs], [b for _, b in pairs])


def test_fp32_multiplier_random_values_near_one_and_small_weights():
    """The weight update's regime: learning rates and momenta times weights and gradients."""
    rng = np.random.default_rng(5)
    a = (rng.standard_normal(3000) * 10.0 ** rng.integers(-4, 2, 3000)).astype(np.float32)
    b = (rng.standard_normal(3000) * 10.0 ** rng.integers(-40, 1, 3000)).astype(np.float32)
    check_fp32_multiplier(a.view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------- the pipelined adder and the PE


def run_clocked(dut, rows: list[dict[str, int]], output: str, settle: int) -> list[int]:
    """Drive one row of inputs per clock cycle into ``dut``; return ``output`` sampled in each cycle, then
    ``settle`` more cycles with the last inputs held."""
    out_port = getattr(dut, output)
    samples = []

    async def testbench(ctx):
        for row in rows + [rows[-1]] * settle:
            for name, value in row.items():
                ctx.set(getattr(dut, name), int(value))
            samples.append(ctx.get(out_port))  # before the edge: what the registers hold this cycle
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return samples


@settings(max_examples=3, deadline=None, phases=NO_SHRINK)
@given(st.lists(st.tuples(U32, U32), min_size=60, max_size=60))
def test_pipelined_adder_takes_a_pair_every_cycle_and_answers_four_later(pairs):
    """The PE's adder: pairs one per cycle (random bits and the edge values), each sum out ADDER_STAGES
    cycles later, the bits of the combinational adder's and the rule's."""
    from nmsat.hw.fp import ADDER_STAGES
    edges = np.array(ADDER_EDGE_VALUES, dtype=np.uint64)
    a = np.concatenate([np.array([p[0] for p in pairs], np.uint64), edges, edges[::-1]]).astype(np.uint32)
    b = np.concatenate([np.array([p[1] for p in pairs], np.uint64), edges[::-1], edges]).astype(np.uint32)
    got = run_clocked(Fp32Adder(pipelined=True), [{"a": x, "b": y} for x, y in zip(a, b)], "sum", ADDER_STAGES)
    got = np.array(got[ADDER_STAGES:], dtype=np.uint64).astype(np.uint32)
    assert_same(got, numerics.add_f32(a.view(np.float32), b.view(np.float32)), {"a": a, "b": b})


def test_pipelined_multiplier_takes_a_pair_every_cycle_and_answers_two_later():
    """The weight-update engine's multiplier: pairs one per cycle (the rounding corners, the edge values
    pairwise, random values), each product out MULTIPLIER_STAGES cycles later with the rule's bits."""
    from nmsat.hw.fp import MULTIPLIER_STAGES
    edges = np.array(ADDER_EDGE_VALUES, dtype=np.uint64)
    ea, eb = np.meshgrid(edges, edges)
    rng = np.random.default_rng(11)
    ra = (rng.standard_normal(100) * 10.0 ** rng.integers(-4, 2, 100)).astype(np.float32).view(np.uint32)
    rb = (rng.standard_normal(100) * 10.0 ** rng.integers(-40, 1, 100)).astype(np.float32).view(np.uint32)
    a = np.concatenate([ea.ravel(), [0x3FFFFFFF, 0x00FFFFFF, 0x7F7FFFFF], ra]).astype(np.uint32)
    b = np.concatenate([eb.ravel(), [0x3FFFFFFF, 0x3F000001, 0x3F800001], rb]).astype(np.uint32)
    got = run_clocked(Fp32Multiplier(pipelined=True), [{"a": x, "b": y} for x, y in zip(a, b)], "product",
                      MULTIPLIER_STAGES)
    got = np.array(got[MULTIPLIER_STAGES:], dtype=np.uint64).astype(np.uint32)
    assert_same(got, numerics.mul_f32(a.view(np.float32), b.view(np.float32)), {"a": a, "b": b})


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8, 11])
def test_pe_driven_through_a_gemm_and_its_combine_gives_rule_5(steps):
    """A PipelinedMac fed ``steps`` products on consecutive cycles (the first four on +0), then the combine
    the compute unit runs (feed q0, q1 + q0, feed q2, q3 + q2, feed q01, q23 + q01; +0 for the empty
    partials of a short GEMM): the sum 13 cycles after the last product is rule 5's, as
    ``numerics.mac_sequence`` computes it."""
    rng = np.random.default_rng(steps)
    x = (rng.standard_normal(steps) * 2.0 ** rng.integers(-20, 20, steps)).astype(np.float32)
    a_bits, b_bits = numerics.f32_to_bf16_bits(x), numerics.f32_to_bf16_bits(rng.standard_normal(steps).astype(np.float32))
    idle = {"a": 0, "b": 0, "load": 0, "feed": 0, "feed_zero": 0, "zero_acc": 0}
    rows = [dict(idle, a=a_bits[t], b=b_bits[t], load=1) for t in range(steps)]  # data cycles d_0 .. d_last
    zero_next = [t < 4 for t in range(steps)]  # the cycle after a data cycle, its product enters on +0?
    tail = [dict(idle) for _ in range(13)]  # tail[j - 1] is cycle d_last + j
    for j, row in enumerate(tail, start=1):
        row["feed"] = row["load"] = int(j in (2, 4, 7))
        row["feed_zero"] = int((j == 2 and steps <= 3) or (j == 4 and steps <= 1))
        row["zero_acc"] = int(j == 3 and steps <= 2)
    rows += tail
    for t, zero in enumerate(zero_next):  # a step's product enters the adder in the cycle after its data
        rows[t + 1]["zero_acc"] |= int(zero)
    # an earlier GEMM's products first: the ring holds its sums, which the first four steps must not add
    junk = [dict(idle, a=0x3F80 + i, b=0x4040, load=1) for i in range(6)]
    got = run_clocked(PipelinedMac(), junk + rows, "sum", 1)
    final = np.uint32(got[len(junk) + steps - 1 + 13])
    want = numerics.mac_sequence(a_bits[:, None], b_bits[:, None])[0, 0]
    assert final == want.view(np.uint32), (hex(final), hex(want.view(np.uint32)))
