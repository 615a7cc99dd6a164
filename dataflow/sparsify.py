"""Sparsify programs: a layer's fp32 master weights → the FF and BP compressed forms BDWP's sparse GEMMs read.

The master weights of a layer with ``g`` groups (conv groups; 1 for a
Linear) live in memory as ``[g, Cg_pad, Kg_pad]`` fp32, row-major, zero
padded: row ``o`` of group ``gi`` is output channel ``gi·Cg + o``, its K
elements in the order of :mod:`nmsat.sw.bdwp` (kernel tap major, channels
innermost).  Both pads are multiples of ``lcm(rows, sparsify_chunk)``, so
the sparsifier reads whole chunks and the lanes of a last tile read zero rows.

One SPARSIFY per output tile and direction:

* **FF** (groups along K): for group ``gi`` and M-tile ``mt``, lanes are the
  ``rows`` output channels of the tile (``transpose``), ``length = Kg``; the
  record ``[G·n slot words | IDX words]`` is the A operand of that tile of the
  FF SPARSE_GEMM (``nmsat.dataflow.gemm.emit_gemm`` with ``a_tile_stride``).
* **BP** (groups along Cout): for group ``gi`` and K-tile ``kt``, lanes are the
  ``rows`` K positions of the tile, the elements the output channels,
  ``length = Cg``: the A operand (``Wᵀ``) of the BP SPARSE_GEMM.

Records follow each other tile by tile, FF then BP, after the master weights.

Not here: the selection rule (:mod:`nmsat.hw.sparsity`), the GEMMs' own tiling (:mod:`nmsat.dataflow.gemm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..hw.config import IDX_SLOTS_PER_WORD, SATConfig
from ..hw.isa import Csr, Opcode, encode, to_bytes
from ..hw.numerics import f32_to_bf16_bits
from ..hw.sparsity import check_pattern
from .gemm import emit_gemm, pack_b, plan_gemm

__all__ = ["SparsifyLayout", "layout_sparsify", "pack_master", "SparsifyProgram", "compile_sparsify", "read_form",
           "compile_sparsified_gemm", "UpdateProgram", "update_instructions", "compile_weight_update", "read_master"]

#: the widest source stride a SPARSIFY encodes (17 bits of bytes)
MAX_SRC_STRIDE = (1 << 17) - 1
PAGE = 4096


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass(frozen=True)
class SparsifyLayout:
    """Where a layer's master weights and compressed forms live, and the SPARSIFY words that make the forms."""

    cfg: SATConfig
    groups: int
    cout_g: int  # output channels per group
    k_g: int  # reduction length per group (FF)
    n: int
    m: int
    base: int  # master weights
    rows_pad: int  # Cg_pad
    k_pad: int  # Kg_pad (the row stride is 4·k_pad bytes)
    ff_base: int
    bp_base: int
    end: int

    @property
    def stride(self) -> int:
        return 4 * self.k_pad

    @property
    def master_bytes(self) -> int:
        """Bytes of the master weights (and of their momenta and gradients, laid out alike)."""
        return self.groups * self.rows_pad * self.stride

    @property
    def m_tiles(self) -> int:
        return -(-self.cout_g // self.cfg.rows)

    @property
    def k_tiles(self) -> int:
        return -(-self.k_g // self.cfg.rows)

    def slots(self, length: int) -> int:
        return -(-length // self.m) * self.n

    def record_bytes(self, length: int) -> int:
        """Bytes of one tile's compressed form: its slot words, then its IDX words (A-word sized)."""
        slots = self.slots(length)
        return (slots + -(-slots // IDX_SLOTS_PER_WORD)) * self.cfg.a_word_bytes

    def ff_record(self, gi: int, mt: int) -> int:
        return self.ff_base + (gi * self.m_tiles + mt) * self.record_bytes(self.k_g)

    def bp_record(self, gi: int, kt: int) -> int:
        return self.bp_base + (gi * self.k_tiles + kt) * self.record_bytes(self.cout_g)

    def instructions(self, *, push_last: bool = False) -> list[int]:
        """The SPARSIFYs, FF tiles then BP tiles (no FINISH); ``push_last`` lets the last one push ``p2l``
        (the LOADs of the next GEMMs wait for it)."""
        cfg, R = self.cfg, self.cfg.rows
        common = dict(n=self.n, m_log2=self.m.bit_length() - 1, src_stride=self.stride)
        out = []
        for gi in range(self.groups):
            block = self.base + gi * self.rows_pad * self.stride
            for mt in range(self.m_tiles):
                src = block + mt * R * self.stride
                out.append(dict(src_addr=src, transpose=1, length=self.k_g, dst_offset=self.ff_record(gi, mt) - src))
            for kt in range(self.k_tiles):
                src = block + kt * 4 * R
                out.append(dict(src_addr=src, transpose=0, length=self.cout_g, dst_offset=self.bp_record(gi, kt) - src))
        words = [encode(Opcode.SPARSIFY, **common, **args) for args in out]
        if push_last and words:
            words[-1] = encode(Opcode.SPARSIFY, push_next=1, **common, **out[-1])
        return words


def layout_sparsify(cfg: SATConfig, cout: int, k_g: int, n: int, m: int, *, groups: int = 1,
                    base_addr: int = 0) -> SparsifyLayout:
    """The layout of a layer's weights ``[cout, k_g]`` in ``groups`` groups, pattern n:m."""
    check_pattern(n, m)
    if m not in cfg.sparse_m:
        raise ValueError(f"sparsify: m={m} is not one of the config's group sizes {cfg.sparse_m}")
    if groups < 1 or cout % groups:
        raise ValueError(f"sparsify: groups={groups} must divide cout={cout}")
    if k_g < 1 or cout < 1:
        raise ValueError(f"sparsify: need cout >= 1 and K >= 1, got {cout} and {k_g}")
    if base_addr % PAGE:
        raise ValueError(f"sparsify: base_addr must be 4 KiB aligned, got {base_addr:#x}")
    cout_g = cout // groups
    unit = math.lcm(cfg.rows, cfg.sparsify_chunk)
    rows_pad, k_pad = _align(cout_g, unit), _align(k_g, unit)
    if 4 * k_pad > MAX_SRC_STRIDE:
        raise ValueError(f"sparsify: K={k_g} per group is too long for one SPARSIFY row stride "
                         f"(at most {MAX_SRC_STRIDE // 4} fp32 per row)")
    master = groups * rows_pad * 4 * k_pad
    lay = SparsifyLayout(cfg, groups, cout_g, k_g, n, m, base_addr, rows_pad, k_pad, 0, 0, 0)
    ff_base = _align(base_addr + master, PAGE)
    bp_base = _align(ff_base + groups * lay.m_tiles * lay.record_bytes(k_g), PAGE)
    end = _align(bp_base + groups * lay.k_tiles * lay.record_bytes(cout_g), PAGE)
    lay = SparsifyLayout(cfg, groups, cout_g, k_g, n, m, base_addr, rows_pad, k_pad, ff_base, bp_base, end)
    if end - base_addr >= 1 << 31:
        raise ValueError("sparsify: a layer's weights and forms must span less than 2 GiB (dst_offset is 31 bits)")
    return lay


def pack_master(lay: SparsifyLayout, weight: np.ndarray) -> np.ndarray:
    """fp32 weights ``[cout, k_g]`` (rows of group gi are ``gi·Cg …``) → the master image ``[g, Cg_pad, Kg_pad]``."""
    w = np.asarray(weight, dtype=np.float32)
    if w.shape != (lay.groups * lay.cout_g, lay.k_g):
        raise ValueError(f"sparsify: weights must be [{lay.groups * lay.cout_g}, {lay.k_g}], got {list(w.shape)}")
    out = np.zeros((lay.groups, lay.rows_pad, lay.k_pad), dtype=np.float32)
    out[:, :lay.cout_g, :lay.k_g] = w.reshape(lay.groups, lay.cout_g, lay.k_g)
    return out


@dataclass
class SparsifyProgram:
    """A sparsify program (one run) and the memory image it runs against."""

    layout: SparsifyLayout
    words: list[int]
    memory: np.ndarray
    program_addr: int

    @property
    def length(self) -> int:
        return len(self.words)


def compile_sparsify(cfg: SATConfig, weight: np.ndarray, n: int, m: int, *, groups: int = 1) -> SparsifyProgram:
    """A program that writes both compressed forms of ``weight[cout, K_g]`` (fp32, K in BDWP's order)."""
    w = np.asarray(weight)
    if w.ndim != 2 or w.dtype.kind != "f":
        raise TypeError(f"compile_sparsify: weight must be a 2-D floating-point array [cout, K], got "
                        f"{w.dtype} {list(w.shape)}")
    lay = layout_sparsify(cfg, w.shape[0], w.shape[1], n, m, groups=groups)
    words = lay.instructions() + [encode(Opcode.FINISH)]
    if len(words) > cfg.imem_depth:
        raise ValueError(f"compile_sparsify: {len(words)} instructions do not fit the instruction memory "
                         f"({cfg.imem_depth})")
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    memory = np.zeros(lay.end + _align(blob.size, PAGE), dtype=np.uint8)
    memory[lay.base:lay.ff_base][:lay.groups * lay.rows_pad * lay.stride] = pack_master(lay, w).view(np.uint8).ravel()
    memory[lay.end:lay.end + blob.size] = blob
    return SparsifyProgram(lay, words, memory, lay.end)


def read_form(lay: SparsifyLayout, memory: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """The compressed form a run left, as ``hw.sparsity.compress`` gives it: bf16 bits and indices
    ``[g, lanes, slots]`` — FF: lanes = Cg rows (groups along K); BP: lanes = Kg (groups along Cout)."""
    cfg, R = lay.cfg, lay.cfg.rows
    if direction == "FF":
        tiles, lanes, length, record = lay.m_tiles, lay.cout_g, lay.k_g, lay.ff_record
    elif direction == "BP":
        tiles, lanes, length, record = lay.k_tiles, lay.k_g, lay.cout_g, lay.bp_record
    else:
        raise ValueError(f"direction must be 'FF' or 'BP', got {direction!r}")
    slots = lay.slots(length)
    words = -(-slots // IDX_SLOTS_PER_WORD)
    bits = np.zeros((lay.groups, tiles * R, slots), dtype=np.uint16)
    idx = np.zeros((lay.groups, tiles * R, slots), dtype=np.uint8)
    for gi in range(lay.groups):
        for t in range(tiles):
            addr = record(gi, t)
            rec = memory[addr:addr + lay.record_bytes(length)].view(np.uint16).reshape(slots + words, R)
            bits[gi, t * R:(t + 1) * R] = rec[:slots].T
            nib = (rec[slots:].T[:, :, None] >> (4 * np.arange(IDX_SLOTS_PER_WORD, dtype=np.uint16))) & 0xF
            idx[gi, t * R:(t + 1) * R] = nib.reshape(R, -1)[:, :slots]
    return bits[:, :lanes], idx[:, :lanes]


@dataclass
class SparsifiedGemm:
    """One program: the sparsifier writes a weight's form, then a SPARSE_GEMM reads it (pre-generated weights)."""

    layout: SparsifyLayout
    direction: str
    words: list[int]
    memory: np.ndarray
    program_addr: int
    c_region: tuple[int, int]
    m: int
    n: int

    @property
    def length(self) -> int:
        return len(self.words)

    def read_c(self, memory: np.ndarray) -> np.ndarray:
        """The GEMM result ``[m, n]`` fp32 from a memory image after the run."""
        cfg = self.layout.cfg
        addr, nbytes = self.c_region
        mt, nt = -(-self.m // cfg.rows), -(-self.n // cfg.cols)
        packed = memory[addr:addr + nbytes].view(np.float32).reshape(mt, nt, cfg.rows, cfg.cols)
        return packed.transpose(0, 2, 1, 3).reshape(mt * cfg.rows, nt * cfg.cols)[:self.m, :self.n]


def compile_sparsified_gemm(cfg: SATConfig, weight: np.ndarray, operand: np.ndarray, n: int, m: int, *,
                            direction: str = "FF") -> SparsifiedGemm:
    """SPARSIFY ``weight[cout, K]`` (one group), then its FF GEMM ``(W ⊙ ff_mask) · operand[K, N]`` or its BP GEMM
    ``(W ⊙ bp_mask)ᵀ · operand[cout, N]``, the GEMM's A operand being the form the sparsifier wrote: its
    first LOAD waits for the last SPARSIFY (``p2l``)."""
    w = np.asarray(weight, dtype=np.float32)
    x = np.asarray(operand, dtype=np.float32)
    lay = layout_sparsify(cfg, w.shape[0], w.shape[1], n, m)
    if direction == "FF":
        rows, k, first_record, length = lay.cout_g, lay.k_g, lay.ff_record(0, 0), lay.k_g
    elif direction == "BP":
        rows, k, first_record, length = lay.k_g, lay.cout_g, lay.bp_record(0, 0), lay.cout_g
    else:
        raise ValueError(f"direction must be 'FF' or 'BP', got {direction!r}")
    if x.ndim != 2 or x.shape[0] != k:
        raise ValueError(f"compile_sparsified_gemm: the {direction} operand must be [{k}, N], got {list(x.shape)}")
    plan = plan_gemm(cfg, rows, x.shape[1], k, pattern=(n, m))
    groups = plan.units
    b_bits = np.zeros((groups * m, x.shape[1]), dtype=np.uint16)
    b_bits[:k] = f32_to_bf16_bits(x)
    b_packed = pack_b(cfg, b_bits)
    b_addr = lay.end
    c_addr = _align(b_addr + b_packed.nbytes, PAGE)
    c_bytes = plan.mt * plan.nt * cfg.rows * cfg.acc_word_bytes
    program_addr = _align(c_addr + c_bytes, PAGE)
    sparsify = lay.instructions(push_last=True)
    sparsify = [word for word, args in zip(sparsify, _directions(lay)) if args == direction]
    sparsify[-1] |= 1 << 7  # push_next (p2l) on the last one of this direction
    gemm = emit_gemm(cfg, plan, a_addr=first_record, b_addr=b_addr, c_addr=c_addr,
                     idx_addr=first_record + lay.slots(length) * cfg.a_word_bytes,
                     a_tile_stride=lay.record_bytes(length))
    first_load = next(i for i, word in enumerate(gemm) if word & 0xF == Opcode.LOAD.value)
    gemm[first_load] |= 1 << 4  # pop_prev: wait for the sparsifier
    words = sparsify + gemm + [encode(Opcode.FINISH)]
    if len(words) > cfg.imem_depth:
        raise ValueError(f"compile_sparsified_gemm: {len(words)} instructions do not fit the instruction memory")
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    memory = np.zeros(program_addr + _align(blob.size, PAGE), dtype=np.uint8)
    master = pack_master(lay, w).view(np.uint8).ravel()
    memory[lay.base:lay.base + master.size] = master
    memory[b_addr:b_addr + b_packed.nbytes] = b_packed.view(np.uint8).ravel()
    memory[program_addr:program_addr + blob.size] = blob
    return SparsifiedGemm(lay, direction, words, memory, program_addr, (c_addr, c_bytes), rows, x.shape[1])


def _directions(lay: SparsifyLayout) -> list[str]:
    """The direction of each of ``lay.instructions()``."""
    return (["FF"] * lay.m_tiles + ["BP"] * lay.k_tiles) * lay.groups


@dataclass
class UpdateProgram:
    """The pre-generation step of one layer: WEIGHT_UPDATE of its master weights, then the SPARSIFYs that write
    the next step's FF and BP forms, in one program.  ``registers`` are the hyperparameters to write first."""

    layout: SparsifyLayout
    words: list[int]
    memory: np.ndarray
    program_addr: int
    v_addr: int
    g_addr: int
    registers: dict

    @property
    def length(self) -> int:
        return len(self.words)


def update_instructions(lay: SparsifyLayout, v_addr: int, g_addr: int) -> list[int]:
    """WEIGHT_UPDATEs of the master weights with momenta at ``v_addr`` and gradients at ``g_addr``: one per
    at most 2^18 − 1 words (the field's width), each starting on a burst boundary."""
    cfg = lay.cfg
    word = 4 * cfg.rows
    align = cfg.max_burst_beats * cfg.bus_bytes
    per = ((1 << 18) - 1) * word // math.lcm(word, align) * math.lcm(word, align) // word  # words per instruction
    total = lay.master_bytes // word
    out = []
    for first in range(0, total, per):
        w = lay.base + first * word
        out.append(encode(Opcode.WEIGHT_UPDATE, w_addr=w, words=min(per, total - first),
                          v_offset=v_addr - lay.base, g_offset=g_addr - lay.base))
    return out


def _bits(x: float) -> int:
    return int(np.float32(x).view(np.uint32))


def compile_weight_update(cfg: SATConfig, weight: np.ndarray, momentum_buffer: np.ndarray, grad: np.ndarray,
                          n: int, m: int, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                          groups: int = 1) -> UpdateProgram:
    """``weight``, ``momentum_buffer`` and ``grad`` ``[cout, K_g]`` fp32 in BDWP's K order; the program updates
    the master weights and momenta in place (the rule of ``nmsat.sim.numerics.sgd_update``) and then writes
    both compressed forms of the new weights."""
    w = np.asarray(weight, dtype=np.float32)
    lay = layout_sparsify(cfg, w.shape[0], w.shape[1], n, m, groups=groups)
    v_addr = lay.end
    g_addr = _align(v_addr + lay.master_bytes, PAGE)
    program_addr = _align(g_addr + lay.master_bytes, PAGE)
    if program_addr - lay.base >= 1 << 31:
        raise ValueError("compile_weight_update: a layer's arrays must span less than 2 GiB")
    program = update_instructions(lay, v_addr, g_addr) + lay.instructions() + [encode(Opcode.FINISH)]
    if len(program) > cfg.imem_depth:
        raise ValueError(f"compile_weight_update: {len(program)} instructions do not fit the instruction memory")
    blob = np.frombuffer(to_bytes(program), dtype=np.uint8)
    memory = np.zeros(program_addr + _align(blob.size, PAGE), dtype=np.uint8)
    for addr, array in ((lay.base, w), (v_addr, momentum_buffer), (g_addr, grad)):
        data = pack_master(lay, np.asarray(array, dtype=np.float32)).view(np.uint8).ravel()
        memory[addr:addr + data.size] = data
    memory[program_addr:program_addr + blob.size] = blob
    registers = {Csr.LR: _bits(lr), Csr.MOMENTUM: _bits(momentum), Csr.WEIGHT_DECAY: _bits(weight_decay)}
    return UpdateProgram(lay, program, memory, program_addr, v_addr, g_addr, registers)


def read_master(lay: SparsifyLayout, memory: np.ndarray, addr: int | None = None) -> np.ndarray:
    """The fp32 ``[cout, K_g]`` array laid out like the master weights at ``addr`` (default: the master's)."""
    addr = lay.base if addr is None else addr
    full = memory[addr:addr + lay.master_bytes].view(np.float32).reshape(lay.groups, lay.rows_pad, lay.k_pad)
    return full[:, :lay.cout_g, :lay.k_g].reshape(lay.groups * lay.cout_g, lay.k_g).copy()
