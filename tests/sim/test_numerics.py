"""The numerics rule in numpy against independent references (torch, float64, hand cases)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from nmsat.sim import numerics as nx

F32 = np.float32
TINY = np.float32(1.1754944e-38)  # smallest normal


def bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64))
def test_f32_to_bf16_rounds_like_torch(values):
    x = np.array(values, dtype=np.float32)
    ours = nx.f32_to_bf16_bits(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, ref)


def test_bf16_nan_is_canonical_and_round_trip_exact():
    assert nx.f32_to_bf16_bits(np.array([np.nan, -np.nan], dtype=F32)).tolist() == [0x7FC0, 0x7FC0]
    b = np.arange(0, 1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = (b & 0x7F80) != 0x7F80
    back = nx.f32_to_bf16_bits(nx.bf16_bits_to_f32(b))
    assert np.array_equal(back[finite], b[finite])


def test_flush_to_zero_keeps_sign_and_canonical_nan():
    x = np.array([1e-40, -1e-40, TINY, -TINY, np.inf, np.nan], dtype=F32)
    out = bits(nx.flush_f32(x))
    assert out.tolist() == [0, 0x80000000, bits(TINY), bits(-TINY), 0x7F800000, 0x7FC00000]


def test_add_rules():
    assert bits(nx.add_f32(F32(1.0), F32(-1.0))) == 0  # x + (-x) = +0
    assert bits(nx.add_f32(F32(-0.0), F32(-0.0))) == 0x80000000
    assert bits(nx.add_f32(F32(np.inf), F32(-np.inf))) == 0x7FC00000
    assert bits(nx.add_f32(F32(3e38), F32(3e38))) == 0x7F800000
    # tiny difference of normals is a subnormal: flushed, with its sign
    assert bits(nx.add_f32(TINY * F32(1.5), -TINY * F32(2))) == 0x80000000
    assert nx.add_f32(F32(1.0), F32(2.0 ** -24)) == F32(1.0)  # tie to even
    assert nx.add_f32(F32(1.0 + 2 ** -23), F32(2.0 ** -24)) == F32(1.0 + 2 ** -22)


def test_products_exact_or_flushed():
    a = nx.f32_to_bf16_bits(np.array([1.5, 2.0 ** -70, 2.0 ** 100, 0.0, np.inf], dtype=F32))
    b = nx.f32_to_bf16_bits(np.array([-1.25, 2.0 ** -70, 2.0 ** 100, np.inf, -2.0], dtype=F32))
    p = nx.mul_bf16(a, b)
    assert p[0] == F32(-1.875)
    assert bits(p[1:]).tolist() == [0, 0x7F800000, 0x7FC00000, 0xFF800000]


def _rule5_scalar(products):
    """Rule 5 on a list of exact products (float64), by hand: four partials from +0, step t into partial
    (t - T) mod 4, one fp32 rounding per sum, then (p0 + p1) + (p2 + p3)."""
    parts = [F32(0.0)] * 4
    for t, product in enumerate(products):
        i = (t - len(products)) % 4
        parts[i] = F32(np.float64(parts[i]) + product)
    return F32(np.float64(F32(np.float64(parts[0]) + np.float64(parts[1])))
               + np.float64(F32(np.float64(parts[2]) + np.float64(parts[3]))))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_mac_sequence_equals_scalar_loop(k, seed):
    rng = np.random.default_rng(seed)
    a = nx.f32_to_bf16_bits(rng.standard_normal((k, 3)).astype(F32) * F32(2.0) ** rng.integers(-6, 6, (k, 3)))
    b = nx.f32_to_bf16_bits(rng.standard_normal((k, 2)).astype(F32))
    out = nx.mac_sequence(a, b)
    af, bf = nx.bf16_bits_to_f32(a), nx.bf16_bits_to_f32(b)
    for r in range(3):
        for c in range(2):
            # float64 products are exact
            expected = _rule5_scalar([np.float64(af[i, r]) * np.float64(bf[i, c]) for i in range(k)])
            assert bits(out[r, c]) == bits(expected)


def test_mac_sequence_order_is_four_partials_not_a_chain():
    """[2^24, 1, 1, -2^24] · ones: the four partials give (2^24 + 1) + (1 - 2^24) = 1; one chain in increasing
    k gives 0 (2^24 + 1 rounds to 2^24 twice), the partials paired otherwise 2; five steps move the deal."""
    a = nx.f32_to_bf16_bits(np.array([[2.0 ** 24], [1.0], [1.0], [-2.0 ** 24]], dtype=F32))
    ones = nx.f32_to_bf16_bits(np.ones((4, 1), dtype=F32))
    assert nx.mac_sequence(a, ones)[0, 0] == F32(1.0)
    # five steps: step 0 and step 4 share partial 3 (2^24 + -2^24 = 0), the ones stand alone: 2
    a5 = nx.f32_to_bf16_bits(np.array([[2.0 ** 24], [1.0], [1.0], [1.0], [-2.0 ** 24]], dtype=F32))
    assert nx.mac_sequence(a5, nx.f32_to_bf16_bits(np.ones((5, 1), dtype=F32)))[0, 0] == F32(3.0)


def _rule_loop(a_bits, b_bits):
    """mac_sequence written with the elementwise rule functions only (no fast path)."""
    k = a_bits.shape[0]
    parts = [np.zeros((a_bits.shape[1], b_bits.shape[1]), dtype=F32) for _ in range(4)]
    for i in range(k):
        parts[(i - k) % 4] = nx.add_f32(parts[(i - k) % 4], nx.mul_bf16(a_bits[i][:, None], b_bits[i][None, :]))
    return nx.add_f32(nx.add_f32(parts[0], parts[1]), nx.add_f32(parts[2], parts[3]))


@pytest.mark.parametrize("scale_exp", [0, -100, -118, -124, 60, 64])
def test_mac_sequence_fast_and_careful_paths_agree_with_the_rule(scale_exp):
    """Scales of 2^-100 and below make products reach the subnormal range (careful path); 2^60 overflows."""
    rng = np.random.default_rng(scale_exp + 1000)
    a = rng.standard_normal((40, 4)).astype(F32) * F32(2.0) ** scale_exp
    b = rng.standard_normal((40, 3)).astype(F32) * F32(2.0) ** rng.integers(-3, 4, (40, 3)).astype(F32)
    a[3, 1], b[7, 2] = np.inf, np.nan
    abits, bbits = nx.f32_to_bf16_bits(a), nx.f32_to_bf16_bits(b)
    assert np.array_equal(bits(nx.mac_sequence(abits, bbits)), bits(_rule_loop(abits, bbits)))


@pytest.mark.parametrize("per_row", [False, True], ids=["dense", "per-row"])
@pytest.mark.parametrize("values", ["normal", "specials", "tiny"])
def test_compiled_mac_kernels_give_numpys_bits(monkeypatch, per_row, values):
    """The numba loops of the fast path (and the widen/flush pass) ≡ numpy's loop, bit for bit; "tiny"
    operands take the slow path (products that may underflow) in both."""
    from nmsat.sim import numerics as nm
    rng = np.random.default_rng(len(values) + per_row)
    x = rng.standard_normal((3, 2, 37, 4)).astype(np.float32)
    y = rng.standard_normal((3, 2, 37, 4, 5) if per_row else (3, 2, 37, 5)).astype(np.float32)
    if values == "specials":
        x.flat[::17] = np.inf
        y.flat[::23] = np.nan
        x.flat[5::29] = -0.0
    elif values == "tiny":
        x *= np.float32(2.0 ** -70)
        y *= np.float32(2.0 ** -60)
    a_bits, b_bits = nm.f32_to_bf16_bits(x), nm.f32_to_bf16_bits(y)
    a_bits.flat[3] = 0x0001  # a bf16 subnormal: read as zero
    fn = nm.mac_sequence_per_row if per_row else nm.mac_sequence
    assert nm._KERNELS is not None
    compiled = fn(a_bits, b_bits)
    monkeypatch.setattr(nm, "_KERNELS", None)
    plain = fn(a_bits, b_bits)
    assert np.array_equal(compiled.view(np.uint32), plain.view(np.uint32))


@pytest.mark.parametrize("values", ["normal", "specials", "tiny"])
def test_gathered_mac_is_the_per_row_mac_on_the_gathered_words(values):
    """The sparse GEMM's compiled kernel reads B words through the rows' indices; it must give the bits of
    the per-row MAC on the gathered operand (fast path, and the slow path it falls back to)."""
    from nmsat.sim import numerics as nm
    rng = np.random.default_rng(len(values))
    t, j, r, w, c = 3, 24, 4, 12, 5
    x = rng.standard_normal((t, j, r)).astype(np.float32)
    words = rng.standard_normal((t, w, c)).astype(np.float32)
    if values == "specials":
        words.flat[::13] = np.nan
        x.flat[::7] = -np.inf
    elif values == "tiny":
        x *= np.float32(2.0 ** -70)
        words *= np.float32(2.0 ** -60)
    a_bits, b_bits = nm.f32_to_bf16_bits(x), nm.f32_to_bf16_bits(words)
    rows = rng.integers(0, w, (t, j, r))
    gathered = b_bits[np.arange(t)[:, None, None], rows]  # [t, j, r, c]
    got = nm.mac_sequence_gathered(a_bits, b_bits, rows)
    assert np.array_equal(got.view(np.uint32), nm.mac_sequence_per_row(a_bits, gathered).view(np.uint32))
