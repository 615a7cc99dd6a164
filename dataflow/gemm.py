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
from ..hw.isa import INSTRUCTION_BYTES, Buffer, Opcode, encode, to_bytes
from ..hw import numerics, timing

__all__ = ["GemmPlan", "plan_gemm", "GemmLayout", "layout_gemm", "Program", "compile_gemm", "read_c", "emit_gemm",
           "pack_a", "pack_b", "unpack_c", "program_instructions", "block_instructions", "software_pipelined"]


@dataclass(frozen=True)
class GemmPlan:
    """How one GEMM is cut: ``mb × nb`` output tiles per block, K in ``steps`` chunks of ``kc``."""

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


def _estimate(cfg: SATConfig, mt: int, nt: int, k: int, mb: int, nb: int, steps: int) -> int:
    kc = math.ceil(k / steps)
    a_bpw, b_bpw = cfg.a_word_bytes // cfg.bus_bytes, cfg.b_word_bytes // cfg.bus_bytes
    blocks = math.ceil(mt / mb) * math.ceil(nt / nb)
    # a step: its loads (beats, then the read latency) against its GEMMs (MACs and the drain, which overlaps
    # the next GEMM but not the next transfer)
    per_step = max((mb * a_bpw + nb * b_bpw) * kc + cfg.mem_read_latency,
                   mb * nb * (timing.gemm_mac_cycles(kc) + timing.drain_cycles(cfg)))
    store = mb * nb * cfg.rows * (cfg.acc_word_bytes // cfg.bus_bytes)
    return blocks * (steps * per_step + store) + cfg.mem_read_latency


def _block_sizes(total: int, per_block: int) -> list[tuple[int, int]]:
    """(size, how many) of the blocks that cut ``total`` tiles into blocks of ``per_block``: full ones, then the rest."""
    full, rest = divmod(total, per_block)
    return [(per_block, full)] * bool(full) + [(rest, 1)] * bool(rest)


def block_instructions(mis: int, njs: int, steps: int) -> int:
    """Instructions of one block of ``mis × njs`` output tiles in ``steps`` K chunks (what :func:`emit_gemm` emits)."""
    return steps * (mis + njs + mis * njs) + mis * njs


def _largest_block(mt: int, nt: int, mb: int, nb: int, steps: int) -> int:
    return block_instructions(min(mb, mt), min(nb, nt), steps)


def plan_gemm(cfg: SATConfig, m: int, n: int, k: int) -> GemmPlan:
    """Pick the block shape and K chunk with the lowest estimated cycle count that fits the buffers.

    Only plans whose largest block fits the instruction memory (with a FINISH) are considered: a GEMM
    whose whole program is longer runs as several programs, one after another, each a run of whole
    blocks (:func:`layout_gemm`).
    """
    for name, v in (("M", m), ("N", n), ("K", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"GEMM {name} must be a positive int, got {v!r}")
    mt, nt = math.ceil(m / cfg.rows), math.ceil(n / cfg.cols)
    a_half, b_half, acc_half = cfg.a_depth // 2, cfg.b_depth // 2, cfg.acc_depth // 2
    if acc_half < cfg.rows:
        raise ValueError(f"config {cfg.name}: the accumulator buffer cannot hold two output tiles")
    if min(a_half, b_half) < 1:
        raise ValueError(f"config {cfg.name}: the A and B buffers need two halves of at least one word")
    best = None
    max_steps = k  # kc = 1 at worst
    steps_options = sorted({math.ceil(k / kc) for kc in range(1, min(k, max(a_half, b_half)) + 1)
                            if kc <= a_half and kc <= b_half} | {max_steps})
    for steps in steps_options:
        kc = math.ceil(k / steps)
        if kc > a_half or kc > b_half:
            continue
        if block_instructions(1, 1, steps) + 1 > cfg.imem_depth:
            continue  # even the smallest block is longer than the instruction memory
        for mb in range(1, min(mt, a_half // kc) + 1):
            nb_cap = min(nt, b_half // kc, (acc_half // cfg.rows) // mb)
            if nb_cap < 1:
                break
            for nb in {1, nb_cap, min(nt, max(1, nb_cap // 2))}:
                if _largest_block(mt, nt, mb, nb, steps) + 1 > cfg.imem_depth:
                    continue
                est = _estimate(cfg, mt, nt, k, mb, nb, steps)
                if best is None or est < best[0]:
                    best = (est, mb, nb, steps, kc)
    if best is None:
        raise ValueError(f"config {cfg.name}: no tiling of a {m}x{n}x{k} GEMM fits the buffers and the "
                         f"{cfg.imem_depth}-instruction memory (K = {k} is too long)")
    est, mb, nb, steps, kc = best
    return GemmPlan(m, n, k, mt, nt, mb, nb, kc, steps, est)


def program_instructions(cfg: SATConfig, plan: GemmPlan) -> int:
    """Instructions of the whole GEMM (FINISHes not counted), from the plan alone, without emitting."""
    return sum(cm * cn * block_instructions(sm, sn, plan.steps)
               for sm, cm in _block_sizes(plan.mt, plan.mb) for sn, cn in _block_sizes(plan.nt, plan.nb))


def _segments(cfg: SATConfig, plan: GemmPlan) -> list[range]:
    """Consecutive block indices per program: each run holds whole blocks and fits the instruction memory."""
    sizes_m = [min(plan.mb, plan.mt - i0) for i0 in range(0, plan.mt, plan.mb)]
    sizes_n = [min(plan.nb, plan.nt - j0) for j0 in range(0, plan.nt, plan.nb)]
    counts = [block_instructions(sm, sn, plan.steps) for sm in sizes_m for sn in sizes_n]
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
                base_addr: int = 0) -> GemmLayout:
    """Plan and emit a GEMM from its shape alone (enough for timing-only simulation).

    The program's length is known from the plan before anything is emitted;
    a GEMM longer than the instruction memory becomes several programs of
    whole output blocks, run one after another.  Memoised (configs and plans
    are frozen): a training step repeats shapes.  The layout is read-only.
    """
    plan = plan or plan_gemm(cfg, m, n, k)
    if (plan.m, plan.n, plan.k) != (m, n, k):
        raise ValueError(f"the plan is for a {plan.m}x{plan.n}x{plan.k} GEMM, not {m}x{n}x{k}")
    # memory map, each region 4 KiB aligned: A, B, C, then the programs (their lengths are known from the plan)
    page = 4096
    a_bytes = plan.mt * plan.k * cfg.a_word_bytes
    b_bytes = plan.nt * plan.k * cfg.b_word_bytes
    c_bytes = plan.mt * plan.nt * cfg.rows * cfg.acc_word_bytes
    a_addr = _align(base_addr, page)
    b_addr = _align(a_addr + a_bytes, page)
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
        words = emit_gemm(cfg, plan, a_addr=a_addr, b_addr=b_addr, c_addr=c_addr, blocks=blocks) + [encode(Opcode.FINISH)]
        assert len(words) <= cfg.imem_depth
        programs.append((addr, tuple(words)))
        addr += len(words) * INSTRUCTION_BYTES
    regions = {"program": (prog_addr, total * INSTRUCTION_BYTES), "a": (a_addr, a_bytes), "b": (b_addr, b_bytes),
               "c": (c_addr, c_bytes)}
    return GemmLayout(plan, tuple(programs), regions, end)


_FLOATS = (np.float16, np.float32, np.float64)


def compile_gemm(cfg: SATConfig, a: np.ndarray, b: np.ndarray, *, plan: GemmPlan | None = None,
                 base_addr: int = 0, bf16_bits: bool = False) -> Program:
    """Compile ``C = A · B`` for ``cfg`` with its memory image.

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
    lay = layout_gemm(cfg, m, n, k, plan=plan, base_addr=base_addr)
    memory = np.zeros(lay.memory_bytes, dtype=np.uint8)
    for addr, words in lay.programs:
        blob = np.frombuffer(to_bytes(list(words)), dtype=np.uint8)
        memory[addr:addr + blob.size] = blob
    for name, packed in (("a", pack_a(cfg, a_bits)), ("b", pack_b(cfg, b_bits))):
        addr, nbytes = lay.regions[name]
        memory[addr:addr + nbytes] = packed.view(np.uint8).ravel()
    return Program(cfg, [list(w) for _, w in lay.programs], memory, lay.runs, dict(lay.regions), lay.plan)


def read_c(program: Program, memory: np.ndarray | None = None) -> np.ndarray:
    """The GEMM result ``C[M, N]`` (fp32) from a memory image after a run."""
    cfg, plan = program.cfg, program.plan
    memory = program.memory if memory is None else memory
    addr, nbytes = program.regions["c"]
    packed = memory[addr:addr + nbytes].view(np.float32).reshape(plan.mt, plan.nt, cfg.rows, cfg.cols)
    return unpack_c(cfg, packed, plan.m, plan.n)


def emit_gemm(cfg: SATConfig, plan: GemmPlan, *, a_addr: int, b_addr: int, c_addr: int,
              blocks: range | None = None) -> list[int]:
    """The instructions of one GEMM (no FINISH), double-buffered, with tokens placed.

    ``blocks`` (indices in block order, row of blocks by row) limits the program to those output blocks:
    each run of the core starts with empty token counters, so the tokens are placed from its first block.

    Tokens: the last LOAD of a step pushes to compute and the step's first GEMM
    pops it (data ready); the step's last GEMM pushes back to load and the
    LOADs into that buffer half two steps later pop it (half free).  The last
    GEMM of a block pushes to store and its first STORE pops it; the block's
    last STORE pushes back and the first GEMM two blocks later pops it.
    """
    R = cfg.rows
    a_half, b_half, acc_half = cfg.a_depth // 2, cfg.b_depth // 2, cfg.acc_depth // 2
    kc, steps = plan.kc, plan.steps
    a_tile_bytes = plan.k * cfg.a_word_bytes  # one M-tile: K words
    b_tile_bytes = plan.k * cfg.b_word_bytes
    c_tile_bytes = R * cfg.acc_word_bytes
    # per step: (loads, gemms, stores issued after the step); emitted software-pipelined below
    step_loads: list[list[int]] = []
    step_gemms: list[list[int]] = []
    step_stores: list[list[int]] = []
    step_index = 0
    block_index = 0
    origins = [(i0, j0) for i0 in range(0, plan.mt, plan.mb) for j0 in range(0, plan.nt, plan.nb)]
    for i0, j0 in (origins if blocks is None else [origins[i] for i in blocks]):
        mis = range(i0, min(i0 + plan.mb, plan.mt))
        njs = range(j0, min(j0 + plan.nb, plan.nt))
        acc_base = (block_index % 2) * acc_half
        for s in range(steps):
            k0 = s * kc
            klen = min(kc, plan.k - k0)
            half = step_index % 2
            loads = []
            for x, mi in enumerate(mis):
                loads.append(dict(buffer=Buffer.A, sram_addr=half * a_half + x * kc, rows=klen,
                                  dram_addr=a_addr + mi * a_tile_bytes + k0 * cfg.a_word_bytes,
                                  dram_stride=cfg.a_word_bytes))
            for y, nj in enumerate(njs):
                loads.append(dict(buffer=Buffer.B, sram_addr=half * b_half + y * kc, rows=klen,
                                  dram_addr=b_addr + nj * b_tile_bytes + k0 * cfg.b_word_bytes,
                                  dram_stride=cfg.b_word_bytes))
            step_loads.append([])
            step_gemms.append([])
            step_stores.append([])
            for idx, args in enumerate(loads):
                step_loads[-1].append(encode(Opcode.LOAD, pop_next=int(idx == 0 and step_index >= 2),
                                  push_next=int(idx == len(loads) - 1), **args))
            pairs = [(x, y) for x in range(len(mis)) for y in range(len(njs))]
            for idx, (x, y) in enumerate(pairs):
                first, last = idx == 0, idx == len(pairs) - 1
                step_gemms[-1].append(encode(Opcode.GEMM, pop_prev=int(first),
                                  pop_next=int(first and s == 0 and block_index >= 2),
                                  push_prev=int(last), push_next=int(last and s == steps - 1),
                                  a_addr=half * a_half + x * kc, b_addr=half * b_half + y * kc,
                                  acc_addr=acc_base + (x * len(njs) + y) * R, k=klen, accumulate=int(s > 0)))
            step_index += 1
        tiles = [(x, y, mi, nj) for x, mi in enumerate(mis) for y, nj in enumerate(njs)]
        for idx, (x, y, mi, nj) in enumerate(tiles):
            step_stores[-1].append(encode(Opcode.STORE, pop_prev=int(idx == 0), push_prev=int(idx == len(tiles) - 1),
                              buffer=Buffer.ACC, sram_addr=acc_base + (x * len(njs) + y) * R, rows=R,
                              dram_addr=c_addr + (mi * plan.nt + nj) * c_tile_bytes,
                              dram_stride=cfg.acc_word_bytes))
        block_index += 1
    return software_pipelined(step_loads, step_gemms, step_stores)


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
