"""An energy estimate of accelerator programs: operations and accesses per class and memory level, counted
from the instruction stream, times per-access energies from one public source.

Counted per instruction (:func:`count_programs`), as the ISA defines them (``nmsat.hw.isa``):

* GEMM: ``k·taps`` steps, each one A word, one B word and ``rows·cols`` MAC slots; SPARSE_GEMM:
  ``groups·n·taps`` slots, each one A word and ``rows·cols`` MAC slots, ``groups·m·taps`` B words and an IDX
  word per 4 slots; either drains ``rows`` accumulator words (read too when it accumulates).
* LOAD: ``rows`` buffer words written (transposing: ``rows·cols``), their bytes read from DRAM; STORE:
  ``rows`` accumulator words read, ``rows·cols`` values (bf16 or fp32) written to DRAM.
* VECTOR, WEIGHT_UPDATE, SPARSIFY: not counted here (stream work; not a convolution's).

Energies (:data:`ENERGY_PJ`), from M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014 (45 nm, 0.9 V): a 16-bit fp multiply 1.1 pJ and a 32-bit fp add 0.9 pJ, so a bf16 × bf16 → fp32
MAC 2.0 pJ; a 64-bit SRAM read 10 pJ from 8 KB, 20 pJ from 32 KB, 100 pJ from 1 MB (here log-linear in
between, per buffer by its size, scaled by its word's width); a 64-bit DRAM access 1.3–2.6 nJ (here 1.3 nJ,
the low end).  A relative model: a 45 nm ASIC's energies, not the VCU1525's fabric; it compares mappings and
group sizes, it does not predict watts.  Not here: static power, the clock tree, the interconnect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..hw.config import IDX_SLOTS_PER_WORD, SATConfig
from ..hw.isa import Buffer, Opcode, decode_program, to_bytes

__all__ = ["ENERGY_PJ", "SRAM_POINTS", "Counts", "count_programs", "sram_pj_per_64b", "energy_pj"]

#: picojoules per event (Horowitz, ISSCC 2014, 45 nm): a MAC (bf16 multiply + fp32 add), a 64-bit DRAM access
ENERGY_PJ = {"mac": 1.1 + 0.9, "dram_64b": 1300.0}

#: (bytes, pJ per 64-bit read) of SRAMs of three sizes (the same source)
SRAM_POINTS = ((8 << 10, 10.0), (32 << 10, 20.0), (1 << 20, 100.0))


@dataclass
class Counts:
    """Events of some programs: MAC slots issued, buffer words read and written per buffer, DRAM bytes."""

    mac_slots: int = 0
    reads: dict = field(default_factory=lambda: {b: 0 for b in Buffer})
    writes: dict = field(default_factory=lambda: {b: 0 for b in Buffer})
    dram_read: int = 0
    dram_written: int = 0

    def __iadd__(self, other: "Counts") -> "Counts":
        self.mac_slots += other.mac_slots
        for b in Buffer:
            self.reads[b] += other.reads[b]
            self.writes[b] += other.writes[b]
        self.dram_read += other.dram_read
        self.dram_written += other.dram_written
        return self

    def scaled(self, factor: int) -> "Counts":
        out = Counts(self.mac_slots * factor, {b: v * factor for b, v in self.reads.items()},
                     {b: v * factor for b, v in self.writes.items()}, self.dram_read * factor,
                     self.dram_written * factor)
        return out


def count_programs(cfg: SATConfig, programs) -> Counts:
    """The events of ``programs`` (instruction word lists), each instruction counted once as it is written."""
    out = Counts()
    R, C = cfg.rows, cfg.cols
    for words in programs:
        f = decode_program(to_bytes(list(words)))
        op = f["opcode"]
        taps = np.maximum(f["taps_h"], 1) * np.maximum(f["taps_w"], 1)
        gemm = op == Opcode.GEMM.value
        sparse = op == Opcode.SPARSE_GEMM.value
        steps = f["k"][gemm] * taps[gemm]  # k: SPARSE_GEMM's groups stand in the same field
        slots = f["k"][sparse] * f["n"][sparse] * taps[sparse]
        out.mac_slots += int((steps.sum() + slots.sum()) * R * C)
        out.reads[Buffer.A] += int(steps.sum() + slots.sum())
        out.reads[Buffer.B] += int(steps.sum() + (f["k"][sparse] * (1 << f["m_log2"][sparse]) * taps[sparse]).sum())
        out.reads[Buffer.IDX] += int(np.ceil(slots / IDX_SLOTS_PER_WORD).sum())
        drains = gemm | sparse
        out.writes[Buffer.ACC] += int(drains.sum()) * R
        out.reads[Buffer.ACC] += int(f["accumulate"][drains].sum()) * R
        for opcode, is_load in ((Opcode.LOAD, True), (Opcode.STORE, False)):
            sel = op == opcode.value
            for buffer in Buffer:
                mine = sel & (f["buffer"] == buffer.value)
                if not mine.any():
                    continue
                rows = f["rows"][mine]
                if is_load:
                    transposed = f["tile_transpose"][mine] == 1
                    words_in = np.where(transposed, rows * C, rows)
                    out.writes[buffer] += int(words_in.sum())
                    out.dram_read += int(np.where(transposed, rows * R * cfg.b_word_bytes,
                                                  rows * cfg.word_bytes(buffer)).sum())
                else:
                    out.reads[buffer] += int(rows.sum())
                    out.dram_written += int((rows * C * np.where(f["bf16"][mine] == 1, 2, 4)).sum())
    return out


def sram_pj_per_64b(size_bytes: int) -> float:
    """pJ of a 64-bit read from an SRAM of ``size_bytes``: log-linear between :data:`SRAM_POINTS` (clamped at
    the ends)."""
    pts = SRAM_POINTS
    if size_bytes <= pts[0][0]:
        return pts[0][1]
    for (s0, e0), (s1, e1) in zip(pts, pts[1:]):
        if size_bytes <= s1:
            t = (math.log(size_bytes) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return e0 + t * (e1 - e0)
    return pts[-1][1]


def energy_pj(cfg: SATConfig, counts: Counts) -> dict[str, float]:
    """Picojoules per class: ``mac``, one per buffer (``sram_a`` …: its reads and writes, a word costing its
    width's share of a 64-bit access to an SRAM of the buffer's size), ``dram``."""
    out = {"mac": counts.mac_slots * ENERGY_PJ["mac"]}
    for b in Buffer:
        width, size = cfg.word_bytes(b), cfg.word_bytes(b) * cfg.depth(b)
        per_word = width / 8 * sram_pj_per_64b(size)
        out[f"sram_{b.name.lower()}"] = (counts.reads[b] + counts.writes[b]) * per_word
    out["dram"] = (counts.dram_read + counts.dram_written) / 8 * ENERGY_PJ["dram_64b"]
    return out
