"""Element-wise work between the GEMMs on the vector unit: VECTOR instructions over arrays in memory.

Holds :func:`vector_instructions` (one array operation cut into VECTOR
instructions: at most 2^18 − 1 beats each, every piece on a burst boundary),
:func:`array_bytes` (the room an array of elements takes: whole bursts) and
:func:`compile_vector` (a one-operation program on host arrays, for tests and
examples).  The element rule is :func:`nmsat.sim.numerics.vector_op`.

Not here: which operations a layer needs (the iteration compiler), or the
GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import Opcode, VectorFunc, encode, to_bytes

__all__ = ["MAX_BEATS", "array_bytes", "vector_instructions", "VectorProgram", "compile_vector", "read_array"]

#: the widest VECTOR (its ``beats`` field)
MAX_BEATS = (1 << 18) - 1
_OFFSET_LIMIT = 1 << 21  # the offsets' signed 22-bit range, in bursts


def _burst(cfg: SATConfig) -> int:
    return cfg.max_burst_beats * cfg.bus_bytes


def array_bytes(cfg: SATConfig, elements: int, bf16: bool = False) -> int:
    """Bytes an array of ``elements`` fp32 (or bf16) takes in memory for VECTOR: whole bursts."""
    burst = _burst(cfg)
    return -(-elements * (2 if bf16 else 4) // burst) * burst


def vector_instructions(cfg: SATConfig, func: VectorFunc, x_addr: int, y_addr: int, z_addr: int, elements: int, *,
                        bf16: bool = False) -> list[int]:
    """VECTORs computing ``z = func(x, y)`` over ``elements`` elements (padded to whole beats: the pad lanes
    are computed too, so the arrays must have the room of :func:`array_bytes`).  Addresses are burst-aligned;
    z is x, y or apart from both."""
    burst = _burst(cfg)
    if elements < 1:
        raise ValueError(f"vector_instructions: {elements} elements; need at least 1")
    for name, addr in (("x", x_addr), ("y", y_addr), ("z", z_addr)):
        if addr % burst:
            raise ValueError(f"vector_instructions: {name} at {addr:#x} is not aligned to a {burst}-byte burst")
    beats = -(-elements * (2 if bf16 else 4) // cfg.bus_bytes)
    per = MAX_BEATS // cfg.max_burst_beats * cfg.max_burst_beats  # whole bursts per instruction
    out = []
    for first in range(0, beats, per):
        x = x_addr + first * cfg.bus_bytes
        offsets = {"y_offset": (y_addr - x_addr) // burst, "z_offset": (z_addr - x_addr) // burst}
        for name, value in offsets.items():
            if not -_OFFSET_LIMIT <= value < _OFFSET_LIMIT:
                raise ValueError(f"vector_instructions: {name} of {value} bursts is out of its signed 22-bit range")
        out.append(encode(Opcode.VECTOR, x_addr=x, beats=min(per, beats - first), func=func, bf16=int(bf16),
                          **offsets))
    return out


@dataclass
class VectorProgram:
    """One VECTOR operation on host arrays: the program, its memory image and where z lands."""

    cfg: SATConfig
    words: list[int]
    memory: np.ndarray
    program_addr: int
    z_addr: int
    elements: int
    bf16: bool

    @property
    def length(self) -> int:
        return len(self.words)


def compile_vector(cfg: SATConfig, func: VectorFunc, x_bits: np.ndarray, y_bits: np.ndarray, *,
                   in_place: str | None = None) -> VectorProgram:
    """``z = func(x, y)`` on bit patterns (uint32: fp32, uint16: bf16) of one shape; ``in_place`` "x" or "y"
    writes z over that operand."""
    x_bits, y_bits = np.asarray(x_bits).ravel(), np.asarray(y_bits).ravel()
    if x_bits.dtype != y_bits.dtype or x_bits.dtype not in (np.uint16, np.uint32) or x_bits.size != y_bits.size:
        raise ValueError("compile_vector: x and y must be bit patterns of one dtype (uint16 or uint32) and size")
    bf16 = x_bits.dtype == np.uint16
    size = array_bytes(cfg, x_bits.size, bf16)
    burst = _burst(cfg)
    x_addr = burst * -(-4096 // burst)
    y_addr = x_addr + size
    z_addr = {"x": x_addr, "y": y_addr, None: y_addr + size}[in_place]
    program_addr = y_addr + 2 * size
    words = vector_instructions(cfg, func, x_addr, y_addr, z_addr, x_bits.size, bf16=bf16) + [encode(Opcode.FINISH)]
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    memory = np.zeros(program_addr + -(-blob.size // 4096) * 4096, dtype=np.uint8)
    for addr, bits in ((x_addr, x_bits), (y_addr, y_bits)):
        raw = bits.view(np.uint8)
        memory[addr:addr + raw.size] = raw
    memory[program_addr:program_addr + blob.size] = blob
    return VectorProgram(cfg, words, memory, program_addr, z_addr, x_bits.size, bf16)


def read_array(program: VectorProgram, memory: np.ndarray) -> np.ndarray:
    """z's bit patterns after a run."""
    width = 2 if program.bf16 else 4
    raw = memory[program.z_addr:program.z_addr + program.elements * width]
    return raw.view(np.uint16 if program.bf16 else np.uint32).copy()
