"""The numpy N:M rule and compressed form against BDWP's torch masks."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from nmsat.hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits
from nmsat.hw.sparsity import compress, nm_keep
from nmsat.sw.bdwp import nm_mask

PATTERNS = [(1, 4), (2, 4), (1, 8), (2, 8), (4, 8), (3, 4), (8, 16), (2, 2)]
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 2.0, -2.0, 1e-40, 3.0], dtype=np.float32)


@settings(max_examples=300, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), rows=st.integers(1, 4), length=st.integers(1, 37), seed=st.integers(0, 2**31),
       special=st.booleans())
def test_nm_keep_matches_nm_mask(pattern, rows, length, seed, special):
    n, m = pattern
    rng = np.random.default_rng(seed)
    w = rng.choice(SPECIAL, (rows, length)) if special else rng.integers(-2, 3, (rows, length)).astype(np.float32)
    expected = nm_mask(torch.from_numpy(w), n, m, dim=1).numpy()
    assert np.array_equal(nm_keep(w, n, m), expected)


@settings(max_examples=200, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), rows=st.integers(1, 4), length=st.integers(1, 37), seed=st.integers(0, 2**31))
def test_compress_holds_the_kept_values_in_index_order(pattern, rows, length, seed):
    n, m = pattern
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, length)).astype(np.float32)
    bits, idx = compress(w, n, m)
    groups = -(-length // m)
    assert bits.shape == idx.shape == (rows, groups * n)
    keep = nm_keep(w, n, m)
    dense = np.zeros((rows, groups * m), dtype=np.float32)
    for r in range(rows):
        for j in range(groups * n):
            g, i = divmod(j, n)
            k = g * m + int(idx[r, j])
            assert idx[r, j] < m
            if j % n:
                assert idx[r, j] > idx[r, j - 1]  # increasing index within a group
            if k < length and keep[r, k]:
                dense[r, k] = bf16_bits_to_f32(bits[r, j])
            else:
                assert k >= length and bits[r, j] == 0  # unfilled slots: +0 at a pad position
    masked = np.where(keep, bf16_bits_to_f32(f32_to_bf16_bits(w)), 0)
    assert np.array_equal(dense[:, :length], masked)


def test_bad_patterns():
    with pytest.raises(ValueError, match="1 <= n <= m"):
        nm_keep(np.zeros((2, 8), np.float32), 3, 2)
