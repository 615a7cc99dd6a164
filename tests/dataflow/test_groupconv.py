"""Packed group GEMMs (``nmsat.dataflow.groupconv``): several small groups per array pass through the sparse
mode's per-row select, bit-identical to each group's own dense GEMM, and faster where groups are small."""

import numpy as np
import pytest

from nmsat.dataflow.gemm import compile_gemm, read_c
from nmsat.dataflow.groupconv import compile_packed_groups, pack_factor, read_groups
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel

TINY, VCU = SATConfig.tiny(), SATConfig.vcu1525()


def run(cfg, program):
    memory = program.memory.copy()
    result = CoreModel(cfg).run_sequence(memory, program.runs)
    assert result.ok and result.race_free
    return memory, result.cycles


def test_pack_factor_fills_the_rows_with_a_pattern_the_core_has():
    assert pack_factor(VCU, 1) == (8, 8) and pack_factor(VCU, 2) == (8, 8)  # M <= 8: 8 and 16 of 32 rows
    assert pack_factor(VCU, 4) == (8, 8) and pack_factor(VCU, 8) == (4, 4) and pack_factor(VCU, 16) == (2, 4)
    assert pack_factor(VCU, 32) == (1, 0) and pack_factor(TINY, 1) == (4, 4) and pack_factor(TINY, 4) == (1, 0)
    with pytest.raises(ValueError, match="at least one output channel"):
        pack_factor(VCU, 0)


@pytest.mark.parametrize("cfg,shape", [(TINY, (1, 9, 9, 13)), (TINY, (2, 5, 18, 9)), (TINY, (1, 6, 27, 5)),
                                       (VCU, (1, 11, 9, 40)), (VCU, (4, 16, 36, 70)), (VCU, (8, 5, 72, 33)),
                                       (VCU, (16, 3, 144, 32))])
def test_packed_groups_are_bit_identical_to_each_groups_own_gemm(cfg, shape):
    """Random groups (a last pack not full among them), with zeros, negative zeros and large values in A:
    every output of the packed programs has the bits of the group's own dense GEMM on the simulator, and
    matches the product in float64 to bf16 inputs' precision."""
    cg, groups, kg, n = shape
    rng = np.random.default_rng(sum(shape))
    a = (rng.standard_normal((groups, cg, kg)) * 2.0 ** rng.integers(-8, 8, (groups, cg, kg))).astype(np.float32)
    a[rng.random(a.shape) < 0.2] = 0.0
    a[rng.random(a.shape) < 0.05] = -0.0
    b = rng.standard_normal((groups, kg, n)).astype(np.float32)
    packed = compile_packed_groups(cfg, a, b)
    assert len(packed.programs) == -(-groups // packed.per_pack)
    out = read_groups(packed, [run(cfg, p)[0] for p in packed.programs])
    for p in range(groups):
        alone = compile_gemm(cfg, a[p], b[p])
        assert np.array_equal(out[p].view(np.uint32), read_c(alone, run(cfg, alone)[0]).view(np.uint32)), p
    ref = np.einsum("gck,gkn->gcn", a.astype(np.float64), b.astype(np.float64))
    scale = np.einsum("gck,gkn->gcn", np.abs(a).astype(np.float64), np.abs(b).astype(np.float64))
    assert np.all(np.abs(out - ref) <= 2 ** -7 * scale + 1e-30)


def test_packing_small_groups_takes_fewer_cycles_than_the_groups_apart():
    """Depthwise-like groups at vcu1525: one pass for 8 groups instead of 8 GEMMs of one row each."""
    rng = np.random.default_rng(3)
    for cg, kg in ((1, 9), (4, 36), (8, 72)):
        a = rng.standard_normal((16, cg, kg)).astype(np.float32)
        b = rng.standard_normal((16, kg, 96)).astype(np.float32)
        packed = sum(run(VCU, p)[1] for p in compile_packed_groups(VCU, a, b).programs)
        apart = sum(run(VCU, compile_gemm(VCU, a[p], b[p]))[1] for p in range(16))
        assert packed * 2 < apart, (cg, packed, apart)


def test_bad_group_operands_are_clear_errors():
    with pytest.raises(ValueError, match=r"\[g, cg, kg\] and \[g, kg, n\]"):
        compile_packed_groups(VCU, np.zeros((2, 1, 9)), np.zeros((3, 9, 4)))
    with pytest.raises(ValueError, match="run them unpacked"):
        compile_packed_groups(VCU, np.zeros((2, 32, 9)), np.zeros((2, 9, 4)))
