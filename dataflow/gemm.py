"""Tiling, mapping and token placement of a dense GEMM ``C[M, N] = A[M, K] · B[K, N]`` onto the core.

Holds the DRAM layouts of operands (packed so that every buffer word is one
contiguous run), the choice of tile block and K chunk (a small search over a
cost model: loads against compute per step), and the emission of a
double-buffered program with VTA-style dependency tokens.  Layers
(``Linear``, ``Conv2d``) become GEMMs in :mod:`nmsat.dataflow.layers`.

Layouts (``R`` = rows, ``C`` = cols of the array; ``Mt = ceil(M/R)``, ``Nt = ceil(N/C)``):

* A: ``[Mt, K, R]`` bf16 — word ``k`` of M-tile ``i`` is ``A[i·R:(i+1)·R, k]`` (zero padded);
* B: ``[Nt, K, C]`` bf16 — word ``k`` of N-tile ``j`` is ``B[k, j·C:(j+1)·C]``;
* C: ``[Mt, Nt, R, C]`` fp32 — one stored tile after another.

Not here: executing programs (``nmsat.sim``) or im2col (``nmsat.dataflow.layers``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import INSTRUCTION_BYTES, Buffer, Opcode, encode, to_bytes, with_flags
from ..hw import numerics, timing
from ..hw.config import IDX_SLOTS_PER_WORD
from ..hw.sparsity import check_pattern, compress

__all__ = ["GemmPlan", "plan_gemm", "GemmLayout", "layout_gemm", "Program", "compile_gemm", "read_c", "emit_gemm", "gemm_steps", "gemm_blocks",
           "pack_a", "pack_b", "unpack_b", "unpack_c", "read_tiles", "program_instructions", "block_instructions", "software_pipelined",
           "compile_sparse_gemm", "pack_indices", "gemm_args", "place_tokens", "link_runs"]


@dataclass(frozen=True)
class GemmPlan:
    """How one GEMM is cut: ``mb × nb`` output tiles per block, the reduction in ``steps`` chunks of ``kc``.

    Dense: the reduction units are K's words.  With an N:M ``pattern`` ``(n, m)`` (A compressed along K,
    a SPARSE_GEMM per tile and chunk) they are the ``ceil(K / m)`` groups: a chunk of ``kc`` groups is
    ``kc·n`` A words, ``ceil(kc·n / 4)`` IDX words and ``kc·m`` B words.
    """

    m: int
    n: int
    k: int
    mt: int
    nt: int
    mb: int
    nb: int
    kc: int
    steps: int
    estimated_cycles: int
    pattern: tuple[int, int] | None = None

    @property
    def units(self) -> int:
        """Reduction units: K (dense) or groups of m (sparse)."""
        return _units(self.k, self.pattern)


def _units(k: int, pattern: tuple[int, int] | None) -> int:
    return k if pattern is None else -(-k // pattern[1])


def _per_unit(pattern: tuple[int, int] | None) -> tuple[int, int]:
    """(A words, B words) per reduction unit: 1 and 1 dense, n and m sparse."""
    return (1, 1) if pattern is None else pattern


def _idx_words(slots: int) -> int:
    return -(-slots // IDX_SLOTS_PER_WORD)


def _estimate(cfg: SATConfig, mt: int, nt: int, units: int, mb: int, nb: int, steps: int,
              pattern: tuple[int, int] | None) -> int:
    kc = math.ceil(units / steps)
    a_per, b_per = _per_unit(pattern)
    a_bpw, b_bpw = cfg.a_word_bytes // cfg.bus_bytes, cfg.b_word_bytes // cfg.bus_bytes
    a_words = kc * a_per + (_idx_words(kc * a_per) if pattern else 0)
    blocks = math.ceil(mt / mb) * math.ceil(nt / nb)
    # a step: its loads (beats, then the read latency) against its GEMMs (MACs and the drain, which overlaps
    # the next GEMM but not the next transfer)
    per_step = max((mb * a_bpw * a_words + nb * b_bpw * kc * b_per) + cfg.mem_read_latency,
                   mb * nb * (timing.gemm_mac_cycles(kc * a_per) + timing.drain_cycles(cfg)))
    store = mb * nb * cfg.rows * (cfg.acc_word_bytes // cfg.bus_bytes)
    return blocks * (steps * per_step + store) + cfg.mem_read_latency


def _block_sizes(total: int, per_block: int) -> list[tuple[int, int]]:
    """(size, how many) of the blocks that cut ``total`` tiles into blocks of ``per_block``: full ones, then the rest."""
    full, rest = divmod(total, per_block)
    return [(per_block, full)] * bool(full) + [(rest, 1)] * bool(rest)


def block_instructions(mis: int, njs: int, steps: int, sparse: bool = False) -> int:
    """Instructions of one block of ``mis × njs`` output tiles in ``steps`` chunks (what :func:`emit_gemm` emits):
    per step a LOAD per A tile (and one of its indices when sparse) and per B tile, a GEMM per tile pair; a
    STORE per tile."""
    return steps * ((2 if sparse else 1) * mis + njs + mis * njs) + mis * njs


def _halves(cfg: SATConfig, pattern: tuple[int, int] | None, streams: int = 1) -> tuple[int, int, int]:
    """Words of one half of A, B (a multiple of m, so sparse groups stay aligned) and IDX (of one stream's share
    of it, with ``streams`` interleaved)."""
    m_ = pattern[1] if pattern else 1
    return cfg.a_depth // 2 // streams, cfg.b_depth // 2 // streams // m_ * m_, cfg.idx_depth // 2 // streams


def plan_gemm(cfg: SATConfig, m: int, n: int, k: int, *, pattern: tuple[int, int] | None = None,
              streams: int = 1) -> GemmPlan:
    """Pick the block shape and reduction chunk with the lowest estimated cycle count that fits the buffers.

    ``streams``: 2 plans for one of two interleaved streams (``nmsat.dataflow.interleave``), in half of each
    buffer half.

    ``pattern`` ``(n, m)``: A is compressed N:M along K (the config must support m).  Only plans whose
    largest block fits the instruction memory (with a FINISH) are considered: a GEMM whose whole program
    is longer runs as several programs, one after another, each a run of whole blocks (:func:`layout_gemm`).
    """
    for name, v in (("M", m), ("N", n), ("K", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"GEMM {name} must be a positive int, got {v!r}")
    if pattern is not None:
        check_pattern(*pattern)
        if pattern[1] not in cfg.sparse_m:
            raise ValueError(f"config {cfg.name}: N:M sparsity with m = {pattern[1]} is not supported "
                             f"(sparse_m = {cfg.sparse_m})")
        pattern = (int(pattern[0]), int(pattern[1]))
    sparse = pattern is not None
    mt, nt = math.ceil(m / cfg.rows), math.ceil(n / cfg.cols)
    a_half, b_half, idx_half = _halves(cfg, pattern, streams)
    acc_half = cfg.acc_depth // 2 // streams
    if acc_half < cfg.rows:
        raise ValueError(f"config {cfg.name}: the accumulator buffer cannot hold {2 * streams} output tiles")
    a_per, b_per = _per_unit(pattern)
    units = _units(k, pattern)
    if min(a_half // a_per, b_half // b_per) < 1 or (sparse and idx_half < 1):
        raise ValueError(f"config {cfg.name}: the buffers need two halves of at least one reduction unit")
    best = None
    cap = min(a_half // a_per, b_half // b_per)  # largest chunk a half holds
    steps_options = sorted({math.ceil(units / kc) for kc in range(1, min(units, cap) + 1)} | {units})
    for steps in steps_options:
        kc = math.ceil(units / steps)
        if kc > cap:
            continue
        if sparse and steps > 1 and kc * a_per % IDX_SLOTS_PER_WORD:
            continue  # every chunk but the last starts its slots at the first index of an IDX word
        if block_instructions(1, 1, steps, sparse) + 1 > cfg.imem_depth:
            continue  # even the smallest block is longer than the instruction memory
        mb_cap = a_half // (kc * a_per)
        if sparse:
            mb_cap = min(mb_cap, idx_half // _idx_words(kc * a_per))
        for mb in range(1, min(mt, mb_cap) + 1):
            nb_cap = min(nt, b_half // (kc * b_per), (acc_half // cfg.rows) // mb)
            if nb_cap < 1:
                break
            for nb in {1, nb_cap, min(nt, max(1, nb_cap // 2))}:
                if block_instructions(min(mb, mt), min(nb, nt), steps, sparse) + 1 > cfg.imem_depth:
                    continue
                est = _estimate(cfg, mt, nt, units, mb, nb, steps, pattern)
                if best is None or est < best[0]:
                    best = (est, mb, nb, steps, kc)
    if best is None:
        why = (f"K = {k} is too long" if not sparse else
               f"K = {k} is too long, or no chunk of whole IDX words ({IDX_SLOTS_PER_WORD} slots) fits a buffer half")
        raise ValueError(f"config {cfg.name}: no tiling of a {m}x{n}x{k} GEMM{f' at {pattern[0]}:{pattern[1]}' if sparse else ''}"
                         f" fits the buffers and the {cfg.imem_depth}-instruction memory ({why})")
    est, mb, nb, steps, kc = best
    return GemmPlan(m, n, k, mt, nt, mb, nb, kc, steps, est, pattern)


def program_instructions(cfg: SATConfig, plan: GemmPlan) -> int:
    """Instructions of the whole GEMM (FINISHes not counted), from the plan alone, without emitting."""
    return sum(cm * cn * block_instructions(sm, sn, plan.steps, plan.pattern is not None)
               for sm, cm in _block_sizes(plan.mt, plan.mb) for sn, cn in _block_sizes(plan.nt, plan.nb))


def _segments(cfg: SATConfig, plan: GemmPlan) -> list[range]:
    """Consecutive block indices per program: each run holds whole blocks and fits the instruction memory."""
    sizes_m = [min(plan.mb, plan.mt - i0) for i0 in range(0, plan.mt, plan.mb)]
    sizes_n = [min(plan.nb, plan.nt - j0) for j0 in range(0, plan.nt, plan.nb)]
    counts = [block_instructions(sm, sn, plan.steps, plan.pattern is not None) for sm in sizes_m for sn in sizes_n]
    budget = cfg.imem_depth - 1  # room for the FINISH
    segments, first, used = [], 0, 0
    for index, count in enumerate(counts):
        if used + count > budget:
            segments.append(range(first, index))
            first, used = index, 0
        used += count
    segments.append(range(first, len(counts)))
    return segments


def _single(runs, what: str):
    if len(runs) != 1:
        raise ValueError(f"this GEMM runs as {len(runs)} programs, one after another: use `{what}` "
                         f"(e.g. CoreModel.run_sequence(memory, program.runs))")
    return runs[0]


@dataclass
class Program:
    """A GEMM's programs and the memory image they run against.

    ``memory`` is a uint8 array from DRAM address 0: the packed operands, room
    for the results, then the programs.  ``runs`` lists ``(program_addr,
    length)`` of each program, to be run one after another on one core (a
    GEMM longer than the instruction memory is cut into runs of whole output
    blocks); ``run_words`` their instructions.  ``regions`` names the address
    ranges (``name → (addr, nbytes)``).  ``program_addr``, ``length`` and
    ``words`` are those of a GEMM that runs as one program.
    """

    cfg: SATConfig
    run_words: list[list[int]]
    memory: np.ndarray
    runs: list[tuple[int, int]]
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)
    plan: GemmPlan | None = None

    @property
    def program_addr(self) -> int:
        return _single(self.runs, "runs")[0]

    @property
    def length(self) -> int:
        return _single(self.runs, "runs")[1]

    @property
    def words(self) -> list[int]:
        return _single(self.run_words, "run_words")


def pack_a(cfg: SATConfig, a_bits: np.ndarray) -> np.ndarray:
    """``A[M, K]`` bf16 bits → ``[Mt, K, R]`` (zero padded)."""
    m, k = a_bits.shape
    mt = math.ceil(m / cfg.rows)
    padded = np.zeros((mt * cfg.rows, k), dtype=np.uint16)
    padded[:m] = a_bits
    return np.ascontiguousarray(padded.reshape(mt, cfg.rows, k).transpose(0, 2, 1))


def pack_b(cfg: SATConfig, b_bits: np.ndarray) -> np.ndarray:
    """``B[K, N]`` bf16 bits → ``[Nt, K, C]`` (zero padded)."""
    k, n = b_bits.shape
    nt = math.ceil(n / cfg.cols)
    padded = np.zeros((k, nt * cfg.cols), dtype=np.uint16)
    padded[:, :n] = b_bits
    return np.ascontiguousarray(padded.reshape(k, nt, cfg.cols).transpose(1, 0, 2))


def unpack_c(cfg: SATConfig, packed: np.ndarray, m: int, n: int) -> np.ndarray:
    """``[Mt, Nt, R, C]`` fp32 → ``C[M, N]``."""
    mt, nt = packed.shape[:2]
    return packed.transpose(0, 2, 1, 3).reshape(mt * cfg.rows, nt * cfg.cols)[:m, :n]


def unpack_b(cfg: SATConfig, packed: np.ndarray, k: int, n: int) -> np.ndarray:
    """``[Nt, K', C]`` (a B operand, ``K' ≥ k`` words per N-tile) → ``B[k, n]``: :func:`pack_b` undone."""
    nt, words = packed.shape[:2]
    return packed.transpose(1, 0, 2).reshape(words, nt * cfg.cols)[:k, :n]


def read_tiles(cfg: SATConfig, memory: np.ndarray, addr: int, m: int, n: int) -> np.ndarray:
    """fp32 ``C[m, n]`` stored tile by tile (``[Mt, Nt, rows, cols]``) at ``addr`` in a memory image."""
    mt, nt = -(-m // cfg.rows), -(-n // cfg.cols)
    tiles = memory[addr:addr + mt * nt * cfg.rows * cfg.acc_word_bytes].view(np.float32)
    return unpack_c(cfg, tiles.reshape(mt, nt, cfg.rows, cfg.cols), m, n).copy()


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass(frozen=True)
class GemmLayout:
    """Where a GEMM's programs and operands live in DRAM, and their instructions (each run ends with FINISH)."""

    plan: GemmPlan
    programs: tuple[tuple[int, tuple[int, ...]], ...]  # (program_addr, words) of each run, in order
    regions: dict[str, tuple[int, int]]
    memory_bytes: int

    @property
    def runs(self) -> list[tuple[int, int]]:
        return [(addr, len(words)) for addr, words in self.programs]

    @property
    def words(self) -> tuple[int, ...]:
        """The instructions of a GEMM that runs as one program."""
        return _single(self.programs, "programs")[1]

    @property
    def instructions(self) -> int:
        return sum(len(words) for _, words in self.programs)


@functools.lru_cache(maxsize=128)
def layout_gemm(cfg: SATConfig, m: int, n: int, k: int, *, plan: GemmPlan | None = None,
                base_addr: int = 0, pattern: tuple[int, int] | None = None, out_bf16: bool = False,
                relu: bool = False) -> GemmLayout:
    """Plan and emit a GEMM from its shape alone (enough for timing-only simulation).

    ``out_bf16``: C is stored as bf16 (each accumulator rounded to nearest even by the STORE), half the
    bytes — how a layer's output feeds the next layer's GEMMs, whose operands are bf16 anyway.  ``relu``:
    the STOREs apply ReLU (a fused activation).

    The program's length is known from the plan before anything is emitted;
    a GEMM longer than the instruction memory becomes several programs of
    whole output blocks, run one after another.  Memoised (configs and plans
    are frozen): a training step repeats shapes.  The layout is read-only.
    """
    plan = plan or plan_gemm(cfg, m, n, k, pattern=pattern)
    if (plan.m, plan.n, plan.k) != (m, n, k) or (pattern is not None and plan.pattern != tuple(pattern)):
        raise ValueError(f"the plan is for a {plan.m}x{plan.n}x{plan.k} GEMM ({plan.pattern or 'dense'}), "
                         f"not {m}x{n}x{k} ({pattern or 'dense'})")
    # memory map, each region 4 KiB aligned: A (values), IDX (sparse), B, C, then the programs (their lengths
    # are known from the plan)
    page = 4096
    a_per, b_per = _per_unit(plan.pattern)
    a_bytes = plan.mt * plan.units * a_per * cfg.a_word_bytes
    idx_bytes = plan.mt * _idx_words(plan.units * a_per) * cfg.a_word_bytes if plan.pattern else 0
    b_bytes = plan.nt * plan.units * b_per * cfg.b_word_bytes
    c_bytes = plan.mt * plan.nt * cfg.rows * cfg.acc_word_bytes // (2 if out_bf16 else 1)
    a_addr = _align(base_addr, page)
    idx_addr = _align(a_addr + a_bytes, page)
    b_addr = _align(idx_addr + idx_bytes, page)
    c_addr = _align(b_addr + b_bytes, page)
    segments = _segments(cfg, plan)
    total = program_instructions(cfg, plan) + len(segments)
    prog_addr = _align(c_addr + c_bytes, page)
    end = _align(prog_addr + total * INSTRUCTION_BYTES, page)
    if end > 1 << cfg.addr_bits:
        raise ValueError(f"GEMM {m}x{n}x{k} needs {end} bytes of DRAM, more than the {cfg.addr_bits}-bit address space")
    programs = []
    addr = prog_addr
    for blocks in segments:
        words = emit_gemm(cfg, plan, a_addr=a_addr, b_addr=b_addr, c_addr=c_addr, idx_addr=idx_addr,
                          blocks=blocks, c_bf16=out_bf16, c_relu=relu) + [encode(Opcode.FINISH)]
        assert len(words) <= cfg.imem_depth
        programs.append((addr, tuple(words)))
        addr += len(words) * INSTRUCTION_BYTES
    regions = {"program": (prog_addr, total * INSTRUCTION_BYTES), "a": (a_addr, a_bytes), "b": (b_addr, b_bytes),
               "c": (c_addr, c_bytes)}
    if plan.pattern:
        regions["idx"] = (idx_addr, idx_bytes)
    return GemmLayout(plan, tuple(programs), regions, end)


_FLOATS = (np.float16, np.float32, np.float64)


def compile_gemm(cfg: SATConfig, a: np.ndarray, b: np.ndarray, *, plan: GemmPlan | None = None,
                 base_addr: int = 0, bf16_bits: bool = False, out_bf16: bool = False, relu: bool = False) -> Program:
    """Compile ``C = A · B`` for ``cfg`` with its memory image (``out_bf16``: C stored as bf16; ``relu``:
    ``max(C, 0)`` stored, fused into the STOREs).

    ``a`` ``[M, K]`` and ``b`` ``[K, N]`` are real floating-point arrays (float16, float32 or float64),
    rounded to bf16 (nearest even); with ``bf16_bits=True`` they are uint16 arrays of bf16 bit patterns
    instead.  Anything else is refused.
    """
    bits = []
    for name, x in (("A", a), ("B", b)):
        x = np.asarray(x)
        if bf16_bits:
            if x.dtype != np.uint16:
                raise TypeError(f"compile_gemm: with bf16_bits=True, {name} must be uint16 bit patterns, got {x.dtype}")
            bits.append(x)
        elif x.dtype.type in _FLOATS:
            bits.append(numerics.f32_to_bf16_bits(x.astype(np.float32)))
        else:
            raise TypeError(f"compile_gemm: {name} must be a real floating-point array (float16/32/64), got {x.dtype}"
                            + ("; pass bf16_bits=True for bf16 bit patterns" if x.dtype == np.uint16 else ""))
    a_bits, b_bits = bits
    if a_bits.ndim != 2 or b_bits.ndim != 2 or a_bits.shape[1] != b_bits.shape[0]:
        raise ValueError(f"GEMM operands must be [M, K] and [K, N], got {a_bits.shape} and {b_bits.shape}")
    m, k = a_bits.shape
    n = b_bits.shape[1]
    lay = layout_gemm(cfg, m, n, k, plan=plan, base_addr=base_addr, out_bf16=out_bf16, relu=relu)
    return _program(cfg, lay, {"a": pack_a(cfg, a_bits), "b": pack_b(cfg, b_bits)})


def _program(cfg: SATConfig, lay: GemmLayout, packed: dict[str, np.ndarray]) -> Program:
    """The memory image of a layout: its programs, and each packed operand in its region."""
    memory = np.zeros(lay.memory_bytes, dtype=np.uint8)
    for addr, words in lay.programs:
        blob = np.frombuffer(to_bytes(list(words)), dtype=np.uint8)
        memory[addr:addr + blob.size] = blob
    for name, data in packed.items():
        addr, nbytes = lay.regions[name]
        memory[addr:addr + nbytes] = data.view(np.uint8).ravel()
    return Program(cfg, [list(w) for _, w in lay.programs], memory, lay.runs, dict(lay.regions), lay.plan)


def pack_indices(cfg: SATConfig, idx: np.ndarray) -> np.ndarray:
    """Slot indices ``[M, slots]`` (each < 16) → IDX words ``[Mt, ceil(slots/4), R]`` uint16: lane r of word w
    holds the indices of slots 4w .. 4w+3 of row r, slot 4w+j in bits 4j .. 4j+3."""
    m, slots = idx.shape
    mt = math.ceil(m / cfg.rows)
    words = _idx_words(slots)
    padded = np.zeros((mt * cfg.rows, words * IDX_SLOTS_PER_WORD), dtype=np.uint16)
    padded[:m, :slots] = idx
    nibbles = padded.reshape(mt * cfg.rows, words, IDX_SLOTS_PER_WORD)
    lanes = (nibbles << (4 * np.arange(IDX_SLOTS_PER_WORD, dtype=np.uint16))).sum(axis=-1, dtype=np.uint16)
    return np.ascontiguousarray(lanes.reshape(mt, cfg.rows, words).transpose(0, 2, 1))


def compile_sparse_gemm(cfg: SATConfig, a: np.ndarray, b: np.ndarray, n: int, m: int, *, plan: GemmPlan | None = None,
                        base_addr: int = 0, out_bf16: bool = False) -> Program:
    """Compile ``C = (A ⊙ mask) · B`` with A pruned N:M along K by the rule of :mod:`nmsat.hw.sparsity`.

    A is held compressed (slot values and IDX words); B is padded with zero rows to ``ceil(K/m)·m``.
    ``a`` ``[M, K]`` and ``b`` ``[K, N]`` are real floating-point arrays; A's mask is chosen from its fp32
    values, its kept values rounded to bf16 like B.
    """
    for name, x in (("A", a), ("B", b)):
        if np.asarray(x).dtype.type not in _FLOATS:
            raise TypeError(f"compile_sparse_gemm: {name} must be a real floating-point array (float16/32/64), "
                            f"got {np.asarray(x).dtype}")
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"GEMM operands must be [M, K] and [K, N], got {a.shape} and {b.shape}")
    rows, k = a.shape
    lay = layout_gemm(cfg, rows, b.shape[1], k, plan=plan, base_addr=base_addr, pattern=(n, m), out_bf16=out_bf16)
    values, idx = compress(a, n, m)
    groups = lay.plan.units
    b_bits = np.zeros((groups * m, b.shape[1]), dtype=np.uint16)
    b_bits[:k] = numerics.f32_to_bf16_bits(b)
    return _program(cfg, lay, {"a": pack_a(cfg, values), "idx": pack_indices(cfg, idx), "b": pack_b(cfg, b_bits)})


def read_c(program: Program, memory: np.ndarray | None = None) -> np.ndarray:
    """The GEMM result ``C[M, N]`` (fp32; a bf16 C widened exactly) from a memory image after a run."""
    cfg, plan = program.cfg, program.plan
    memory = program.memory if memory is None else memory
    addr, nbytes = program.regions["c"]
    raw = memory[addr:addr + nbytes]
    values = numerics.bf16_bits_to_f32(raw.view(np.uint16)) if nbytes < plan.mt * plan.nt * cfg.rows * \
        cfg.acc_word_bytes else raw.view(np.float32)
    packed = values.reshape(plan.mt, plan.nt, cfg.rows, cfg.cols)
    return unpack_c(cfg, packed, plan.m, plan.n)


def emit_gemm(cfg: SATConfig, plan: GemmPlan, *, a_addr: int, b_addr: int, c_addr: int, idx_addr: int = 0,
              blocks: range | None = None, a_tile_stride: int | None = None,
              c_row_stride: int | None = None, c_bf16: bool = False, c_relu: bool = False) -> list[int]:
    """The instructions of one GEMM (no FINISH), double-buffered, with tokens placed (see :func:`gemm_steps`)."""
    loads, gemms, stores = gemm_steps(cfg, plan, a_addr=a_addr, b_addr=b_addr, c_addr=c_addr, idx_addr=idx_addr,
                                      blocks=blocks, a_tile_stride=a_tile_stride, c_row_stride=c_row_stride,
                                      c_bf16=c_bf16, c_relu=c_relu)
    return software_pipelined(loads, gemms, stores)


def gemm_steps(cfg: SATConfig, plan: GemmPlan, *, a_addr: int, b_addr: int, c_addr: int, idx_addr: int = 0,
               blocks: range | None = None, a_tile_stride: int | None = None, b_tile_stride: int | None = None,
               c_row_stride: int | None = None, c_b_tile_stride: int | None = None, c_bf16: bool = False,
               c_relu: bool = False, first_step: int = 0, first_block: int = 0, b_waits: bool = False,
               c_signals: bool = False) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """The instructions of one GEMM per reduction step: (LOADs, GEMMs, STOREs issued after the step).

    ``blocks`` (indices in block order, row of blocks by row) limits the program to those output blocks:
    each run of the core starts with empty token counters, so the tokens are placed from its first block.
    ``a_tile_stride`` (sparse): bytes from one M-tile's A slots (and IDX words) to the next's, when A
    comes as the sparsifier's records (``nmsat.dataflow.sparsify``) instead of two packed arrays.
    ``c_row_stride``: store C row-major, row ``i`` at ``c_addr + i · c_row_stride`` bytes (its ``Nt · cols``
    columns contiguous, the last tiles' pad rows and columns included) instead of tile by tile — how a WU
    GEMM leaves ``dW`` in the master weights' layout for WEIGHT_UPDATE.  ``c_bf16``: the STOREs round C to
    bf16 (words of ``cols`` bf16); ``c_relu``: they apply ReLU first.  ``b_tile_stride``: bytes from one
    N-tile's B words to the next's (default: the GEMM's own K).  ``c_b_tile_stride``: store C (bf16) as the
    B operand of a next GEMM whose N-tiles are that many bytes apart: tile (i, j)'s rows at
    ``c_addr + j · c_b_tile_stride + i · rows · word``.

    A GEMM that continues a chain of GEMMs in one program (``nmsat.dataflow.chain``) starts its step and
    block counts at ``first_step`` / ``first_block`` (the buffer halves and the tokens carry on from the
    GEMMs before it); ``b_waits``: its first B LOAD pops ``p2l`` (the vector unit's word that the B operand
    is in memory); ``c_signals``: its last STORE pushes ``s2p`` (C is in memory).

    Tokens: the last LOAD of a step pushes to compute and the step's first GEMM
    pops it (data ready); the step's last GEMM pushes back to load and the
    LOADs into that buffer half two steps later pop it (half free).  The last
    GEMM of a block pushes to store and its first STORE pops it; the block's
    last STORE pushes back and the first GEMM two blocks later pops it.
    """
    work = gemm_blocks(cfg, plan, a_addr=a_addr, b_addr=b_addr, c_addr=c_addr, idx_addr=idx_addr, blocks=blocks,
                       a_tile_stride=a_tile_stride, b_tile_stride=b_tile_stride, c_row_stride=c_row_stride,
                       c_b_tile_stride=c_b_tile_stride, c_bf16=c_bf16, c_relu=c_relu, first_step=first_step,
                       first_block=first_block)
    return place_tokens(work, first_step=first_step, first_block=first_block, b_waits=b_waits, c_signals=c_signals)


def gemm_blocks(cfg: SATConfig, plan: GemmPlan, *, a_addr: int, b_addr: int, c_addr: int, idx_addr: int = 0,
                blocks: range | None = None, a_tile_stride: int | None = None, b_tile_stride: int | None = None,
                c_row_stride: int | None = None, c_b_tile_stride: int | None = None, c_bf16: bool = False,
                c_relu: bool = False, first_step: int = 0, first_block: int = 0) -> list[tuple[list, list]]:
    """The work of :func:`gemm_steps` as blocks for :func:`place_tokens` (per output block its steps of LOAD and
    GEMM argument dicts, then its STORE dicts), before the tokens are placed."""
    R = cfg.rows
    pattern = plan.pattern
    a_half, b_half, idx_half = _halves(cfg, pattern)
    acc_half = cfg.acc_depth // 2
    a_per, b_per = _per_unit(pattern)
    kc, steps, units = plan.kc, plan.steps, plan.units
    a_tile_bytes = units * a_per * cfg.a_word_bytes  # one M-tile: K words (dense) or G·n slots (sparse)
    idx_tile_bytes = _idx_words(units * a_per) * cfg.a_word_bytes
    if a_tile_stride is not None:
        a_tile_bytes = idx_tile_bytes = a_tile_stride
    idx_chunk = _idx_words(kc * a_per)  # IDX words of a full chunk (a whole number of them but for the last)
    b_tile_bytes = units * b_per * cfg.b_word_bytes if b_tile_stride is None else b_tile_stride
    c_word = cfg.acc_word_bytes // 2 if c_bf16 else cfg.acc_word_bytes
    if c_b_tile_stride is not None and not c_bf16:
        raise ValueError("gemm_steps: C stored as a next GEMM's B operand must be bf16 (c_bf16)")
    c_tile_bytes = R * c_word
    blocks_out: list[tuple[list, list]] = []  # per block: its steps (LOADs, GEMMs), its STOREs
    block_index = first_block
    origins = [(i0, j0) for i0 in range(0, plan.mt, plan.mb) for j0 in range(0, plan.nt, plan.nb)]
    step_index = first_step
    for i0, j0 in (origins if blocks is None else [origins[i] for i in blocks]):
        mis = range(i0, min(i0 + plan.mb, plan.mt))
        njs = range(j0, min(j0 + plan.nb, plan.nt))
        acc_base = (block_index % 2) * acc_half
        steps_out = []
        for s in range(steps):
            k0 = s * kc  # first reduction unit of the chunk
            klen = min(kc, units - k0)
            half = step_index % 2
            loads = []
            for x, mi in enumerate(mis):
                loads.append(dict(buffer=Buffer.A, sram_addr=half * a_half + x * kc * a_per, rows=klen * a_per,
                                  dram_addr=a_addr + mi * a_tile_bytes + k0 * a_per * cfg.a_word_bytes,
                                  dram_stride=cfg.a_word_bytes))
                if pattern:
                    loads.append(dict(buffer=Buffer.IDX, sram_addr=half * idx_half + x * idx_chunk,
                                      rows=_idx_words(klen * a_per),
                                      dram_addr=idx_addr + mi * idx_tile_bytes + s * idx_chunk * cfg.a_word_bytes,
                                      dram_stride=cfg.a_word_bytes))
            for y, nj in enumerate(njs):
                loads.append(dict(buffer=Buffer.B, sram_addr=half * b_half + y * kc * b_per, rows=klen * b_per,
                                  dram_addr=b_addr + nj * b_tile_bytes + k0 * b_per * cfg.b_word_bytes,
                                  dram_stride=cfg.b_word_bytes))
            gemms = []
            for x in range(len(mis)):
                for y in range(len(njs)):
                    gemms.append(gemm_args(pattern, klen, half * idx_half + x * idx_chunk,
                                           a_addr=half * a_half + x * kc * a_per, b_addr=half * b_half + y * kc * b_per,
                                           acc_addr=acc_base + (x * len(njs) + y) * R, accumulate=int(s > 0)))
            steps_out.append((loads, gemms))
            step_index += 1
        stores = []
        for x, mi in enumerate(mis):
            for y, nj in enumerate(njs):
                if c_b_tile_stride is not None:
                    where = dict(dram_addr=c_addr + nj * c_b_tile_stride + mi * R * c_word, dram_stride=c_word)
                elif c_row_stride is None:
                    where = dict(dram_addr=c_addr + (mi * plan.nt + nj) * c_tile_bytes, dram_stride=c_word)
                else:
                    where = dict(dram_addr=c_addr + mi * R * c_row_stride + nj * c_word, dram_stride=c_row_stride)
                stores.append(dict(buffer=Buffer.ACC, sram_addr=acc_base + (x * len(njs) + y) * R, rows=R,
                                   bf16=int(c_bf16), relu=int(c_relu), **where))
        blocks_out.append((steps_out, stores))
        block_index += 1
    return blocks_out


def gemm_args(pattern: tuple[int, int] | None, units: int, idx_addr: int, **common) -> tuple[Opcode, dict]:
    """(opcode, arguments) of one GEMM of ``units`` reduction units: a GEMM of ``k = units`` words, or with an
    N:M ``pattern`` a SPARSE_GEMM of ``units`` groups whose indices start at ``idx_addr``; ``common`` holds the
    buffer addresses, ``accumulate`` and any kernel walk."""
    if pattern is None:
        return Opcode.GEMM, dict(**common, k=units)
    return Opcode.SPARSE_GEMM, dict(**common, groups=units, n=pattern[0], m_log2=pattern[1].bit_length() - 1,
                                    idx_addr=idx_addr)


def place_tokens(blocks: list[tuple[list, list]], *, first_step: int = 0, first_block: int = 0,
                 b_waits: bool = False, c_signals: bool = False) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Encode blocks of double-buffered work with their dependency tokens: (LOADs, GEMMs, STOREs after) per step.

    ``blocks``: per output block, its reduction steps as (LOAD argument dicts, (opcode, GEMM argument dict)
    pairs) and the STORE argument dicts after its last step.  The steps alternate buffer halves and the
    blocks accumulator halves (counted from ``first_step`` / ``first_block``); the tokens are those of
    :func:`gemm_steps` (data ready, half free two steps later; tiles to store, accumulator half free two
    blocks later), so any emitter of this shape (a GEMM's tiles, a convolution's kernel walks) shares them.
    """
    step_loads: list[list[int]] = []
    step_gemms: list[list[int]] = []
    step_stores: list[list[int]] = []
    step_index, block_index = first_step, first_block
    waiting = b_waits
    for steps, stores in blocks:
        for s, (loads, gemms) in enumerate(steps):
            step_loads.append([])
            step_gemms.append([])
            step_stores.append([])
            for idx, args in enumerate(loads):
                wait = waiting and args["buffer"] is Buffer.B
                waiting = waiting and not wait
                step_loads[-1].append(encode(Opcode.LOAD, pop_next=int(idx == 0 and step_index >= 2),
                                             pop_prev=int(wait), push_next=int(idx == len(loads) - 1), **args))
            for idx, (opcode, args) in enumerate(gemms):
                first, last = idx == 0, idx == len(gemms) - 1
                step_gemms[-1].append(encode(opcode, pop_prev=int(first),
                                             pop_next=int(first and s == 0 and block_index >= 2),
                                             push_prev=int(last), push_next=int(last and s == len(steps) - 1),
                                             **args))
            step_index += 1
        for idx, args in enumerate(stores):
            step_stores[-1].append(encode(Opcode.STORE, pop_prev=int(idx == 0), push_prev=int(idx == len(stores) - 1),
                                          **args))
        block_index += 1
    if c_signals:
        step_stores[-1][-1] = with_flags(step_stores[-1][-1], push_next=1)  # the last STORE pushes s2p
    return step_loads, step_gemms, step_stores


def software_pipelined(step_loads: list[list], step_gemms: list[list], step_stores: list[list]) -> list:
    """Offline scheduling of per-step instruction lists: loads of step t+1, GEMMs of step t, stores of step t−1.

    The dispatcher is in order, so a STORE waiting for its GEMMs must not sit in front of the next
    step's LOADs.  Each unit's own order is unchanged, so the tokens keep their meaning.
    """
    out: list = list(step_loads[0]) if step_loads else []
    for t in range(len(step_gemms)):
        if t + 1 < len(step_loads):
            out += step_loads[t + 1]
        out += step_gemms[t]
        if t >= 1:
            out += step_stores[t - 1]
    if step_stores:
        out += step_stores[-1]
    return out


def link_runs(memory: np.ndarray, runs: list[tuple[int, int]]) -> tuple[int, int]:
    """Link programs that run one after another into one run of the core: each one's closing FINISH (in the
    memory image, rewritten in place) names the next (``nmsat.hw.isa.FinishArgs``).  Returns the first
    ``(program_addr, program_len)``: START it once, and the core fetches and runs the rest itself."""
    for (addr, length), (next_addr, next_len) in zip(runs, runs[1:]):
        if next_addr <= addr:  # the core refuses a chain that goes back (BAD_ARGS): it might never end
            raise ValueError(f"link_runs: the programs must be at increasing addresses ({next_addr:#x} after {addr:#x})")
        at = addr + (length - 1) * INSTRUCTION_BYTES
        word = int.from_bytes(memory[at:at + INSTRUCTION_BYTES].tobytes(), "little")
        if word & 0xF != Opcode.FINISH.value or word >> 4:
            raise ValueError(f"link_runs: the program at {addr:#x} does not end in a plain FINISH")
        memory[at:at + INSTRUCTION_BYTES] = np.frombuffer(
            encode(Opcode.FINISH, next_addr=next_addr, next_len=next_len).to_bytes(INSTRUCTION_BYTES, "little"),
            dtype=np.uint8)
    return runs[0]
