"""GEMM shapes of the training stages of Linear and Conv2d layers."""

import pytest

from nmsat.dataflow.layers import conv2d_gemms, linear_gemms


def test_gemm_shapes():
    ff, bp, wu = conv2d_gemms("c", 32, 64, 128, 16, 16, 3, stride=2, padding=1)
    assert (ff.m, ff.n, ff.k) == (128, 32 * 8 * 8, 576) and (bp.m, bp.k) == (576, 128) and (wu.n, wu.k) == (576, 2048)
    assert ff.macs == bp.macs == wu.macs
    assert [g.stage for g in linear_gemms("l", 8, 4, 2)] == ["FF", "BP", "WU"]
    with pytest.raises(ValueError, match="groups=3 must divide"):
        conv2d_gemms("c", 1, 8, 8, 4, 4, 3, groups=3)
