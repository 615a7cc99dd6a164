"""Several GEMMs and vector-unit instructions in one program: offline scheduling across layers.

:func:`emit_chain` strings GEMMs (:class:`ChainGemm`) and vector-unit work
(:class:`ChainVector`) into one instruction stream.  Consecutive GEMMs form
one software pipeline: their reduction steps and output blocks are counted
on from the GEMMs before them, so the buffer halves alternate and the
"half free" tokens a GEMM leaves unclaimed are the ones the next GEMM's
first steps wait for — the array does not drain between them.  A GEMM that
reads what an earlier one stored waits for it through the ring: the earlier
GEMM's last STORE pushes ``s2p``, the vector instructions between them pop
it (and do their work on the stored data, or a one-beat relay if there is
none) and push ``p2l``, and the later GEMM's first B LOAD pops ``p2l``.

:func:`compile_relu_mlp` builds the forward and backward GEMMs of two linear
layers with a ReLU between them — ``H = relu(W1·X)``, ``Y = W2·H``,
``dH = W2ᵀ·dY``, ``G = RELU_GRAD(dH, H)``, ``dX = W1ᵀ·G`` — as one program:
H, dH and G stay in memory in the B-operand layout the next GEMM reads.

Not here: choosing what to chain for a whole model (the iteration compiler
still to come), tiling (:mod:`nmsat.dataflow.gemm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..hw import numerics
from ..hw.config import SATConfig
from ..hw.isa import Opcode, VectorFunc, encode, to_bytes, with_flags
from .gemm import GemmPlan, gemm_steps, pack_a, pack_b, plan_gemm, read_tiles, software_pipelined, unpack_b
from .vector import vector_instructions

__all__ = ["ChainGemm", "ChainVector", "emit_chain", "ChainProgram", "compile_relu_mlp", "b_layout_bytes"]

PAGE = 4096


@dataclass(frozen=True)
class ChainGemm:
    """One GEMM of a chain and where its operands are (keyword arguments of :func:`gemm_steps`)."""

    plan: GemmPlan
    a_addr: int
    b_addr: int
    c_addr: int
    options: dict = field(default_factory=dict)  # b_tile_stride, c_b_tile_stride, c_bf16, c_relu, ...

    @property
    def blocks(self) -> int:
        return math.ceil(self.plan.mt / self.plan.mb) * math.ceil(self.plan.nt / self.plan.nb)


@dataclass(frozen=True)
class ChainVector:
    """Vector-unit instructions between GEMMs (VECTOR, WEIGHT_UPDATE, SPARSIFY words, in order)."""

    words: tuple[int, ...]


def emit_chain(cfg: SATConfig, items: list) -> list[int]:
    """The instructions of a chain (no FINISH).  GEMMs next to each other are independent of each other; a
    :class:`ChainVector` between two GEMMs orders the later one after the earlier one's STOREs."""
    if not items or not isinstance(items[0], ChainGemm) or not isinstance(items[-1], ChainGemm):
        raise ValueError("emit_chain: a chain starts and ends with a GEMM")
    patterns = {item.plan.pattern for item in items if isinstance(item, ChainGemm)}
    if len(patterns) > 1:
        raise ValueError(f"emit_chain: the GEMMs of a chain share one buffer layout, so one pattern; got {patterns}")
    out: list[int] = []
    pending: tuple[list, list, list] = ([], [], [])
    step = block = 0
    wait = False
    for index, item in enumerate(items):
        if isinstance(item, ChainVector):
            if not item.words or isinstance(items[index - 1], ChainVector):
                raise ValueError("emit_chain: vector work between two GEMMs is one non-empty ChainVector")
            out += software_pipelined(*pending)  # the earlier GEMMs' STOREs go out before the later GEMM's LOADs
            pending = ([], [], [])
            words = list(item.words)
            words[0] = with_flags(words[0], pop_prev=1)
            words[-1] = with_flags(words[-1], push_next=1)
            out += words
            wait = True
            continue
        signals = index + 1 < len(items) and isinstance(items[index + 1], ChainVector)
        loads, gemms, stores = gemm_steps(cfg, item.plan, a_addr=item.a_addr, b_addr=item.b_addr, c_addr=item.c_addr,
                                          first_step=step, first_block=block, b_waits=wait, c_signals=signals,
                                          **item.options)
        for mine, theirs in zip(pending, (loads, gemms, stores)):
            mine += theirs
        step += len(loads)
        block += item.blocks
        wait = False
    return out + software_pipelined(*pending)


def b_layout_bytes(cfg: SATConfig, k_words: int, n: int) -> tuple[int, int]:
    """(tile stride, total bytes) of a ``[k_words, n]`` bf16 B operand laid out ``[Nt, k_words, cols]``."""
    stride = k_words * cfg.b_word_bytes
    return stride, math.ceil(n / cfg.cols) * stride


@dataclass
class ChainProgram:
    """A chain as one program with its memory image; ``regions`` names every array ``(addr, bytes)``."""

    cfg: SATConfig
    words: list[int]
    memory: np.ndarray
    program_addr: int
    regions: dict[str, tuple[int, int]]
    shapes: dict[str, tuple[int, int]]

    @property
    def length(self) -> int:
        return len(self.words)

    def read_b_layout(self, memory: np.ndarray, name: str) -> np.ndarray:
        """bf16 bit patterns ``[k, n]`` of an array kept in the B-operand layout (H, dH, G)."""
        cfg, (k, n) = self.cfg, self.shapes[name]
        addr, nbytes = self.regions[name]
        nt = math.ceil(n / cfg.cols)
        return unpack_b(cfg, memory[addr:addr + nbytes].view(np.uint16).reshape(nt, -1, cfg.cols), k, n).copy()

    def read_tiles(self, memory: np.ndarray, name: str) -> np.ndarray:
        """fp32 ``[m, n]`` of a GEMM output stored tile by tile (Y, dX)."""
        return read_tiles(self.cfg, memory, self.regions[name][0], *self.shapes[name])


def compile_relu_mlp(cfg: SATConfig, w1: np.ndarray, w2: np.ndarray, x: np.ndarray, dy: np.ndarray) -> ChainProgram:
    """Two linear layers with a ReLU between them, forward and backward, as one program (see the module).

    ``w1`` ``[M1, K1]``, ``w2`` ``[M2, M1]``, ``x`` ``[K1, N]`` (columns are samples), ``dy`` ``[M2, N]``;
    rounded to bf16.  Results: ``Y`` and ``dX`` fp32 (:meth:`ChainProgram.read_tiles`), ``H``, ``dH`` and
    ``G`` bf16 (:meth:`ChainProgram.read_b_layout`).
    """
    bits = {name: numerics.f32_to_bf16_bits(np.asarray(v, dtype=np.float32))
            for name, v in (("w1", w1), ("w2", w2), ("x", x), ("dy", dy))}
    (m1, k1), (m2, m1b), (k1b, n), (m2b, nb) = (bits[k].shape for k in ("w1", "w2", "x", "dy"))
    if (m1b, k1b, m2b, nb) != (m1, k1, m2, n):
        raise ValueError(f"compile_relu_mlp: shapes do not chain: W1 {w1.shape}, W2 {w2.shape}, X {x.shape}, "
                         f"dY {dy.shape}")
    R = cfg.rows
    plans = {"ff1": plan_gemm(cfg, m1, n, k1), "ff2": plan_gemm(cfg, m2, n, m1),
             "bp2": plan_gemm(cfg, m1, n, m2), "bp1": plan_gemm(cfg, k1, n, m1)}
    h_stride, h_bytes = b_layout_bytes(cfg, math.ceil(m1 / R) * R, n)  # H's rows padded to whole M-tiles
    packed = {"w1": pack_a(cfg, bits["w1"]), "x": pack_b(cfg, bits["x"]), "w2": pack_a(cfg, bits["w2"]),
              "w2t": pack_a(cfg, bits["w2"].T.copy()), "dy": pack_b(cfg, bits["dy"]),
              "w1t": pack_a(cfg, bits["w1"].T.copy())}
    sizes = {k: v.nbytes for k, v in packed.items()}

    def tiles_bytes(m, n_):
        return math.ceil(m / R) * math.ceil(n_ / cfg.cols) * R * cfg.acc_word_bytes

    sizes.update(h=h_bytes, dh=h_bytes, g=h_bytes, y=tiles_bytes(m2, n), dx=tiles_bytes(k1, n), relay=PAGE)
    regions, addr = {}, PAGE
    for name, nbytes in sizes.items():
        regions[name] = (addr, nbytes)
        addr += -(-nbytes // PAGE) * PAGE
    at = {name: a for name, (a, _) in regions.items()}
    h_options = dict(c_b_tile_stride=h_stride, c_bf16=True)
    relay = vector_instructions(cfg, VectorFunc.ADD, at["relay"], at["relay"], at["relay"], 1)
    g_elements = h_bytes // 2
    items = [ChainGemm(plans["ff1"], at["w1"], at["x"], at["h"], dict(h_options, c_relu=True)),
             ChainVector(tuple(relay)),  # H is in memory
             ChainGemm(plans["ff2"], at["w2"], at["h"], at["y"], dict(b_tile_stride=h_stride)),
             ChainGemm(plans["bp2"], at["w2t"], at["dy"], at["dh"], h_options),
             ChainVector(tuple(vector_instructions(cfg, VectorFunc.RELU_GRAD, at["dh"], at["h"], at["g"], g_elements,
                                                   bf16=True))),
             ChainGemm(plans["bp1"], at["w1t"], at["g"], at["dx"], dict(b_tile_stride=h_stride))]
    words = emit_chain(cfg, items) + [encode(Opcode.FINISH)]
    if len(words) > cfg.imem_depth:
        raise ValueError(f"compile_relu_mlp: {len(words)} instructions do not fit the instruction memory "
                         f"({cfg.imem_depth})")
    program_addr = addr
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    memory = np.zeros(program_addr + -(-blob.size // PAGE) * PAGE, dtype=np.uint8)
    for name, data in packed.items():
        raw = data.view(np.uint8).ravel()
        memory[at[name]:at[name] + raw.size] = raw
    memory[program_addr:program_addr + blob.size] = blob
    shapes = {"h": (m1, n), "dh": (m1, n), "g": (m1, n), "y": (m2, n), "dx": (k1, n)}
    return ChainProgram(cfg, words, memory, program_addr, regions, shapes)
