"""Group convolutions with small groups packed several per array pass (E2GC's constant group size G, and
depthwise), in the dense mode.

A group convolution is g independent GEMMs ``C_p = A_p · B_p`` (``A_p``
``[cg, kg]``: the group's weights, cg = Cout / g rows, kg = (Cin / g)·kh·kw;
``B_p`` ``[kg, n]``: its im2col columns).  Alone, each uses cg of the
array's ``rows`` PE rows.  Packed, P groups share the rows (P·cg ≤ rows)
through the sparse mode's per-row operand select: their reductions are
interleaved element by element — packed position ``j·m + p`` holds group
p's element j (m ≥ P, a pattern M of the config) — so every row of group p
has exactly one operand in each m consecutive positions, at offset p: a
1:m pattern, which SPARSE_GEMM runs in kg steps, each row taking its own
group's B word from the m it is given.  The A slots are the group's weights
in order with index p, so nothing is pruned, and each output adds the same
products in the same order as its group's own dense GEMM: the results are
bit-identical (rule 5 counts steps, and slot j is step j).

Packing pays when cg is small: P = min(rows // cg, largest M) groups a pass
(:func:`pack_factor`), so at ``vcu1525`` (32 rows, M ≤ 8) G = 4 and 8 fill
the rows, G = 2 fills 16 and depthwise 8.  B words travel m per step
instead of one, so a pass reads m·kg B words (the P groups' own data and
m − P unused offsets).  Not here: BDWP's N:M inside a packed group (it
would need a pattern n:(P·m)); the kernel walk (groups are im2col GEMMs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw import numerics
from ..hw.config import SATConfig
from .gemm import Program, _program, layout_gemm, pack_a, pack_b, pack_indices, read_c

__all__ = ["pack_factor", "PackedGroups", "compile_packed_groups", "read_groups"]


def pack_factor(cfg: SATConfig, cg: int) -> tuple[int, int]:
    """(P, m): the groups of ``cg`` output rows one array pass packs, and the pattern M it packs them with
    (the smallest M of the config ≥ P); (1, 0) when packing gains nothing (cg ≥ rows / 2 and no M of 2)."""
    if cg < 1:
        raise ValueError(f"a group needs at least one output channel, got {cg}")
    fit = min(cfg.rows // cg, max(cfg.sparse_m))
    if fit < 2:
        return 1, 0
    m = min(x for x in cfg.sparse_m if x >= fit)
    return fit, m


@dataclass
class PackedGroups:
    """A group GEMM compiled as packs: ``programs[q]`` holds groups ``q·per_pack`` onward (one SPARSE_GEMM
    program each, 1:``m``); ``groups``, ``cg`` and ``n`` give the output ``[g, cg, n]``."""

    programs: list[Program]
    groups: int
    cg: int
    n: int
    per_pack: int
    m: int


def compile_packed_groups(cfg: SATConfig, a: np.ndarray, b: np.ndarray, *, out_bf16: bool = False) -> PackedGroups:
    """Compile the group GEMMs ``C_p = A_p · B_p`` (``a`` ``[g, cg, kg]``, ``b`` ``[g, kg, n]``, real floats,
    rounded to bf16) packed :func:`pack_factor` groups a pass."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"group GEMM operands must be [g, cg, kg] and [g, kg, n], got {a.shape} and {b.shape}")
    groups, cg, kg = a.shape
    n = b.shape[2]
    per_pack, m = pack_factor(cfg, cg)
    if per_pack < 2:
        raise ValueError(f"groups of {cg} output channels fill half the {cfg.rows} rows or more: run them unpacked")
    a_bits, b_bits = numerics.f32_to_bf16_bits(a), numerics.f32_to_bf16_bits(b)
    programs = []
    for first in range(0, groups, per_pack):
        members = range(first, min(first + per_pack, groups))
        values = np.zeros((per_pack * cg, kg), np.uint16)
        idx = np.zeros((per_pack * cg, kg), np.uint8)
        packed_b = np.zeros((kg, m, n), np.uint16)  # position j·m + p: group p's element j
        for p, group in enumerate(members):
            values[p * cg:(p + 1) * cg] = a_bits[group]
            idx[p * cg:(p + 1) * cg] = p
            packed_b[:, p] = b_bits[group]
        lay = layout_gemm(cfg, per_pack * cg, n, kg * m, pattern=(1, m), out_bf16=out_bf16)
        assert lay.plan.units == kg
        programs.append(_program(cfg, lay, {"a": pack_a(cfg, values), "idx": pack_indices(cfg, idx),
                                            "b": pack_b(cfg, packed_b.reshape(kg * m, n))}))
    return PackedGroups(programs, groups, cg, n, per_pack, m)


def read_groups(packed: PackedGroups, memories: list[np.ndarray]) -> np.ndarray:
    """The outputs ``[g, cg, n]`` (fp32) from the memory image of each pack's program after its run."""
    out = np.zeros((packed.groups, packed.cg, packed.n), np.float32)
    for q, (program, memory) in enumerate(zip(packed.programs, memories)):
        c = read_c(program, memory)
        for p in range(min(packed.per_pack, packed.groups - q * packed.per_pack)):
            out[q * packed.per_pack + p] = c[p * packed.cg:(p + 1) * packed.cg]
    return out
