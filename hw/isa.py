"""The instruction set: one definition that the compiler encodes and the core and simulator decode.

Every instruction is 128 bits: an opcode, four dependency-token flags (VTA
style: pop/push to the previous/next unit of the ring load → compute →
store → vector (sparsifier and weight update) → load) and an argument union.  The layouts are Amaranth ``data`` layouts, so
the gateware decodes the very structure the compiler encodes; Python code
encodes with :func:`encode` and decodes with :func:`decode` /
:func:`decode_program` (vectorised, from the same layouts' field offsets).

Also here: the error codes of the status register and the control/status
register map, since the driver, the simulator and the gateware share them.
Not here: timing (``nmsat.hw.timing``) or anything that depends on a config.
"""

# No `from __future__ import annotations`: amaranth.lib.data reads the annotations as shapes.

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Shape, signed
from amaranth.lib import data, enum

__all__ = [
    "INSTRUCTION_BITS", "INSTRUCTION_BYTES", "Opcode", "Buffer", "Unit", "ErrorCode", "Csr", "Status",
    "Deps", "MemArgs", "GemmArgs", "SparseGemmArgs", "SparsifyArgs", "WeightUpdateArgs", "VectorArgs", "VectorFunc", "SIGNED_FIELDS", "Instruction", "encode", "with_flags", "decode", "decode_program", "unit_of",
]

INSTRUCTION_BITS = 128
INSTRUCTION_BYTES = INSTRUCTION_BITS // 8


class Opcode(enum.Enum, shape=4):
    """Opcode 0 is illegal on purpose: a program that runs into zeroed memory stops with BAD_OPCODE."""

    LOAD = 1  # DRAM -> A, B or ACC buffer, 2-D strided
    STORE = 2  # ACC buffer -> DRAM, 2-D strided
    GEMM = 3  # acc[acc_addr + r] (+)= sum_k A[a_addr + k][r] * B[b_addr + k][:]
    FINISH = 4  # wait for every unit to drain, then raise done (or, with next_len, fetch and run the next program)
    SPARSE_GEMM = 5  # acc[acc_addr + r] (+)= sum_j A[a_addr + j][r] * B[b_addr + (j//n)*m + idx_j[r]][:]
    SPARSIFY = 6  # fp32 weights in memory -> N:M compressed slot values + IDX words in memory (the sparsifier)
    WEIGHT_UPDATE = 7  # SGD with momentum and weight decay on fp32 master weights in memory
    VECTOR = 8  # z = func(x, y) element by element on arrays in memory (the vector unit)
    # 9..15 reserved


class VectorFunc(enum.Enum, shape=4):
    """VECTOR's element function (``nmsat.sim.numerics.vector_op`` is the rule); 5..15 are BAD_ARGS."""

    ADD = 0  # x + y (residual adds, gradients meeting at a fork)
    MUL = 1  # x · y
    RELU_GRAD = 2  # +0 where y <= 0, else x (ReLU's backward: x the output gradient, y the forward output)
    MAX = 3  # the larger of x and y (−0 below +0); NaN if either is
    SUB = 4  # x − y (x plus y with its sign flipped, as the weight update subtracts)


class Buffer(enum.Enum, shape=2):
    A = 0  # words of `rows` operands (the row-side operand of a GEMM tile)
    B = 1  # words of `cols` operands (the column-side operand)
    ACC = 2  # words of `cols` fp32 accumulators
    IDX = 3  # N:M index words: `rows` lanes of 16 bits, four 4-bit slot indices per lane


class Unit(enum.Enum, shape=2):
    LOAD = 0
    COMPUTE = 1
    STORE = 2
    SPARSIFY = 3


class ErrorCode(enum.Enum, shape=4):
    """Value of the ERROR register; any value but NONE stops the core with status ERROR."""

    NONE = 0
    BAD_OPCODE = 1  # illegal or reserved opcode
    SRAM_RANGE = 2  # buffer address + length past the buffer's depth, or LOAD/STORE to a wrong buffer
    DRAM_RANGE = 3  # DRAM address out of the address space or not aligned to the bus
    BAD_ARGS = 4  # zero length, a token flag on FINISH, STORE not from ACC, LOAD into ACC or with bf16/relu, an N:M
    #                pattern the core lacks
    TOKEN_OVERFLOW = 5  # a push past the token limit of a channel
    DEADLOCK = 6  # every unit waits for a token no one can push
    AXI_ERROR = 7  # SLVERR/DECERR on the memory port
    PROGRAM_TOO_LONG = 8  # program length is 0 or larger than the instruction memory
    NO_FINISH = 9  # the dispatcher reached the end of the program without a FINISH


class Status(enum.Enum, shape=2):
    IDLE = 0
    BUSY = 1
    DONE = 2
    ERROR = 3


class Csr(enum.IntEnum):
    """AXI4-Lite register map (byte offsets of 32-bit registers)."""

    ID = 0x00  # RO: SATConfig.hash32
    CONTROL = 0x04  # WO: bit 0 start, bit 1 serial (force fully serial execution)
    STATUS = 0x08  # RO: Status
    ERROR = 0x0C  # RO: ErrorCode
    PROGRAM_ADDR_LO = 0x10  # RW: byte address of the program
    PROGRAM_ADDR_HI = 0x14
    PROGRAM_LEN = 0x18  # RW: number of instructions
    CYCLES = 0x1C  # RO: cycles from start to done/error (low 32 bits)
    CYCLES_HI = 0x20
    ERROR_PC = 0x24  # RO: index of the instruction that raised the error (in a chained run: counting the programs before)
    LR = 0x28  # RW: WEIGHT_UPDATE's learning rate (fp32 bits)
    MOMENTUM = 0x2C  # RW: its momentum (fp32 bits)
    WEIGHT_DECAY = 0x30  # RW: its weight decay (fp32 bits)


class Deps(data.Struct):
    pop_prev: 1
    pop_next: 1
    push_prev: 1
    push_next: 1


class MemArgs(data.Struct):
    buffer: Buffer
    sram_addr: 16
    rows: 16  # number of buffer words moved
    dram_addr: 40  # byte address of word 0; aligned to the bus
    dram_stride: 32  # bytes from one word to the next in DRAM
    bf16: 1  # STORE: each fp32 accumulator rounded to bf16 (nearest even), words of cols·2 bytes; LOAD: 0
    relu: 1  # STORE: each accumulator with its sign bit set stored as +0 (ReLU; NaNs are canonical, positive); LOAD: 0
    tile_transpose: 1  # LOAD into A or B (rows == cols cores): ``rows`` blocks, block b the rows·b_word_bytes bytes at
    #               dram_addr + b·dram_stride (R words of cols lanes), written transposed as cols words of R lanes
    #               from sram_addr + b·cols; STORE: 0


class GemmArgs(data.Struct):
    """GEMM: ``k`` words of A and B per kernel tap; with a kernel walk (``taps_h · taps_w`` taps, on-chip
    im2col) reduction step ``j`` reads A word ``a_addr + j`` and B word ``b_addr + th·tap_h_stride +
    tw·tap_w_stride + i`` for tap ``t = j // k = th·taps_w + tw`` and ``i = j % k``: the B buffer holds an
    activation window once and the walk reads each tap's channels from it.  ``taps_h``/``taps_w`` 0 or 1
    is one tap (a plain GEMM)."""

    a_addr: 16
    b_addr: 16
    acc_addr: 16
    k: 16  # reduction length per tap: words of A and B consumed
    accumulate: 1  # 1: add into the accumulator buffer; 0: overwrite it
    _pad0: 24  # SPARSE_GEMM's idx_addr, n, m_log2
    taps_h: 3  # kernel rows walked (0 and 1: one)
    taps_w: 3  # kernel columns walked (0 and 1: one)
    tap_h_stride: 14  # B words from one kernel row to the next
    tap_w_stride: 11  # B words from one kernel column to the next


class SparseGemmArgs(data.Struct):
    """SPARSE_GEMM: A compressed N:M along the reduction (``groups · n`` value words from ``a_addr``, their slot
    indices in IDX words from ``idx_addr``), B dense (``groups · m`` words from ``b_addr``, a multiple of m).
    The first five fields and the kernel walk share GemmArgs' offsets (``groups`` stands where ``k`` does)."""

    a_addr: 16
    b_addr: 16
    acc_addr: 16
    groups: 16  # groups of m along the reduction
    accumulate: 1
    idx_addr: 16  # IDX word of slot 0 (slots 4w .. 4w+3 in word w, nibble j % 4 of each lane)
    n: 5  # kept per group, 1..m
    m_log2: 3  # m = 2 ** m_log2, one of the config's sparse_m
    taps_h: 3  # the kernel walk of GemmArgs: ``groups`` groups per tap, slots (and their indices) in tap order;
    taps_w: 3  # tap t's group g is B words b_addr + th·tap_h_stride + tw·tap_w_stride + g·m ...; the strides
    tap_h_stride: 14  # are multiples of m
    tap_w_stride: 11


class SparsifyArgs(data.Struct):
    """SPARSIFY: read fp32 weights ``[rows lanes, length]`` from memory, keep n of every m along ``length`` per
    lane, write ``G = ceil(length/m)`` groups of n slot words (bf16) then ``ceil(G·n/4)`` IDX words at
    ``src_addr + dst_offset``.  ``transpose`` 1: lane r reads row r (``src_addr + r·src_stride``, elements
    contiguous: the FF form of ``W[Cout, K]``); 0: element l is the row ``src_addr + l·src_stride``, lanes
    contiguous (the BP form).  ``n`` and ``m_log2`` share SPARSE_GEMM's offsets."""

    src_addr: 40  # byte address of lane 0, element 0 (bus aligned)
    transpose: 1
    _pad0: 7
    length: 16  # elements along the reduction (1..65535); elements past it are pads
    src_stride: 17  # bytes between source rows (bus aligned)
    n: 5
    m_log2: 3
    dst_offset: 31  # the output's byte address minus src_addr (bus aligned)


class WeightUpdateArgs(data.Struct):
    """WEIGHT_UPDATE: for ``words · rows`` fp32 elements, master weights w at ``w_addr``, momenta v at
    ``w_addr + v_offset``, gradients g at ``w_addr + g_offset`` (all contiguous): ``v ← μ·v + (g + λ·w)``,
    ``w ← w − η·v`` with η, μ, λ from the LR, MOMENTUM and WEIGHT_DECAY registers (the op order of
    ``nmsat.sim.numerics.sgd_update``)."""

    w_addr: 40  # aligned to a burst of max_burst_beats beats, as are v and g
    words: 18  # update words of rows fp32
    v_offset: 31
    g_offset: 31


class VectorArgs(data.Struct):
    """VECTOR: ``beats`` bus beats of elements (fp32, or bf16 if ``bf16``) from x at ``x_addr``, y and z at
    ``x_addr`` plus ``y_offset`` / ``z_offset`` bursts (signed; a burst is ``max_burst_beats · bus_bytes`` bytes,
    and all three arrays are aligned to one): ``z[i] = func(x[i], y[i])``.  z may be x or y (in place); it
    must not overlap them otherwise.  ``bf16`` shares MemArgs' offset."""

    x_addr: 40
    beats: 18  # 1 .. 2^18 - 1
    func: VectorFunc
    y_offset: signed(22)  # in bursts
    z_offset: signed(22)  # in bursts
    bf16: 1  # elements are bf16 (computed in fp32, rounded to nearest even), else fp32


class FinishArgs(data.Struct):
    """FINISH: with ``next_len`` 0 the run is DONE; otherwise the core goes on with the program of ``next_len``
    instructions at ``next_addr`` (bus aligned, and past the program's own address, so that every chain ends:
    BAD_ARGS otherwise), fetched and started as START would (the units reset, no tokens, the buffers kept), in
    the same run: CYCLES goes on counting and ERROR_PC counts the instructions of the programs before."""

    next_addr: 40
    next_len: 21


class Args(data.Union):
    mem: MemArgs
    gemm: GemmArgs
    sparse: SparseGemmArgs
    sparsify: SparsifyArgs
    update: WeightUpdateArgs
    vector: VectorArgs
    finish: FinishArgs


class Instruction(data.Struct):
    opcode: Opcode
    deps: Deps
    args: Args  # 120 bits; bits past an opcode's own fields are zero


assert Instruction.as_shape().size == INSTRUCTION_BITS, Instruction.as_shape().size


def unit_of(opcode: Opcode) -> Unit | None:
    """Which queue an opcode goes to (FINISH goes to none)."""
    return {Opcode.LOAD: Unit.LOAD, Opcode.GEMM: Unit.COMPUTE, Opcode.SPARSE_GEMM: Unit.COMPUTE,
            Opcode.STORE: Unit.STORE, Opcode.SPARSIFY: Unit.SPARSIFY, Opcode.WEIGHT_UPDATE: Unit.SPARSIFY,
            Opcode.VECTOR: Unit.SPARSIFY}.get(opcode)


@dataclass(frozen=True)
class Decoded:
    """One instruction as plain Python values (the simulator's and the tests' view)."""

    opcode: int
    pop_prev: int
    pop_next: int
    push_prev: int
    push_next: int
    buffer: int = 0
    sram_addr: int = 0
    rows: int = 0
    dram_addr: int = 0
    dram_stride: int = 0
    bf16: int = 0
    relu: int = 0
    a_addr: int = 0
    b_addr: int = 0
    acc_addr: int = 0
    k: int = 0
    accumulate: int = 0
    groups: int = 0
    idx_addr: int = 0
    n: int = 0
    m_log2: int = 0
    src_addr: int = 0
    transpose: int = 0
    length: int = 0
    src_stride: int = 0
    dst_offset: int = 0
    w_addr: int = 0
    words: int = 0
    v_offset: int = 0
    g_offset: int = 0
    x_addr: int = 0
    beats: int = 0
    func: int = 0
    y_offset: int = 0
    z_offset: int = 0
    tile_transpose: int = 0
    taps_h: int = 0
    taps_w: int = 0
    tap_h_stride: int = 0
    tap_w_stride: int = 0
    next_addr: int = 0
    next_len: int = 0


def _field_offsets() -> dict[str, tuple[int, int]]:
    """(offset, width) of every leaf field in the 128-bit word, read off the layouts."""
    out = {}
    inst = Instruction.as_shape()
    out["opcode"] = (inst["opcode"].offset, 4)
    deps_off = inst["deps"].offset
    for name, f in Deps.as_shape():
        out[name] = (deps_off + f.offset, f.width)
    args_off = inst["args"].offset
    for group, layout in (("mem", MemArgs), ("gemm", GemmArgs), ("sparse", SparseGemmArgs),
                          ("sparsify", SparsifyArgs), ("update", WeightUpdateArgs), ("vector", VectorArgs),
                          ("finish", FinishArgs)):
        base = args_off + Args.as_shape()[group].offset
        for name, f in layout.as_shape():
            if name.startswith("_"):  # padding
                continue
            place = (base + f.offset, f.width)
            assert out.setdefault(name, place) == place, f"field {name} has two places"
            assert group != "sparse" or name not in ("k",)
    return out


FIELDS = _field_offsets()
#: fields held in two's complement: :func:`encode` takes them signed, :func:`decode_program` sign-extends them
SIGNED_FIELDS = frozenset(name for name, f in VectorArgs.as_shape() if Shape.cast(f.shape).signed)


def encode(opcode: Opcode, *, pop_prev=0, pop_next=0, push_prev=0, push_next=0, **args) -> int:
    """Encode one instruction to its 128-bit integer.  Unknown or too-wide fields are errors."""
    if not (pop_prev in (0, 1) and pop_next in (0, 1) and push_prev in (0, 1) and push_next in (0, 1)):
        raise ValueError("encode: token flags must be 0 or 1")
    value = int((opcode.value if isinstance(opcode, Opcode) else Opcode(opcode).value) | pop_prev << 4 |
                pop_next << 5 | push_prev << 6 | push_next << 7)
    for name, v in args.items():
        place = _ENCODING.get(name)
        if place is None:
            raise ValueError(f"encode: unknown instruction field {name!r}")
        off, lo, hi, mask = place
        if type(v) is not int:
            v = v.value if isinstance(v, (Buffer, VectorFunc)) else int(v)
        if not lo <= v < hi:
            width = mask.bit_length()
            raise ValueError(f"encode: field {name}={v} does not fit in {width}{' signed' if lo else ''} bits")
        value |= (v & mask) << off
    return value


_HEADER_FIELDS = ("opcode", "pop_prev", "pop_next", "push_prev", "push_next")


def with_flags(word: int, **flags: int) -> int:
    """An encoded instruction with token flags set (``pop_prev=1``, ...) or cleared (``=0``)."""
    for name, value in flags.items():
        if name not in _HEADER_FIELDS[1:] or value not in (0, 1):
            raise ValueError(f"with_flags: {name}={value!r} is not a token flag of 0 or 1")
        bit = 1 << FIELDS[name][0]
        word = word | bit if value else word & ~bit
    return word
#: per argument field: (offset, lowest value, one past the highest, mask of its width)
_ENCODING = {name: (off, -(1 << width - 1) if name in SIGNED_FIELDS else 0,
                    1 << width - 1 if name in SIGNED_FIELDS else 1 << width, (1 << width) - 1)
             for name, (off, width) in FIELDS.items() if name not in _HEADER_FIELDS}


def to_bytes(words: list[int]) -> bytes:
    """A program as the bytes the core fetches (little-endian 128-bit words)."""
    return b"".join(w.to_bytes(INSTRUCTION_BYTES, "little") for w in words)


def decode_program(blob: bytes) -> dict[str, np.ndarray]:
    """Decode a whole program at once: one int64 array per field (vectorised)."""
    if len(blob) % INSTRUCTION_BYTES:
        raise ValueError(f"program length {len(blob)} is not a multiple of {INSTRUCTION_BYTES} bytes")
    words = np.frombuffer(blob, dtype="<u8").reshape(-1, 2)
    lo, hi = words[:, 0], words[:, 1]
    out = {}
    for name, (off, width) in FIELDS.items():
        # a field may straddle the 64-bit halves
        if off + width <= 64:
            val = (lo >> np.uint64(off)) & np.uint64((1 << width) - 1)
        elif off >= 64:
            val = (hi >> np.uint64(off - 64)) & np.uint64((1 << width) - 1)
        else:
            low_bits = 64 - off
            val = (lo >> np.uint64(off)) | ((hi & np.uint64((1 << (width - low_bits)) - 1)) << np.uint64(low_bits))
        val = val.astype(np.int64)
        if name in SIGNED_FIELDS:
            val = np.where(val >= 1 << width - 1, val - (1 << width), val)
        out[name] = val
    return out


def decode(word: int) -> Decoded:
    """Decode one 128-bit instruction."""
    fields = decode_program(word.to_bytes(INSTRUCTION_BYTES, "little"))
    return Decoded(**{k: int(v[0]) for k, v in fields.items()})
