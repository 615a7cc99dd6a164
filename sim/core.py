"""The simulator of the whole core: runs a program from memory, cycle-exact and bit-exact.

:class:`CoreModel` is the twin of the gateware ``nmsat.hw.core.Core``.  It never
steps cycle by cycle: a program is decoded at once (vectorised), checked
statically, then timed by a small worklist over the four units and their
dependency tokens using the latency rules of :mod:`nmsat.hw.timing`
(:mod:`nmsat.sim.worklist`, compiled with numba); the
instructions that started before the run stopped are then executed for their
data, in program order, with the vectorised numerics of
:mod:`nmsat.sim.numerics`.  Program order gives the core's bytes whenever the
program is race-free; the run's ``hazards`` name every pair of instructions
whose buffer or memory accesses the timing leaves unordered (a dropped
token), for which the bytes are not defined.

The memory model is the array passed to :meth:`CoreModel.run`: its size is
the memory's size, and a bus beat past it is answered with DECERR (reads
give zeros, writes are dropped), so the core reports AXI_ERROR, as the
benches' memories do.

Not here: building programs (``nmsat.dataflow``) or talking to a device
(``nmsat.sw``).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..hw.config import IDX_SLOTS_PER_WORD, SATConfig
from ..hw.isa import INSTRUCTION_BYTES, Buffer, Csr, ErrorCode, Opcode, Status, VectorFunc, decode_program, to_bytes
from ..hw import timing
from ..hw.sparsity import compress
from . import numerics
from .worklist import run_worklist

__all__ = ["CoreModel", "RunResult", "Hazard", "check_program"]

#: opcodes and buffers as plain ints (enum attribute lookups are slow in the per-instruction loops)
_OP_FINISH = Opcode.FINISH.value
_OP_GEMM = Opcode.GEMM.value
_OP_LOAD = Opcode.LOAD.value
_OP_SPARSE_GEMM = Opcode.SPARSE_GEMM.value
_OP_SPARSIFY = Opcode.SPARSIFY.value
_OP_STORE = Opcode.STORE.value
_OP_VECTOR = Opcode.VECTOR.value
_OP_WEIGHT_UPDATE = Opcode.WEIGHT_UPDATE.value
_BUF_A = Buffer.A.value
_BUF_ACC = Buffer.ACC.value
_BUF_B = Buffer.B.value
_BUF_IDX = Buffer.IDX.value

LOAD, COMPUTE, STORE, SPARSIFY = 0, 1, 2, 3
UNITS = (LOAD, COMPUTE, STORE, SPARSIFY)
UNIT_NAMES = ("load", "compute", "store", "sparsify")
_UNIT_OF_OPCODE = {_OP_LOAD: LOAD, _OP_GEMM: COMPUTE, _OP_SPARSE_GEMM: COMPUTE,
                   _OP_STORE: STORE, _OP_SPARSIFY: SPARSIFY, _OP_WEIGHT_UPDATE: SPARSIFY,
                   _OP_VECTOR: SPARSIFY}
_STREAM_OPS = (_OP_WEIGHT_UPDATE, _OP_VECTOR)  # the stream engine's (nmsat.hw.timing.stream_*)
#: token channels of the ring load → compute → store → sparsify → load, each way (the core's order of them)
CHANNELS = ("l2c", "c2l", "c2s", "s2c", "s2p", "p2s", "p2l", "l2p")
L2C, C2L, C2S, S2C, S2P, P2S, P2L, L2P = range(8)
_POP_PREV = {COMPUTE: L2C, STORE: C2S, SPARSIFY: S2P, LOAD: P2L}
_POP_NEXT = {LOAD: C2L, COMPUTE: S2C, STORE: P2S, SPARSIFY: L2P}
_PUSH_PREV = {COMPUTE: C2L, STORE: S2C, SPARSIFY: P2S, LOAD: L2P}
_PUSH_NEXT = {LOAD: L2C, COMPUTE: C2S, STORE: S2P, SPARSIFY: P2L}
#: the same as arrays indexed by unit, and the unit of each opcode (−1: none)
_POP_PREV_T, _POP_NEXT_T, _PUSH_PREV_T, _PUSH_NEXT_T = (np.array([t[u] for u in UNITS], dtype=np.int64)
                                                        for t in (_POP_PREV, _POP_NEXT, _PUSH_PREV, _PUSH_NEXT))
_UNIT_TABLE = np.array([_UNIT_OF_OPCODE.get(o, -1) for o in range(16)], dtype=np.int64)


@dataclass(frozen=True)
class Hazard:
    """Two instructions of different units touch the same buffer words or memory bytes, one of them
    writing, and the timing does not put the later one (in program order) after the earlier one."""

    storage: str  # "A", "B", "IDX", "ACC" or "DRAM" (first_pc == second_pc: one instruction's arrays overlap)
    kind: str  # "read after write" or "write after read"
    first_pc: int  # earlier in program order
    second_pc: int

    def __str__(self) -> str:
        return (f"{self.kind} on {self.storage}: instruction {self.second_pc} overlaps in time with "
                f"instruction {self.first_pc} before it (a missing dependency token?)")


@dataclass
class RunResult:
    """What one run of a program leaves: status, error, cycle count and per-unit statistics."""

    status: Status
    error: ErrorCode
    cycles: int
    error_pc: int = 0
    busy: dict[str, int] = field(default_factory=dict)  # cycles each unit had work in flight
    token_stall: dict[str, int] = field(default_factory=dict)  # cycles started instructions waited for tokens
    instructions: int = 0  # instructions dispatched (by the stop cycle)
    executed: int = 0  # instructions that started before the run stopped (their effects all took place)
    gemm_macs: int = 0  # useful MAC slots: Σ k · rows · cols over GEMMs (DONE runs)
    hazards: list[Hazard] = field(default_factory=list)  # unordered accesses (checked by `run`)

    @property
    def ok(self) -> bool:
        return self.status is Status.DONE

    @property
    def race_free(self) -> bool:
        return not self.hazards

    def utilisation(self, cfg: SATConfig) -> float:
        """Fraction of the PE array's MAC slots used over the whole run."""
        return self.gemm_macs / (self.cycles * cfg.rows * cfg.cols) if self.cycles else 0.0


_BUFFERS = (Buffer.A, Buffer.B, Buffer.ACC, Buffer.IDX)


def _word_bytes(cfg: SATConfig, buf: np.ndarray) -> np.ndarray:
    return np.select([buf == b.value for b in _BUFFERS], [cfg.word_bytes(b) for b in _BUFFERS], 0)


def dram_word_bytes(cfg: SATConfig, f: dict[str, np.ndarray]) -> np.ndarray:
    """Bytes of each LOAD/STORE row in memory: the buffer's word, half an ACC word for a bf16 STORE, a block of
    ``rows`` B words for a transposing LOAD."""
    bf16_store = (f["opcode"] == _OP_STORE) & (f["bf16"] != 0)
    transposing = (f["opcode"] == _OP_LOAD) & (f["tile_transpose"] != 0)
    return np.where(bf16_store, cfg.acc_word_bytes // 2,
                    np.where(transposing, cfg.rows * cfg.b_word_bytes, _word_bytes(cfg, f["buffer"])))


def buffer_words(cfg: SATConfig, f: dict[str, np.ndarray]) -> np.ndarray:
    """Buffer words each LOAD/STORE writes or reads: ``rows``, or ``rows · cols`` for a transposing LOAD."""
    return np.where((f["opcode"] == _OP_LOAD) & (f["tile_transpose"] != 0), f["rows"] * cfg.cols, f["rows"])


def kernel_walk(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(taps, B words from b_addr to the last tap's first word) of every instruction read as a GEMM (vectorised)."""
    walk_h, walk_w = np.maximum(f["taps_h"], 1), np.maximum(f["taps_w"], 1)
    return walk_h * walk_w, (walk_h - 1) * f["tap_h_stride"] + (walk_w - 1) * f["tap_w_stride"]


def sparse_shape(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slots, m, index words) of every instruction read as a SPARSE_GEMM (vectorised; all taps)."""
    slots = kernel_walk(f)[0] * f["groups"] * f["n"]
    return slots, np.left_shift(1, f["m_log2"]), -(-slots // IDX_SLOTS_PER_WORD)


def gemm_extents(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(reduction steps: A words read, B words from b_addr to one past the last read) of every instruction
    read as a GEMM or SPARSE_GEMM (vectorised; the B span bounds the kernel walk's words)."""
    taps, last_tap = kernel_walk(f)
    sparse = f["opcode"] == _OP_SPARSE_GEMM
    steps = np.where(sparse, sparse_shape(f)[0], taps * f["k"])
    return steps, last_tap + np.where(sparse, f["groups"] * np.left_shift(1, f["m_log2"]), f["k"])


def tap_offsets(f: dict[str, np.ndarray], i: int) -> np.ndarray:
    """B word offsets of instruction ``i``'s taps from b_addr, in walk order (kernel row by kernel row)."""
    walk_h, walk_w = max(int(f["taps_h"][i]), 1), max(int(f["taps_w"][i]), 1)
    return (np.arange(walk_h)[:, None] * int(f["tap_h_stride"][i])
            + np.arange(walk_w)[None, :] * int(f["tap_w_stride"][i])).reshape(-1)


def check_program(cfg: SATConfig, f: dict[str, np.ndarray], program_addr: int | None = None) -> tuple[int, ErrorCode]:
    """Static checks of every instruction (vectorised); returns (first bad index, code) or (-1, NONE).
    ``program_addr``: where the program is (a FINISH may chain only to a later address; None: not checked)."""
    n = len(f["opcode"])
    op = f["opcode"]
    code = np.zeros(n, dtype=np.int64)

    def flag(cond: np.ndarray, err: ErrorCode) -> None:
        code[:] = np.where((code == 0) & cond, err.value, code)

    known = np.isin(op, [o.value for o in Opcode])
    flag(~known, ErrorCode.BAD_OPCODE)
    is_load, is_store = op == _OP_LOAD, op == _OP_STORE
    is_mem, is_gemm, is_finish = is_load | is_store, op == _OP_GEMM, op == _OP_FINISH
    is_sparse = op == _OP_SPARSE_GEMM
    buf = f["buffer"]
    word = dram_word_bytes(cfg, f)
    depth = np.select([buf == b.value for b in _BUFFERS], [cfg.depth(b) for b in _BUFFERS], 0)
    # token flags that have no neighbour: the units form a ring, only FINISH has none
    no_neighbour = is_finish & ((f["pop_prev"] | f["pop_next"] | f["push_prev"] | f["push_next"]) != 0)
    if program_addr is not None:  # a chain only goes forward in memory, so every chain ends
        no_neighbour = no_neighbour | (is_finish & (f["next_len"] != 0) & (f["next_addr"] <= program_addr))
    flag(no_neighbour, ErrorCode.BAD_ARGS)
    # LOAD fills A, B or IDX; STORE drains ACC (the ACC buffer's ports belong to the drain and the STORE unit)
    # a transposing LOAD: into A or B of a core with rows == cols
    transposing = f["tile_transpose"] != 0
    flag(is_mem & ((is_store & (buf != _BUF_ACC)) | (is_load & (buf == _BUF_ACC))
                   | (f["rows"] == 0) | (is_load & ((f["bf16"] | f["relu"]) != 0))
                   | (transposing & (is_store | ((buf != _BUF_A) & (buf != _BUF_B)) | (cfg.rows != cfg.cols)))),
         ErrorCode.BAD_ARGS)
    flag(is_mem & (f["sram_addr"] + buffer_words(cfg, f) > depth), ErrorCode.SRAM_RANGE)
    last_byte = f["dram_addr"] + (f["rows"] - 1) * f["dram_stride"] + word
    flag(is_mem & ((f["dram_addr"] % cfg.bus_bytes != 0) | (f["dram_stride"] % cfg.bus_bytes != 0)
                   | (last_byte > (1 << cfg.addr_bits))), ErrorCode.DRAM_RANGE)
    flag(is_gemm & (f["k"] == 0), ErrorCode.BAD_ARGS)
    steps, b_span = gemm_extents(f)
    flag(is_gemm & ((f["a_addr"] + steps > cfg.a_depth) | (f["b_addr"] + b_span > cfg.b_depth)
                    | (f["acc_addr"] + cfg.rows > cfg.acc_depth)), ErrorCode.SRAM_RANGE)
    slots, m, idx_words = sparse_shape(f)
    supported = np.isin(m, list(cfg.sparse_m))
    flag(is_sparse & ((f["groups"] == 0) | (f["n"] == 0) | (f["n"] > m) | ~supported | (f["b_addr"] % m != 0)
                      | (f["tap_h_stride"] % m != 0) | (f["tap_w_stride"] % m != 0)), ErrorCode.BAD_ARGS)
    flag(is_sparse & ((f["a_addr"] + slots > cfg.a_depth) | (f["b_addr"] + b_span > cfg.b_depth)
                      | (f["idx_addr"] + idx_words > cfg.idx_depth) | (f["acc_addr"] + cfg.rows > cfg.acc_depth)),
         ErrorCode.SRAM_RANGE)
    # SPARSIFY: a pattern of the config and a length; source and output aligned, inside the address space
    is_sp = op == _OP_SPARSIFY
    sp_m = np.left_shift(1, f["m_log2"])
    flag(is_sp & ((f["length"] == 0) | (f["n"] == 0) | (f["n"] > sp_m) | ~np.isin(sp_m, list(cfg.sparse_m))),
         ErrorCode.BAD_ARGS)
    src_end, dst_end = sparsify_extents(cfg, f)
    bus = cfg.bus_bytes
    flag(is_sp & ((f["src_addr"] % bus != 0) | (f["src_stride"] % bus != 0) | (f["dst_offset"] % bus != 0)
                  | (src_end > (1 << cfg.addr_bits)) | (dst_end > (1 << cfg.addr_bits))), ErrorCode.DRAM_RANGE)
    # WEIGHT_UPDATE: some words; w, v, g aligned to a whole burst and inside the address space
    is_up = op == _OP_WEIGHT_UPDATE
    flag(is_up & (f["words"] == 0), ErrorCode.BAD_ARGS)
    align = cfg.max_burst_beats * cfg.bus_bytes
    up_bytes = f["words"] * 4 * cfg.rows
    top = 1 << cfg.addr_bits
    flag(is_up & ((f["w_addr"] % align != 0) | (f["v_offset"] % align != 0) | (f["g_offset"] % align != 0)
                  | (f["w_addr"] + up_bytes > top) | (f["w_addr"] + f["v_offset"] + up_bytes > top)
                  | (f["w_addr"] + f["g_offset"] + up_bytes > top)), ErrorCode.DRAM_RANGE)
    # VECTOR: some beats, a function it has; x, y and z aligned to a burst (x_addr; the offsets count bursts)
    # and inside the address space
    is_vec = op == _OP_VECTOR
    flag(is_vec & ((f["beats"] == 0) | (f["func"] >= len(VectorFunc))), ErrorCode.BAD_ARGS)
    vec_bytes = f["beats"] * bus
    vec_ends = [f["x_addr"] + vec_bytes, f["x_addr"] + f["y_offset"] * align + vec_bytes,
                f["x_addr"] + f["z_offset"] * align + vec_bytes]
    flag(is_vec & ((f["x_addr"] % align != 0) | (vec_ends[1] < vec_bytes) | (vec_ends[2] < vec_bytes)
                   | (vec_ends[0] > top) | (vec_ends[1] > top) | (vec_ends[2] > top)), ErrorCode.DRAM_RANGE)
    bad = np.flatnonzero(code)
    if len(bad):
        return int(bad[0]), ErrorCode(int(code[bad[0]]))
    return -1, ErrorCode.NONE


def sparsify_extents(cfg: SATConfig, f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(one past the last source byte, one past the last output byte) of every instruction read as a SPARSIFY
    (vectorised; the formulas of :func:`nmsat.hw.timing.sparsify_shape`)."""
    e = cfg.sparsify_chunk
    m = np.left_shift(1, f["m_log2"])
    span = -(-f["length"] // e) * e
    slots = -(-f["length"] // m) * f["n"]
    src_end = np.where(f["transpose"] != 0, f["src_addr"] + (cfg.rows - 1) * f["src_stride"] + 4 * span,
                       f["src_addr"] + (span - 1) * f["src_stride"] + 4 * cfg.rows)
    dst_end = f["src_addr"] + f["dst_offset"] + (slots + -(-slots // IDX_SLOTS_PER_WORD)) * cfg.a_word_bytes
    return src_end, dst_end


def _stream_regions(cfg: SATConfig, f: dict[str, np.ndarray], i: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(byte addresses of the arrays read, of those written, beats of each) of stream instruction ``i``
    (WEIGHT_UPDATE: w, v, g read, w and v written; VECTOR: x, y read, z written)."""
    if int(f["opcode"][i]) == _OP_WEIGHT_UPDATE:
        w = int(f["w_addr"][i])
        v, g = w + int(f["v_offset"][i]), w + int(f["g_offset"][i])
        return (w, v, g), (w, v), timing.update_beats(cfg, int(f["words"][i]))
    x, burst = int(f["x_addr"][i]), cfg.max_burst_beats * cfg.bus_bytes
    return (x, x + int(f["y_offset"][i]) * burst), (x + int(f["z_offset"][i]) * burst,), int(f["beats"][i])


def _sparsify_shape(cfg: SATConfig, f: dict[str, np.ndarray], i: int) -> tuple[timing.SparsifyShape, int, int]:
    """(shape, n, m) of SPARSIFY ``i``."""
    n, m = int(f["n"][i]), 1 << int(f["m_log2"][i])
    shape = timing.sparsify_shape(cfg, int(f["src_addr"][i]), int(f["src_stride"][i]), bool(f["transpose"][i]),
                                  int(f["length"][i]), n, m, int(f["dst_offset"][i]))
    return shape, n, m


@dataclass
class _Schedule:
    """The per-instruction cycles of one run (None: never happened), and the instructions that started."""

    unit: list[int]
    beats: list[int]  # GEMM: MAC cycles; LOAD/STORE: data beats
    bursts: list[int]  # LOAD: number of bursts
    start: list[int | None]
    end: list[int | None]  # last busy cycle (pushes happen here)
    transfer: list[int | None]  # GEMM: the cycle its drain begins
    executed: list[int]  # program indices that started by the stop cycle, in program order
    sparsify: dict[int, timing.SparsifyTimes] = field(default_factory=dict)  # SPARSIFY: its cycles from its start


def _first_bad_beat(cfg: SATConfig, limit: int, dram_addr: int, rows: int, word: int, stride: int) -> tuple[int, int] | None:
    """(beat index, beats up to the end of its burst) of the first beat of a transfer that reaches past ``limit``
    bytes, or None.

    ``limit`` is a multiple of the bus width and addresses are bus aligned, so a beat is wholly in or out.
    """
    bus = cfg.bus_bytes
    beat = 0
    for addr, beats in timing.bursts(cfg, dram_addr, rows, word, stride):
        if addr + beats * bus > limit:
            return beat + max(0, (limit - addr) // bus), beat + beats
        beat += beats
    return None


class CoreModel:
    """Simulator twin of the core for one :class:`SATConfig`.  Buffers persist across runs, as in the core."""

    def __init__(self, cfg: SATConfig, *, compiled: bool = True):
        """``compiled=False`` times programs with the plain-Python worklist (``nmsat.sim.worklist``)."""
        self.cfg = cfg
        self.compiled = compiled
        self.a = np.zeros((cfg.a_depth, cfg.rows), dtype=np.uint16)  # bf16 bits
        self.b = np.zeros((cfg.b_depth, cfg.cols), dtype=np.uint16)
        self.acc = np.zeros((cfg.acc_depth, cfg.cols), dtype=np.float32)
        self.idx = np.zeros((cfg.idx_depth, cfg.rows), dtype=np.uint16)  # four 4-bit slot indices per lane
        #: host-written registers instructions read (fp32 bits), persistent like the buffers
        self.csr = {Csr.LR: 0, Csr.MOMENTUM: 0, Csr.WEIGHT_DECAY: 0}
        self._timing_cache: dict[tuple[bytes, bool], RunResult] = {}

    # ------------------------------------------------------------------ run

    def run(self, memory: np.ndarray, program_addr: int, program_len: int, *, serial: bool = False,
            numerics: bool = True, check_hazards: bool = True) -> RunResult:
        """Run the program of ``program_len`` instructions at ``program_addr`` against ``memory``.

        ``memory`` is a contiguous, writeable 1-D uint8 array standing for
        DRAM from address 0; its size is the memory's size (beats past it get
        DECERR).  STOREs write into it.  ``serial`` forces fully serial
        execution (the core's debug switch).  ``numerics=False`` computes
        timing only and leaves ``memory`` and the buffers alone.
        ``check_hazards`` fills ``RunResult.hazards``.

        When the run stops with an error, every instruction that had started
        (``RunResult.executed``) runs to its end and none other does, as in the core.
        """
        cfg = self.cfg
        if not isinstance(memory, np.ndarray) or memory.dtype != np.uint8 or memory.ndim != 1:
            raise TypeError("memory must be a 1-D numpy uint8 array")
        if not memory.flags.c_contiguous or not memory.flags.writeable:
            raise ValueError("memory must be a contiguous, writeable array (pass a copy, e.g. np.ascontiguousarray)")
        for name, value, bits in (("program_addr", program_addr, 64), ("program_len", program_len, 32)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 1 << bits:
                raise ValueError(f"{name} must be an int in 0..2^{bits}-1 (a {bits}-bit register), got {value!r}")
        program_addr, program_len = int(program_addr), int(program_len)
        results, base = [], 0
        while True:  # a FINISH with a next program goes on with it, in the same run
            result, chained = self._run_one(memory, program_addr, program_len, serial, numerics, check_hazards)
            if base:  # PCs in the whole chain; the registered reset before each chained program
                result = dataclasses.replace(result, cycles=result.cycles + timing.CHAIN_GAP,
                                             error_pc=result.error_pc + (0 if result.ok else base), hazards=[
                    dataclasses.replace(h, first_pc=h.first_pc + base, second_pc=h.second_pc + base)
                    for h in result.hazards])
            results.append(result)
            if chained is None:
                return _combine(results)
            base += program_len
            program_addr, program_len = chained

    def _run_one(self, memory: np.ndarray, program_addr: int, program_len: int, serial: bool, numerics: bool,
                 check_hazards: bool) -> tuple[RunResult, tuple[int, int] | None]:
        """One program of a run: its result, and the next program of the FINISH that ended it (None: none)."""
        cfg = self.cfg
        if not 1 <= program_len <= cfg.imem_depth:
            return RunResult(Status.ERROR, ErrorCode.PROGRAM_TOO_LONG, cycles=1), None
        nbytes = program_len * INSTRUCTION_BYTES
        if program_addr % cfg.bus_bytes or program_addr + nbytes > 1 << cfg.addr_bits:
            return RunResult(Status.ERROR, ErrorCode.DRAM_RANGE, cycles=1), None
        fetch_beats = -(-nbytes // cfg.bus_bytes)
        bad = _first_bad_beat(cfg, self._limit(memory), program_addr, 1, fetch_beats * cfg.bus_bytes,
                              fetch_beats * cfg.bus_bytes)
        if bad is not None:  # fetch beat j arrives in cycle Lr + j and carries DECERR
            return RunResult(Status.ERROR, ErrorCode.AXI_ERROR, cycles=cfg.mem_read_latency + bad[0] + 1), None
        fields = decode_program(memory[program_addr:program_addr + nbytes].tobytes())
        result, sched = self._schedule(fields, timing.dispatch_start(cfg, program_len), serial, self._limit(memory),
                                       program_addr)
        if check_hazards:
            result.hazards = find_hazards(cfg, fields, sched)
        if numerics:
            self._execute(memory, fields, sched.executed)
        chained = None
        if result.ok:  # the dispatcher stopped at its first FINISH
            at = int(np.flatnonzero(fields["opcode"] == _OP_FINISH)[0])
            if fields["next_len"][at]:
                chained = int(fields["next_addr"][at]), int(fields["next_len"][at])
        return result, chained

    def time_program(self, words: list[int], *, serial: bool = False) -> RunResult:
        """Timing only, from the instruction words (no memory image, so no bus errors): what ``run`` would report.

        A program's timing depends on nothing but its words and the config, so
        results are memoised by a digest of the words (a training step repeats
        many layer shapes).  The result returned is a copy.
        """
        cfg = self.cfg
        if not 1 <= len(words) <= cfg.imem_depth:
            return RunResult(Status.ERROR, ErrorCode.PROGRAM_TOO_LONG, cycles=1)
        blob = to_bytes(words)
        key = (hashlib.blake2b(blob, digest_size=16).digest(), serial)
        cached = self._timing_cache.get(key)
        if cached is None:
            cached, _ = self._schedule(decode_program(blob), timing.dispatch_start(cfg, len(words)), serial, None)
            if len(self._timing_cache) >= 256:
                self._timing_cache.pop(next(iter(self._timing_cache)))
            self._timing_cache[key] = cached
        return dataclasses.replace(cached, busy=dict(cached.busy), token_stall=dict(cached.token_stall), hazards=[])

    def run_sequence(self, memory: np.ndarray, runs, *, serial: bool = False, numerics: bool = True,
                     check_hazards: bool = True) -> RunResult:
        """Run programs ``[(program_addr, program_len), ...]`` one after another, as a host does when one
        GEMM is cut into several programs: each starts when the previous is DONE (host time not counted).

        One result: cycles, busy and stall cycles, instructions and MACs add up; hazards are listed per
        run (their PCs are within their run); the first run that ends in an error ends the sequence and
        gives its status, error and PC.
        """
        return _combine(self.run(memory, addr, length, serial=serial, numerics=numerics, check_hazards=check_hazards)
                        for addr, length in runs)

    def time_programs(self, programs, *, serial: bool = False) -> RunResult:
        """:meth:`time_program` of several programs run one after another (see :meth:`run_sequence`)."""
        return _combine(self.time_program(list(words), serial=serial) for words in programs)

    # ------------------------------------------------------------------ timing

    def _schedule(self, f: dict[str, np.ndarray], dispatch_start: int, serial: bool,
                  memory_bytes: int | None, program_addr: int | None = None) -> tuple[RunResult, _Schedule]:
        """Time a decoded program; ``memory_bytes`` (a multiple of the bus width) is the memory's end, None for none;
        ``program_addr``: where it is (None: a chain's direction is not checked)."""
        cfg = self.cfg
        n = len(f["opcode"])
        bad_pc, bad_code = check_program(cfg, f, program_addr)
        op = f["opcode"].tolist()
        finish_pcs = np.flatnonzero(f["opcode"][: bad_pc if bad_pc >= 0 else n] == _OP_FINISH).tolist()
        # the dispatcher stops at the first FINISH, bad instruction, or the end of the program
        stop_pc = finish_pcs[0] if finish_pcs else (bad_pc if bad_pc >= 0 else n)
        stop_code = ErrorCode.NONE if finish_pcs else (bad_code if bad_pc >= 0 else ErrorCode.NO_FINISH)

        opa = f["opcode"][:stop_pc]
        unit_a = _UNIT_TABLE[opa]
        unit = unit_a.tolist()
        # per-instruction duration parameters: (GEMM: MAC cycles | transfers: data beats, LOAD bursts)
        words_a = dram_word_bytes(cfg, f)[:stop_pc]
        words_of = words_a.tolist()
        # reduction steps of a GEMM: k words per tap, or the slots of a SPARSE_GEMM
        ks = gemm_extents(f)[0][:stop_pc]
        rows_a, addr_a, stride_a = (f[x][:stop_pc] for x in ("rows", "dram_addr", "dram_stride"))
        rows_l, addrs, strides = rows_a.tolist(), addr_a.tolist(), stride_a.tolist()
        is_transfer = (unit_a == LOAD) | (unit_a == STORE)
        beats_a = np.where(unit_a == COMPUTE, timing.gemm_mac_cycles(ks),
                           np.where(is_transfer, timing.transfer_beats(cfg, rows_a, words_a), 0))
        beats_a = beats_a + np.where((opa == _OP_LOAD) & (f["tile_transpose"][:stop_pc] != 0),
                                     timing.transpose_tail(cfg), 0)
        is_load = unit_a == LOAD
        bursts_a = np.zeros(stop_pc, dtype=np.int64)
        bursts_a[is_load] = timing.burst_counts(cfg, addr_a[is_load], rows_a[is_load], words_a[is_load],
                                                stride_a[is_load])
        vector_end = np.zeros(stop_pc, dtype=np.int64)
        sparsify_times: dict[int, timing.SparsifyTimes] = {}
        for i in np.flatnonzero(unit_a == SPARSIFY).tolist():
            if op[i] in _STREAM_OPS:
                reads, writes, beats = _stream_regions(cfg, f, i)
                last_read, first_write, end = timing.stream_cycles(cfg, beats, (len(reads), len(writes)))
                sparsify_times[i] = timing.SparsifyTimes(last_read, first_write, end - cfg.mem_write_latency, end)
            else:
                shape, n_i, m_i = _sparsify_shape(cfg, f, i)
                sparsify_times[i] = timing.sparsify_cycles(cfg, shape, n_i, m_i)
            vector_end[i] = sparsify_times[i].end
        beats_of, bursts_of = beats_a.tolist(), bursts_a.tolist()
        # token channels as indices into CHANNELS, per instruction: [pop from prev, pop from next], [push ...]
        flags = [f[x][:stop_pc] != 0 for x in ("pop_prev", "pop_next", "push_prev", "push_next")]
        pops_arr = np.stack([np.where(flags[k], table[unit_a], -1) for k, table in ((0, _POP_PREV_T), (1, _POP_NEXT_T))],
                            axis=1) if stop_pc else np.zeros((0, 2), np.int64)
        pushes_arr = np.stack([np.where(flags[k], table[unit_a], -1) for k, table in ((2, _PUSH_PREV_T),
                                                                                      (3, _PUSH_NEXT_T))],
                              axis=1) if stop_pc else np.zeros((0, 2), np.int64)
        qpos = np.zeros(stop_pc, dtype=np.int64)
        queues: list[list[int]] = []
        for u in UNITS:
            members = np.flatnonzero(unit_a == u)
            qpos[members] = np.arange(len(members))
            queues.append(members.tolist())
        d_a, s_a, e_a, transfer_a, waited_a, pushes_a, pops_a, next_d, last_end = run_worklist(
            cfg, unit_a, qpos, pops_arr, pushes_arr, beats_a, bursts_a, vector_end, serial, dispatch_start,
            compiled=self.compiled)
        none = lambda xs: [None if x < 0 else x for x in xs.tolist()]  # noqa: E731
        d, s, e, transfer = none(d_a), none(s_a), none(e_a), none(transfer_a)
        waited = waited_a.tolist()
        pushes = [x.tolist() for x in pushes_a]
        pops = [x.tolist() for x in pops_a]
        Lw = cfg.mem_write_latency

        # (cycle, code, rank, ErrorCode, pc): the earliest wins, then the lowest code, then the rank (the order
        # of the core's error sources: LOAD before STORE bus errors, token channels l2c, c2l, c2s, s2c)
        events: list[tuple[int, int, int, ErrorCode, int]] = []
        # token overflow: after the n-th push at cycle t the count is n - #pops started by t
        for ch in range(len(CHANNELS)):
            for nth, t in enumerate(pushes[ch], start=1):
                count = nth - bisect.bisect_right(pops[ch], t)
                if count > cfg.token_limit:
                    producer = int(np.flatnonzero((e_a == t) & ((pushes_arr[:, 0] == ch) | (pushes_arr[:, 1] == ch)))[0])
                    events.append((t, ErrorCode.TOKEN_OVERFLOW.value, ch, ErrorCode.TOKEN_OVERFLOW, producer))
                    break
        # bus errors: a beat past the memory's end is answered with DECERR (LOAD: in the cycle that beat
        # arrives; STORE: in the cycle of that burst's write response)
        if memory_bytes is not None:
            for i in range(stop_pc):
                if unit[i] == SPARSIFY and s[i] is not None:
                    cycle = (self._stream_bus_error(f, i, memory_bytes) if op[i] in _STREAM_OPS
                             else self._sparsify_bus_error(f, i, memory_bytes))
                    if cycle is not None:
                        events.append((s[i] + cycle, ErrorCode.AXI_ERROR.value, 2, ErrorCode.AXI_ERROR, i))
                    continue
                if unit[i] == COMPUTE or s[i] is None:
                    continue
                wb = words_of[i]
                if addrs[i] + (rows_l[i] - 1) * strides[i] + wb <= memory_bytes:
                    continue
                beat, through = _first_bad_beat(cfg, memory_bytes, addrs[i], rows_l[i], wb, strides[i])
                # LOAD: the cycle that beat arrives; STORE: the write response of its burst
                cycle = e[i] - beats_of[i] + 1 + beat if unit[i] == LOAD else s[i] + through + Lw
                events.append((cycle, ErrorCode.AXI_ERROR.value, 0 if unit[i] == LOAD else 1, ErrorCode.AXI_ERROR, i))
        all_started = all(x is not None for x in s)
        dispatched = [x for x in d if x is not None]
        if next_d == stop_pc and stop_code is not ErrorCode.NONE:
            # the dispatcher reached a bad instruction (or the end): raised when it becomes current
            stop_cycle = dispatch_start if stop_pc == 0 else d[stop_pc - 1] + 1
            events.append((stop_cycle, stop_code.value, 0, stop_code, stop_pc))
        elif next_d == stop_pc and all_started:
            stop_cycle = dispatch_start if stop_pc == 0 else d[stop_pc - 1] + 1
            events.append((max(stop_cycle, last_end + 1), 0, 0, ErrorCode.NONE, stop_pc))
        else:
            quiet = max([x + 1 for x in dispatched] + [x + 1 for x in e if x is not None] + [dispatch_start])
            stuck = next((i for i in range(stop_pc) if s[i] is None), stop_pc)
            events.append((quiet, ErrorCode.DEADLOCK.value, 0, ErrorCode.DEADLOCK, stuck))
        cycle, _, _, code, pc = min(events)
        status = Status.DONE if code is ErrorCode.NONE else Status.ERROR

        busy = [0] * len(UNITS)
        for u in UNITS:
            covered = -1
            for i in queues[u]:
                if s[i] is None or s[i] > cycle:
                    break
                lo, hi = max(s[i], covered + 1), min(e[i], cycle)
                if hi >= lo:
                    busy[u] += hi - lo + 1
                covered = max(covered, e[i])
        # an error stops every start after its cycle; what started runs to its end
        executed = [i for i in range(stop_pc) if s[i] is not None and s[i] <= cycle]
        stall = [0] * len(UNITS)
        for i in executed:
            stall[unit[i]] += waited[i]
        macs = sum(ks[i] for i in range(stop_pc) if unit[i] == COMPUTE) * cfg.rows * cfg.cols
        result = RunResult(status, code, cycles=cycle + 1, error_pc=pc if status is Status.ERROR else 0,
                           busy=dict(zip(UNIT_NAMES, busy)), token_stall=dict(zip(UNIT_NAMES, stall)),
                           instructions=sum(x <= cycle for x in dispatched), executed=len(executed),
                           gemm_macs=macs if status is Status.DONE else 0)
        return result, _Schedule(unit, beats_of, bursts_of, s, e, transfer, executed, sparsify_times)

    def _sparsify_bus_error(self, f: dict[str, np.ndarray], i: int, memory_bytes: int) -> int | None:
        """Cycle (from its start) SPARSIFY ``i`` raises AXI_ERROR against a memory of ``memory_bytes``: its first
        source beat past the end arrives, or the response of its first output beat past the end; else None."""
        src_end, dst_end = (int(x[i]) for x in sparsify_extents(self.cfg, f))
        if src_end <= memory_bytes and dst_end <= memory_bytes:
            return None
        shape, n, m = _sparsify_shape(self.cfg, f, i)
        bus = self.cfg.bus_bytes
        cycles = [cycle if kind == "r" else cycle + self.cfg.mem_write_latency
                  for kind, cycle, addr in timing.sparsify_events(self.cfg, shape, int(f["src_addr"][i]),
                                                                  int(f["src_stride"][i]), bool(f["transpose"][i]), n, m)
                  if addr + bus > memory_bytes]
        return min(cycles, default=None)

    def _stream_bus_error(self, f: dict[str, np.ndarray], i: int, memory_bytes: int) -> int | None:
        """Like :meth:`_sparsify_bus_error` for stream instruction ``i`` (WEIGHT_UPDATE, VECTOR; each write
        burst's response after its last beat)."""
        cfg = self.cfg
        reads, writes, beats = _stream_regions(cfg, f, i)
        if max(reads + writes) + beats * cfg.bus_bytes <= memory_bytes:
            return None
        bus, cycles, done = cfg.bus_bytes, [], 0
        for chunk in timing.stream_schedule(cfg, beats, (len(reads), len(writes))):
            nb = chunk.beats
            for base, first in zip(reads, chunk.burst_first):
                lo = base + done * bus
                if lo + nb * bus > memory_bytes:  # its first beat past the end arrives then
                    cycles.append(first + max(0, (memory_bytes - lo) // bus))
            for k, base in enumerate(writes):
                if base + (done + nb) * bus > memory_bytes:  # the burst's response, after its last beat
                    cycles.append(chunk.first_write + (k + 1) * nb - 1 + cfg.mem_write_latency)
            done += nb
        return min(cycles, default=None)

    def _update(self, memory: np.ndarray, f: dict[str, np.ndarray], i: int) -> None:
        """Data effect of WEIGHT_UPDATE ``i``: :func:`nmsat.sim.numerics.sgd_update` on its three arrays."""
        (w_addr, v_addr, g_addr), _, beats = _stream_regions(self.cfg, f, i)
        nbytes = beats * self.cfg.bus_bytes
        w, v, g = (np.ascontiguousarray(self._read_rows(memory, a, 1, nbytes, nbytes)).view(np.float32).ravel()
                   for a in (w_addr, v_addr, g_addr))
        lr, mu, wd = (np.uint32(self.csr[reg]).view(np.float32) for reg in (Csr.LR, Csr.MOMENTUM, Csr.WEIGHT_DECAY))
        w_new, v_new = numerics.sgd_update(w, v, g, lr, mu, wd)
        self._write_rows(memory, w_addr, w_new.view(np.uint8).reshape(1, -1), nbytes)
        self._write_rows(memory, v_addr, v_new.view(np.uint8).reshape(1, -1), nbytes)

    def _vector(self, memory: np.ndarray, f: dict[str, np.ndarray], i: int) -> None:
        """Data effect of VECTOR ``i``: :func:`nmsat.sim.numerics.vector_op` element by element."""
        (x_addr, y_addr), (z_addr,), beats = _stream_regions(self.cfg, f, i)
        nbytes = beats * self.cfg.bus_bytes
        dtype = np.uint16 if f["bf16"][i] else np.uint32
        x, y = (np.ascontiguousarray(self._read_rows(memory, a, 1, nbytes, nbytes)).view(dtype).ravel()
                for a in (x_addr, y_addr))
        z = numerics.vector_op(VectorFunc(int(f["func"][i])), x, y)
        self._write_rows(memory, z_addr, z.view(np.uint8).reshape(1, -1), nbytes)

    def write_csr(self, register: Csr, value: int) -> None:
        """A host write of a read-write register that instructions read (LR, MOMENTUM, WEIGHT_DECAY); they
        persist across runs, as on the device."""
        if register not in self.csr:
            raise ValueError(f"write_csr: {register!r} is not a register instructions read; "
                             f"program address and length are run()'s arguments")
        if not 0 <= int(value) < 1 << 32:
            raise ValueError(f"write_csr: {value!r} is not a 32-bit value")
        self.csr[register] = int(value)

    def _sparsify(self, memory: np.ndarray, f: dict[str, np.ndarray], i: int) -> None:
        """Data effect of SPARSIFY ``i``: :func:`nmsat.hw.sparsity.compress` of the lanes' source rows, written as
        slot words then IDX words (source bytes past the memory read as zero, output bytes past it are dropped)."""
        cfg = self.cfg
        R = cfg.rows
        shape, n, m = _sparsify_shape(cfg, f, i)
        src, stride, length = int(f["src_addr"][i]), int(f["src_stride"][i]), int(f["length"][i])
        span = shape.chunks * cfg.sparsify_chunk
        if f["transpose"][i]:
            raw = self._read_rows(memory, src, R, 4 * span, stride)
            values = np.ascontiguousarray(raw).view(np.float32).reshape(R, span)
        else:
            raw = self._read_rows(memory, src, span, 4 * R, stride)
            values = np.ascontiguousarray(raw).view(np.float32).reshape(span, R).T
        bits, idx = compress(values[:, :length], n, m)  # [R, slots]
        out = np.zeros((shape.slots + shape.idx_words, R), dtype=np.uint16)
        out[:shape.slots] = bits.T
        padded = np.zeros((R, shape.idx_words * IDX_SLOTS_PER_WORD), dtype=np.uint16)
        padded[:, :shape.slots] = idx
        nibbles = padded.reshape(R, shape.idx_words, IDX_SLOTS_PER_WORD) << \
            (4 * np.arange(IDX_SLOTS_PER_WORD, dtype=np.uint16))
        out[shape.slots:] = nibbles.sum(axis=-1, dtype=np.uint16).T
        self._write_rows(memory, shape.dst_addr, out.view(np.uint8).reshape(1, -1), out.nbytes)

    # ------------------------------------------------------------------ data

    def _limit(self, memory: np.ndarray) -> int:
        """Bytes of ``memory`` that whole bus beats cover: a beat that reaches past the end gets DECERR."""
        return memory.size // self.cfg.bus_bytes * self.cfg.bus_bytes

    def _read_rows(self, memory: np.ndarray, addr: int, rows: int, word: int, stride: int) -> np.ndarray:
        """``rows`` words of ``word`` bytes, ``stride`` apart; bytes past the memory read as zero (DECERR beats)."""
        limit = self._limit(memory)
        if addr + (rows - 1) * stride + word <= limit:
            return np.lib.stride_tricks.as_strided(memory[addr:], shape=(rows, word), strides=(stride, 1))
        out = np.zeros((rows, word), dtype=np.uint8)
        for r in range(rows):
            lo = addr + r * stride
            n = max(0, min(word, limit - lo))
            out[r, :n] = memory[lo:lo + n]
        return out

    def _write_rows(self, memory: np.ndarray, addr: int, data: np.ndarray, stride: int) -> None:
        """Write ``data[rows, word]`` at ``addr`` with ``stride``; bytes past the memory are dropped (DECERR beats)."""
        rows, word = data.shape
        limit = self._limit(memory)
        if addr + (rows - 1) * stride + word <= limit:
            np.lib.stride_tricks.as_strided(memory[addr:], shape=(rows, word), strides=(stride, 1))[:] = data
            return
        for r in range(rows):
            lo = addr + r * stride
            n = max(0, min(word, limit - lo))
            memory[lo:lo + n] = data[r, :n]

    def _gathered_rows(self, taps: np.ndarray, groups: int, n: int, m: int, i0: int) -> np.ndarray:
        """B word offsets from b_addr ``[slots, rows]`` a SPARSE_GEMM reads: slot j (tap t, group g of it) of
        row r takes word ``taps[t] + g·m + index``, the index being the low log2(m) bits of the slot's nibble."""
        per_tap = groups * n
        j = np.arange(len(taps) * per_tap)
        words = self.idx[i0 + j // IDX_SLOTS_PER_WORD].astype(np.int64)  # [slots, rows]
        nibble = (words >> (4 * (j % IDX_SLOTS_PER_WORD))[:, None]) & 0xF
        return (taps[j // per_tap] + j % per_tap // n * m)[:, None] + (nibble & (m - 1))

    #: flush pending GEMMs once their operand snapshots hold this many bytes
    BATCH_BYTES = 256 << 20

    def _execute(self, memory: np.ndarray, f: dict[str, np.ndarray], executed: list[int]) -> None:
        """Data effects of the ``executed`` instructions, in program order.

        GEMMs are batched: each takes a snapshot of its A and B words when it
        is reached (later LOADs cannot change what it reads) and its MACs are
        computed later, all GEMMs of equal k in one vectorised pass.  Only the
        final accumulator update is order-dependent, and it is applied in
        program order.  A STORE that reads rows a pending GEMM writes forces the
        batch out first.
        """
        cfg = self.cfg
        R = cfg.rows
        pending: list[tuple] = []  # ((sparse, steps[, B words]), a, b or (B words, rows taken), acc row, accumulate)
        pending_rows = np.zeros(cfg.acc_depth, dtype=bool)
        pending_bytes = 0

        def flush() -> None:
            nonlocal pending_bytes
            by_k: dict[int, list[int]] = {}
            for idx, item in enumerate(pending):
                by_k.setdefault(item[0], []).append(idx)
            outs: list[np.ndarray | None] = [None] * len(pending)
            for (sparse, *_), idxs in by_k.items():
                a_stack = np.stack([pending[i][1] for i in idxs])
                if sparse:
                    result = numerics.mac_sequence_gathered(a_stack, np.stack([pending[i][2][0] for i in idxs]),
                                                            np.stack([pending[i][2][1] for i in idxs]))
                else:
                    result = numerics.mac_sequence(a_stack, np.stack([pending[i][2] for i in idxs]))
                for j, i in enumerate(idxs):
                    outs[i] = result[j]
            for (_, _, _, c0, accumulate), out in zip(pending, outs):
                self.acc[c0:c0 + R] = numerics.add_f32(self.acc[c0:c0 + R], out) if accumulate else out
            pending.clear()
            pending_rows[:] = False
            pending_bytes = 0

        for i in executed:
            op = int(f["opcode"][i])
            if op == _OP_GEMM:
                k, a0, b0, c0 = (int(f[x][i]) for x in ("k", "a_addr", "b_addr", "acc_addr"))
                taps = tap_offsets(f, i)
                a_snap = self.a[a0:a0 + len(taps) * k].copy()
                if len(taps) == 1:
                    b_snap = self.b[b0:b0 + k].copy()
                else:  # the kernel walk: each tap's k words
                    b_snap = self.b[(b0 + taps[:, None] + np.arange(k)).reshape(-1)]
                pending.append(((False, len(a_snap)), a_snap, b_snap, c0, bool(f["accumulate"][i])))
            elif op == _OP_SPARSE_GEMM:
                a0, b0, c0, i0 = (int(f[x][i]) for x in ("a_addr", "b_addr", "acc_addr", "idx_addr"))
                n, m = int(f["n"][i]), 1 << int(f["m_log2"][i])
                taps = tap_offsets(f, i)
                groups = int(f["groups"][i])
                slots = len(taps) * groups * n
                a_snap = self.a[a0:a0 + slots].copy()
                span = int(taps[-1]) + groups * m
                b_snap = self.b[b0:b0 + span].copy()  # the B words it reads, and which word each row takes
                rows_taken = self._gathered_rows(taps, groups, n, m, i0)
                pending.append(((True, slots, span), a_snap, (b_snap, rows_taken), c0, bool(f["accumulate"][i])))
            if op in (_OP_GEMM, _OP_SPARSE_GEMM):
                pending_rows[c0:c0 + R] = True
                pending_bytes += a_snap.nbytes + (b_snap.nbytes if op == _OP_GEMM else
                                                  b_snap.nbytes + rows_taken.nbytes)
                if pending_bytes > self.BATCH_BYTES:
                    flush()
                continue
            if op == _OP_SPARSIFY:  # memory to memory: the pending GEMMs do not touch it
                self._sparsify(memory, f, i)
                continue
            if op == _OP_WEIGHT_UPDATE:
                self._update(memory, f, i)
                continue
            if op == _OP_VECTOR:
                self._vector(memory, f, i)
                continue
            buf, sram, rows, addr, stride = (int(f[x][i]) for x in ("buffer", "sram_addr", "rows", "dram_addr", "dram_stride"))
            target = {_BUF_A: self.a, _BUF_B: self.b, _BUF_ACC: self.acc,
                      _BUF_IDX: self.idx}[buf]
            word = target.shape[1] * target.itemsize
            if op == _OP_LOAD and f["tile_transpose"][i]:  # blocks of rows words, each written transposed
                R = cfg.rows
                data = self._read_rows(memory, addr, rows, R * cfg.b_word_bytes, stride)
                blocks = np.ascontiguousarray(data).view(np.uint16).reshape(rows, R, cfg.cols)
                target[sram:sram + rows * cfg.cols] = blocks.transpose(0, 2, 1).reshape(rows * cfg.cols, R)
            elif op == _OP_LOAD:
                data = self._read_rows(memory, addr, rows, word, stride)
                target[sram:sram + rows] = np.ascontiguousarray(data).view(target.dtype).reshape(rows, -1)
            else:  # STORE
                if pending_rows[sram:sram + rows].any():
                    flush()
                data = target[sram:sram + rows]
                if f["relu"][i]:  # ReLU: a set sign bit stores +0 (the accumulators' NaNs are canonical, positive)
                    data = np.where(data.view(np.uint32) >> np.uint32(31) != 0, np.float32(0.0), data)
                if f["bf16"][i]:  # each accumulator rounded to bf16
                    data = numerics.f32_to_bf16_bits(data)
                self._write_rows(memory, addr, np.ascontiguousarray(data).view(np.uint8).reshape(rows, -1), stride)
        flush()


def _combine(results) -> RunResult:
    """Results of runs one after another as one: sums, and the status of the first run that failed."""
    total = None
    for r in results:
        if total is None:
            total = dataclasses.replace(r, busy=dict(r.busy), token_stall=dict(r.token_stall), hazards=list(r.hazards))
        else:
            total.cycles += r.cycles
            for key in UNIT_NAMES:
                total.busy[key] = total.busy.get(key, 0) + r.busy.get(key, 0)
                total.token_stall[key] = total.token_stall.get(key, 0) + r.token_stall.get(key, 0)
            total.instructions += r.instructions
            total.executed += r.executed
            total.gemm_macs += r.gemm_macs
            total.hazards += r.hazards
            total.status, total.error, total.error_pc = r.status, r.error, r.error_pc
        if not r.ok:
            total.gemm_macs = 0
            break
    if total is None:
        raise ValueError("no programs to run")
    return total


# ---------------------------------------------------------------------- hazards


def find_hazards(cfg: SATConfig, f: dict[str, np.ndarray], sched: _Schedule) -> list[Hazard]:
    """Pairs of executed instructions of different units whose accesses the timing leaves unordered.

    Access windows (cycles, from the timing rules): a LOAD writes its buffer
    words while its data beats arrive and reads memory while it issues its
    addresses; a GEMM reads A and B words in cycles ``s … s+k−1`` and reads
    and writes its accumulator rows from the transfer to its drain's end; a
    STORE reads accumulator rows while it sends beats and writes memory
    until its last write response.  Two accesses conflict when they touch
    the same buffer word (memory: the same bytes of the transfers' bounding
    ranges) and one writes; the one later in program order must begin after
    the earlier one has ended.  Units are in order, so pairs within a unit
    never conflict.  One pass in program order keeps, per buffer word, the
    latest end of each kind of access so far (one vectorised max per access).
    """
    s, e, t, beats, bursts = sched.start, sched.end, sched.transfer, sched.beats, sched.bursts
    op, buf = f["opcode"], f["buffer"]
    R = cfg.rows
    A, B, IDX = _BUF_A, _BUF_B, _BUF_IDX
    depth = {A: cfg.a_depth, B: cfg.b_depth, IDX: cfg.idx_depth, "ACC": cfg.acc_depth}
    # latest end so far, per word: LOAD writes and GEMM reads of A/B; GEMM writes and STORE reads of ACC
    ends = {(key, kind): np.full(n, -1, np.int64) for key, n in depth.items() for kind in ("w", "r")}
    windows: dict[tuple, list[tuple[int, int, int, int]]] = {key: [] for key in ends}  # (lo, hi, end, pc)
    names = {A: "A", B: "B", IDX: "IDX", "ACC": "ACC"}
    hazards: list[Hazard] = []
    loads, stores = [], []  # memory windows: (lo, hi, first cycle, last cycle, pc)
    sparsify: list[tuple] = []  # (lo, hi, first cycle, last cycle, pc, "r" or "w")
    word = dram_word_bytes(cfg, f).tolist()
    ops, bufs = op.tolist(), buf.tolist()
    sram, rows_of, addr_of, stride_of = (f[x].tolist() for x in ("sram_addr", "rows", "dram_addr", "dram_stride"))
    words_of = buffer_words(cfg, f).tolist()
    a_of, b_of, acc_of = (f[x].tolist() for x in ("a_addr", "b_addr", "acc_addr"))
    steps_of, b_span_of = (x.tolist() for x in gemm_extents(f))
    idx_words_of = sparse_shape(f)[2].tolist()
    idx_of = f["idx_addr"].tolist()

    def access(key, kind: str, lo: int, hi: int, begin: int, until: int, pc: int) -> None:
        """Check an access of words lo..hi-1 in cycles begin..until against the other unit's, then record it."""
        other = (key, "r" if kind == "w" else "w")
        if ends[other][lo:hi].max(initial=-1) >= begin:  # rare: find the instruction it meets
            first = next(p for a, b, end, p in reversed(windows[other]) if a < hi and b > lo and end >= begin)
            hazards.append(Hazard(names[key], "write after read" if kind == "w" else "read after write", first, pc))
        view = ends[(key, kind)][lo:hi]
        np.maximum(view, until, out=view)
        windows[(key, kind)].append((lo, hi, until, pc))

    for i in sched.executed:
        o = ops[i]
        if o == _OP_LOAD:
            lo, rows = sram[i], rows_of[i]
            access(bufs[i], "w", lo, lo + words_of[i], e[i] - beats[i] + 1, e[i], i)
            loads.append((addr_of[i], addr_of[i] + (rows - 1) * stride_of[i] + word[i], s[i], s[i] + bursts[i] - 1, i))
        elif o == _OP_GEMM or o == _OP_SPARSE_GEMM:  # B: the bounding range of the kernel walk's words
            j = steps_of[i]
            access(A, "r", a_of[i], a_of[i] + j, s[i], s[i] + j - 1, i)
            access(B, "r", b_of[i], b_of[i] + b_span_of[i], s[i], s[i] + j - 1, i)
            if o == _OP_SPARSE_GEMM:
                access(IDX, "r", idx_of[i], idx_of[i] + idx_words_of[i], s[i], s[i] + j - 1, i)
            access("ACC", "w", acc_of[i], acc_of[i] + R, t[i] + 1, e[i], i)
        elif o in _STREAM_OPS:
            times = sched.sparsify[i]
            reads, writes, stream_beats = _stream_regions(cfg, f, i)
            nbytes = stream_beats * cfg.bus_bytes
            for lo in reads:
                sparsify.append((lo, lo + nbytes, s[i], s[i] + times.last_read, i, "r"))
            for lo in writes:
                sparsify.append((lo, lo + nbytes, s[i] + times.first_write, e[i], i, "w"))
            # overlapping arrays: later chunks read what earlier ones wrote (WEIGHT_UPDATE: any two of w, v, g;
            # VECTOR: z over x or y but exactly in place)
            overlaps = lambda a, b: a < b + nbytes and b < a + nbytes  # noqa: E731
            if o == _OP_WEIGHT_UPDATE:
                bad = any(overlaps(a, b) for j, a in enumerate(reads) for b in reads[j + 1:])
            else:
                bad = any(overlaps(writes[0], a) and writes[0] != a for a in reads)
            if bad:
                hazards.append(Hazard("DRAM", "read after write", i, i))
        elif o == _OP_SPARSIFY:
            times = sched.sparsify[i]
            src_end, dst_end = (int(x[i]) for x in sparsify_extents(cfg, f))
            dst = int(f["src_addr"][i]) + int(f["dst_offset"][i])
            sparsify.append((int(f["src_addr"][i]), src_end, s[i], s[i] + times.last_read, i, "r"))
            sparsify.append((dst, dst_end, s[i] + times.first_write, e[i], i, "w"))
            if dst < src_end and dst_end > int(f["src_addr"][i]):  # its output over its own source: chunk order
                hazards.append(Hazard("DRAM", "write after read", i, i))
        else:  # STORE
            lo, rows = sram[i], rows_of[i]
            access("ACC", "r", lo, lo + rows, s[i], s[i] + beats[i] - 1, i)
            stores.append((addr_of[i], addr_of[i] + (rows - 1) * stride_of[i] + word[i], s[i] + 1, e[i], i))
    hazards += _memory_hazards(loads, stores)
    hazards += _sparsify_hazards(sparsify, loads, stores)
    return hazards


def _sparsify_hazards(sparsify: list[tuple], loads: list[tuple], stores: list[tuple]) -> list[Hazard]:
    """SPARSIFY reads and writes of memory against LOADs (reads) and STOREs (writes), by bounding ranges: the
    access later in program order must begin after the earlier one has ended (one SPARSIFY runs at a time)."""
    out = set()
    others = [(np.array(x, dtype=np.int64).reshape(-1, 5), kind) for x, kind in ((loads, "r"), (stores, "w"))]
    for lo, hi, first, last, pc, kind in sparsify:
        for arr, other_kind in others:
            if kind == "r" and other_kind == "r" or not len(arr):
                continue
            overlap = (arr[:, 0] < hi) & (arr[:, 1] > lo)
            earlier = overlap & (arr[:, 4] < pc) & (arr[:, 3] >= first)
            later = overlap & (arr[:, 4] > pc) & (arr[:, 2] <= last)
            for rows, first_kind, second_kind in ((earlier, other_kind, kind), (later, kind, other_kind)):
                for j in np.flatnonzero(rows):
                    a, b = sorted((int(arr[j, 4]), pc))
                    name = {("w", "r"): "read after write", ("r", "w"): "write after read"}.get(
                        (first_kind, second_kind), "write after write")
                    out.add(Hazard("DRAM", name, a, b))
    return sorted(out, key=lambda h: (h.second_pc, h.first_pc))


def _memory_hazards(loads: list[tuple], stores: list[tuple]) -> list[Hazard]:
    """LOADs against STOREs over the bounding byte ranges of their transfers (vectorised over pairs)."""
    if not loads or not stores:
        return []
    ld, st = np.array(loads, dtype=np.int64), np.array(stores, dtype=np.int64)
    # fast exit: no LOAD range meets any STORE range
    order = np.argsort(st[:, 0])
    st_lo, st_hi = st[order, 0], np.maximum.accumulate(st[order, 1])
    idx = np.searchsorted(st_lo, ld[:, 1], side="left") - 1  # last STORE starting before the LOAD's end
    meets = (idx >= 0) & (st_hi[np.maximum(idx, 0)] > ld[:, 0])
    if not meets.any():
        return []
    out = []
    for lo, hi, l0, l1, lpc in ld[meets]:
        overlap = (st[:, 0] < hi) & (st[:, 1] > lo)
        earlier = overlap & (st[:, 4] < lpc) & (st[:, 3] >= l0)  # STORE before the LOAD still writing
        later = overlap & (st[:, 4] > lpc) & (l1 >= st[:, 2])  # STORE after the LOAD writing before it read
        for rows, kind in ((earlier, "read after write"), (later, "write after read")):
            for j in np.flatnonzero(rows):
                first, second = sorted((int(st[j, 4]), int(lpc)))
                out.append(Hazard("DRAM", kind, first, second))
    return sorted(set(out), key=lambda h: (h.second_pc, h.first_pc))
