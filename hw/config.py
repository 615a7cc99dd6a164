"""The one configuration object of the accelerator.

:class:`SATConfig` carries every hardware parameter (array size, formats,
buffer sizes, bus widths, clock) and the parameters of the memory model that
the simulator and the benches share.  The RTL generator, the compiler, the
simulator, the driver and the FPGA flow all read it; nothing else states a
hardware number.  Derived values are properties; variants are made with
:func:`dataclasses.replace` (validation runs again).

It does not hold the instruction encoding (:mod:`nmsat.hw.isa`) or any tiling
decision (:mod:`nmsat.dataflow`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

__all__ = ["SATConfig"]

OPERAND_BYTES = {"bf16": 2}
#: slot indices per 16-bit lane of an index (IDX) word: 4 bits each, so m <= 16
IDX_SLOTS_PER_WORD = 4
ACCUMULATOR_BYTES = {"fp32": 4}
#: the sparsifier's elements per lane at most, unless the largest m or a bus beat of fp32 needs more
SPARSIFY_CHUNK_CAP = 16


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


@dataclass(frozen=True)
class SATConfig:
    """Hardware parameters of one build of the core (see ``docs/architecture.md``).

    Array: ``rows`` × ``cols`` processing elements; PE row ``r`` computes
    output row ``r`` of a tile, PE column ``c`` output column ``c``; the
    reduction dimension K streams through in time.

    Buffers (one word is what the array consumes or produces in one cycle):
    the A buffer holds ``a_depth`` words of ``rows`` operands, the B buffer
    ``b_depth`` words of ``cols`` operands, the accumulator buffer
    ``acc_depth`` words of ``cols`` accumulators.

    Memory port: AXI4 with ``bus_bytes`` data bytes and ``addr_bits`` address
    bits, bursts of at most ``max_burst_beats``.  Memory model (shared by the
    simulator and the benches, not part of the core): a read returns its first
    beat ``mem_read_latency`` cycles after its address is accepted, then one
    beat per cycle; a write is acknowledged ``mem_write_latency`` cycles after
    its last beat.
    """

    name: str
    rows: int
    cols: int
    a_depth: int
    b_depth: int
    acc_depth: int
    bus_bytes: int
    addr_bits: int = 32
    max_burst_beats: int = 16
    queue_depth: int = 8
    token_limit: int = 15
    sparse_m: tuple[int, ...] = (4, 8)
    operand_format: str = "bf16"
    accumulator_format: str = "fp32"
    clock_mhz: float = 100.0
    mem_read_latency: int = 4
    mem_write_latency: int = 2
    imem_depth: int = 256

    def __post_init__(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ValueError(f"SATConfig {self.name!r}: {message}")

        for field in ("rows", "cols", "a_depth", "b_depth", "acc_depth", "bus_bytes", "addr_bits",
                      "max_burst_beats", "queue_depth", "token_limit", "mem_read_latency", "mem_write_latency"):
            value = getattr(self, field)
            need(isinstance(value, int) and not isinstance(value, bool), f"{field} must be an int, got {value!r}")
        need(self.rows >= 1 and self.cols >= 1, f"array must be at least 1x1, got {self.rows}x{self.cols}")
        need(self.operand_format in OPERAND_BYTES, f"operand_format must be one of {sorted(OPERAND_BYTES)}, got {self.operand_format!r}")
        need(self.accumulator_format in ACCUMULATOR_BYTES,
             f"accumulator_format must be one of {sorted(ACCUMULATOR_BYTES)}, got {self.accumulator_format!r}")
        need(_is_pow2(self.bus_bytes) and self.bus_bytes >= 4, f"bus_bytes must be a power of two >= 4, got {self.bus_bytes}")
        for word in ("a_word_bytes", "b_word_bytes", "acc_word_bytes"):
            need(getattr(self, word) % self.bus_bytes == 0,
                 f"{word} ({getattr(self, word)}) must be a multiple of bus_bytes ({self.bus_bytes})")
        need(self.instruction_bytes % self.bus_bytes == 0 or self.bus_bytes % self.instruction_bytes == 0,
             f"bus_bytes ({self.bus_bytes}) and the instruction size ({self.instruction_bytes}) must divide one another")
        for depth in ("a_depth", "b_depth", "acc_depth"):
            need(1 <= getattr(self, depth) <= 1 << 16, f"{depth} must be in 1..65536, got {getattr(self, depth)}")
        need(self.acc_depth >= self.rows, f"acc_depth ({self.acc_depth}) must hold at least one output tile of "
                                          f"rows ({self.rows}) words")
        need(16 <= self.addr_bits <= 40, f"addr_bits must be in 16..40, got {self.addr_bits}")
        need(1 <= self.max_burst_beats <= 256 and _is_pow2(self.max_burst_beats),
             f"max_burst_beats must be a power of two in 1..256 (AXI4), got {self.max_burst_beats}")
        need(self.max_burst_beats * self.bus_bytes <= 4096, "a burst must not cross a 4 KiB boundary: max_burst_beats * bus_bytes must be <= 4096")
        need(isinstance(self.imem_depth, int) and 1 <= self.imem_depth <= 1 << 20,
             f"imem_depth must be in 1..1048576 instructions, got {self.imem_depth!r}")
        need(1 <= self.queue_depth <= 256, f"queue_depth must be in 1..256, got {self.queue_depth}")
        need(1 <= self.token_limit <= 255, f"token_limit must be in 1..255, got {self.token_limit}")
        need(isinstance(self.sparse_m, tuple) and all(isinstance(m, int) and m in (2, 4, 8, 16) for m in self.sparse_m),
             f"sparse_m must be a tuple drawn from (2, 4, 8, 16), got {self.sparse_m!r}")
        need(self.b_depth % self.b_banks == 0,
             f"b_depth ({self.b_depth}) must be a multiple of the B buffer's {self.b_banks} banks (the largest sparse_m)")
        need(self.a_depth % IDX_SLOTS_PER_WORD == 0, f"a_depth ({self.a_depth}) must be a multiple of {IDX_SLOTS_PER_WORD} "
                                                    f"(the index buffer holds a quarter as many words)")
        need(4 * self.sparsify_chunk // self.bus_bytes <= 255 and 4 * self.rows // self.bus_bytes <= 255,
             f"a sparsifier row ({4 * max(self.sparsify_chunk, self.rows)} bytes of fp32) must be at most 255 bus beats")
        need(self.mem_read_latency >= 1 and self.mem_write_latency >= 1, "memory latencies must be >= 1 cycle")
        need(self.clock_mhz > 0, f"clock_mhz must be > 0, got {self.clock_mhz}")

    # ---------------------------------------------------------------- presets

    @classmethod
    def tiny(cls) -> "SATConfig":
        """4×4 array, 8-byte bus, small buffers: fast RTL tests."""
        return cls(name="tiny", rows=4, cols=4, a_depth=256, b_depth=256, acc_depth=64, bus_bytes=8,
                   max_burst_beats=16, queue_depth=4, imem_depth=1024, clock_mhz=100.0, mem_read_latency=4, mem_write_latency=2)

    @classmethod
    def vcu1525(cls) -> "SATConfig":
        """32×32 array, 512-bit bus to one DDR4 channel, buffers sized for the VU9P's BRAM/URAM."""
        return cls(name="vcu1525", rows=32, cols=32, a_depth=8192, b_depth=8192, acc_depth=2048, bus_bytes=64,
                   addr_bits=34, max_burst_beats=64, queue_depth=64, imem_depth=65536, clock_mhz=200.0,
                   mem_read_latency=40, mem_write_latency=20)

    @classmethod
    def preset(cls, name: str) -> "SATConfig":
        presets = {"tiny": cls.tiny, "vcu1525": cls.vcu1525}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    # ---------------------------------------------------------------- derived values

    @property
    def operand_bytes(self) -> int:
        return OPERAND_BYTES[self.operand_format]

    @property
    def accumulator_bytes(self) -> int:
        return ACCUMULATOR_BYTES[self.accumulator_format]

    @property
    def a_word_bytes(self) -> int:
        return self.rows * self.operand_bytes

    @property
    def b_word_bytes(self) -> int:
        return self.cols * self.operand_bytes

    @property
    def acc_word_bytes(self) -> int:
        return self.cols * self.accumulator_bytes

    @property
    def instruction_bytes(self) -> int:
        from .isa import INSTRUCTION_BITS
        return INSTRUCTION_BITS // 8

    @property
    def b_banks(self) -> int:
        """Banks of the B buffer (word ``w`` in bank ``w % b_banks``): a sparse GEMM reads a group's m words at once."""
        return max(self.sparse_m, default=1)

    @property
    def idx_depth(self) -> int:
        """Words of the index buffer: one per four A words (four slot indices of 4 bits per row lane)."""
        return self.a_depth // IDX_SLOTS_PER_WORD

    @property
    def sparsify_chunk(self) -> int:
        """Elements along the reduction the sparsifier holds per lane at a time (its tile is ``rows`` lanes ×
        this many fp32 registers): the power of two at least the largest m, one bus beat of fp32 and ``rows``
        up to 16.  Capped for LUTs, not for function: the tile's registers and their multiplexers are about
        2 LUT a bit, so a 32 × 32 tile cost 64 k LUT of the VU9P's budget and 32 × 16 costs half."""
        need = max(min(self.rows, SPARSIFY_CHUNK_CAP), max(self.sparse_m, default=1), self.bus_bytes // 4)
        return 1 << (need - 1).bit_length()

    def word_bytes(self, buffer: "object") -> int:
        """Bytes of one word of a buffer (an :class:`nmsat.hw.isa.Buffer`); an IDX word is as wide as an A word."""
        from .isa import Buffer
        return {Buffer.A: self.a_word_bytes, Buffer.B: self.b_word_bytes, Buffer.ACC: self.acc_word_bytes,
                Buffer.IDX: self.a_word_bytes}[Buffer(buffer)]

    def depth(self, buffer: "object") -> int:
        from .isa import Buffer
        return {Buffer.A: self.a_depth, Buffer.B: self.b_depth, Buffer.ACC: self.acc_depth,
                Buffer.IDX: self.idx_depth}[Buffer(buffer)]

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.rows * self.cols

    # ---------------------------------------------------------------- identity

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SATConfig":
        data = json.loads(text)
        data["sparse_m"] = tuple(data["sparse_m"])
        return cls(**data)

    #: Fields that describe the memory model or a label, not the core: left out of the hash.
    NOT_HARDWARE = ("name", "mem_read_latency", "mem_write_latency")

    @property
    def hash32(self) -> int:
        """Stable 32-bit digest of the hardware fields: the core's read-only ID register holds it."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in self.NOT_HARDWARE}
        text = json.dumps(fields, sort_keys=True)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
