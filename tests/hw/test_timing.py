"""The vectorised burst count (``nmsat.hw.timing.burst_counts``) is the scalar cut's count, transfer by transfer."""

import numpy as np
import pytest

from nmsat.hw.config import SATConfig
from nmsat.hw.timing import burst_count, burst_counts


@pytest.mark.parametrize("cfg", [SATConfig.tiny(), SATConfig.vcu1525()], ids=["tiny", "vcu1525"])
def test_burst_counts_match_the_scalar_cut(cfg):
    rng = np.random.default_rng(0)
    bus = cfg.bus_bytes
    n = 3000
    addr = bus * rng.integers(0, 1 << 16, n)
    rows = rng.integers(1, 300, n)
    word = bus * rng.choice([1, 2, 4], n)  # one beat (the closed form), or several (one by one)
    stride = np.where(rng.random(n) < 0.5, word, word + bus * rng.integers(1, 70, n))  # contiguous or strided
    expected = [burst_count(cfg, int(a), int(r), int(w), int(s)) for a, r, w, s in zip(addr, rows, word, stride)]
    assert burst_counts(cfg, addr, rows, word, stride).tolist() == expected
