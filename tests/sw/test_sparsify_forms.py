"""The sparsifier's two compressed forms (run on the simulator) against BDWP's torch masks: the same elements kept,
their values rounded to bf16, in both directions, for Linear and grouped Conv2d weights with ties, zeros,
negatives, NaN and ragged lengths."""

import numpy as np
import pytest
import torch

from nmsat.dataflow.sparsify import compile_sparsified_gemm, compile_sparsify, read_form
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import to_bytes
from nmsat.hw.numerics import f32_to_bf16_bits
from nmsat.sim.core import CoreModel
from nmsat.sw.bdwp import bp_mask, conv_weight_as_gemm, ff_mask

PATTERNS = [(1, 4), (2, 4), (1, 8), (2, 8), (4, 8)]


def awkward_weight(rng: np.random.Generator, shape) -> torch.Tensor:
    """Few distinct magnitudes (ties), signed zeros, negatives, NaN and infinities."""
    w = rng.choice(np.float32([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, 3.0, np.nan, np.inf, -np.inf]), size=shape,
                   p=[0.15, 0.1, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1, 0.02, 0.02, 0.01])
    w = np.where(rng.random(shape) < 0.3, rng.standard_normal(shape).astype(np.float32), w)
    return torch.from_numpy(w.astype(np.float32))


def check_forms(cfg: SATConfig, gemm_view: torch.Tensor, ff: torch.Tensor, bp: torch.Tensor, n: int, m: int) -> None:
    """``gemm_view`` [g, Cg, K]; ``ff``/``bp`` the torch masks in that view."""
    g, cg, k = gemm_view.shape
    program = compile_sparsify(cfg, gemm_view.reshape(g * cg, k).numpy(), n, m, groups=g)
    memory = program.memory.copy()
    result = CoreModel(cfg).run(memory, program.program_addr, program.length)
    assert result.ok and result.race_free, result
    for direction, mask in (("FF", ff), ("BP", bp)):
        bits, idx = read_form(program.layout, memory, direction)
        for gi in range(g):
            w = gemm_view[gi].numpy() if direction == "FF" else gemm_view[gi].numpy().T
            keep = mask[gi].numpy() if direction == "FF" else mask[gi].numpy().T
            lanes, length = w.shape
            groups = -(-length // m)
            slot_group = np.repeat(np.arange(groups), n)
            position = slot_group * m + idx[gi]  # element each slot names
            real = position < length
            kept = np.zeros((lanes, groups * m), dtype=bool)
            np.put_along_axis(kept, position, real, axis=1)
            assert (kept[:, :length] == keep).all(), (direction, gi)
            expected = np.where(real, f32_to_bf16_bits(np.take_along_axis(
                np.pad(w, ((0, 0), (0, groups * m - length))), position, axis=1)), 0)
            assert (bits[gi] == expected).all(), (direction, gi)
            # slots of a group name distinct, increasing positions
            assert (np.diff(idx[gi].reshape(lanes, groups, n).astype(int), axis=-1) > 0).all()


@pytest.mark.parametrize("n,m", PATTERNS)
def test_linear_forms_are_bdwp_masks(n, m):
    cfg = SATConfig.tiny()
    rng = np.random.default_rng(n * 10 + m)
    for cout, k in ((8, 16), (11, 21), (3, 5), (17, 40)):  # whole and ragged groups and tiles
        w = awkward_weight(rng, (cout, k))
        check_forms(cfg, w.unsqueeze(0), ff_mask(w, n, m).unsqueeze(0), bp_mask(w, n, m).unsqueeze(0), n, m)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_conv_forms_are_bdwp_masks(groups):
    cfg = SATConfig.tiny()
    rng = np.random.default_rng(groups)
    n, m = 2, 8
    w = awkward_weight(rng, (8 * groups, 3, 3, 3))  # Cin/g = 3: K = 27 per group
    view = conv_weight_as_gemm(w, groups)
    ff = conv_weight_as_gemm(ff_mask(w, n, m, groups).to(w.dtype), groups).bool()
    bp = conv_weight_as_gemm(bp_mask(w, n, m, groups).to(w.dtype), groups).bool()
    check_forms(cfg, view, ff, bp, n, m)


def test_forms_on_the_vcu1525_preset():
    cfg = SATConfig.vcu1525()
    w = awkward_weight(np.random.default_rng(5), (40, 3 * 3 * 9))
    check_forms(cfg, w.unsqueeze(0), ff_mask(w, 2, 8).unsqueeze(0), bp_mask(w, 2, 8).unsqueeze(0), 2, 8)


@pytest.mark.parametrize("direction", ["FF", "BP"])
@pytest.mark.parametrize("n,m", [(2, 8), (1, 4)])
def test_gemm_on_the_sparsifiers_form_is_torch_on_the_masked_weight(direction, n, m):
    """Pre-generated weights: SPARSIFY writes the form, the SPARSE_GEMM after it (waiting on ``p2l``) reads it."""
    cfg = SATConfig.tiny()
    rng = np.random.default_rng(n + m)
    w = rng.standard_normal((10, 21)).astype(np.float32)
    x = rng.standard_normal((21 if direction == "FF" else 10, 7)).astype(np.float32)
    program = compile_sparsified_gemm(cfg, w, x, n, m, direction=direction)
    memory = program.memory.copy()
    result = CoreModel(cfg).run(memory, program.program_addr, program.length)
    assert result.ok and result.race_free and result.busy["sparsify"] > 0
    wt = torch.from_numpy(w)
    masked = wt * (ff_mask if direction == "FF" else bp_mask)(wt, n, m)
    a = masked if direction == "FF" else masked.T
    # the reference on the operands as the core sees them (bf16), summed in float64
    bf16 = lambda t: t.to(torch.bfloat16).to(torch.float64)  # noqa: E731
    ref = (bf16(a) @ bf16(torch.from_numpy(x))).numpy()
    assert np.allclose(program.read_c(memory), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_dropping_the_sparsifier_token_is_a_hazard():
    """Without its ``p2l`` pop the GEMM's first LOAD may read the form while the sparsifier still writes it."""
    cfg = SATConfig.tiny()
    rng = np.random.default_rng(3)
    program = compile_sparsified_gemm(cfg, rng.standard_normal((8, 16)).astype(np.float32),
                                      rng.standard_normal((16, 4)).astype(np.float32), 2, 8)
    words = list(program.words)
    first_load = next(i for i, w in enumerate(words) if w & 0xF == 1)
    words[first_load] &= ~(1 << 4)
    memory = program.memory.copy()
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    memory[program.program_addr:program.program_addr + blob.size] = blob
    result = CoreModel(cfg).run(memory, program.program_addr, len(words))
    assert any(h.storage == "DRAM" and h.kind == "read after write" for h in result.hazards), result.hazards
