"""One BDWP training step of a linear layer on the accelerator: its GEMMs, its weight update and the forms of the
next step, as programs run one after another on one memory.

Runs, in order (each starts when the one before is DONE; all data stay in memory):

1. pre-generation of this step's forms (the previous step's last run, here the first): SPARSIFY of the
   master weights, FF and BP forms;
2. FF ``Y = (W ⊙ ff_mask) · X``: SPARSE_GEMM on the FF form;
3. BP ``dX = (W ⊙ bp_mask)ᵀ · dY``: SPARSE_GEMM on the BP form;
4. WU ``dW = dY · Xᵀ`` (dense), stored row-major into the gradient array of the master weights' layout;
5. WEIGHT_UPDATE of the master weights and momenta, then the SPARSIFYs of the next step's forms.

The output gradient ``dY`` comes from the host (the loss and the layers around it are issue 9's vector
unit).  Not here: convolutions (host im2col for now: ``nmsat.sw.stages``), several layers in one program.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import Csr, Opcode, encode, to_bytes
from ..hw.numerics import f32_to_bf16_bits
from .gemm import emit_gemm, pack_a, pack_b, plan_gemm, read_tiles
from .sparsify import (PAGE, SparsifyLayout, _align, _bits, layout_sparsify, pack_master, read_master,
                       update_instructions)

__all__ = ["LinearStep", "compile_linear_step"]


@dataclass
class LinearStep:
    """The memory image, the runs ``(program_addr, length)`` in order, the registers to write and the regions."""

    cfg: SATConfig
    layout: SparsifyLayout
    memory: np.ndarray
    runs: list[tuple[int, int]]
    registers: dict
    regions: dict[str, tuple[int, int]]
    batch: int

    def y(self, memory: np.ndarray) -> np.ndarray:
        return self._c(memory, "y", self.layout.cout_g, self.batch)

    def dx(self, memory: np.ndarray) -> np.ndarray:
        return self._c(memory, "dx", self.layout.k_g, self.batch)

    def weight(self, memory: np.ndarray) -> np.ndarray:
        return read_master(self.layout, memory)

    def momentum(self, memory: np.ndarray) -> np.ndarray:
        return read_master(self.layout, memory, self.regions["v"][0])

    def grad(self, memory: np.ndarray) -> np.ndarray:
        return read_master(self.layout, memory, self.regions["g"][0])

    def _c(self, memory, name, m, n):
        return read_tiles(self.cfg, memory, self.regions[name][0], m, n)


def compile_linear_step(cfg: SATConfig, weight: np.ndarray, momentum_buffer: np.ndarray, x: np.ndarray,
                        dy: np.ndarray, n: int, m: int, *, lr: float, momentum: float = 0.0,
                        weight_decay: float = 0.0) -> LinearStep:
    """``weight``/``momentum_buffer`` ``[out, in]`` fp32, ``x`` ``[in, batch]``, ``dy`` ``[out, batch]``."""
    w = np.asarray(weight, dtype=np.float32)
    x, dy = np.asarray(x, dtype=np.float32), np.asarray(dy, dtype=np.float32)
    cout, k = w.shape
    batch = x.shape[1]
    if x.shape[0] != k or dy.shape != (cout, batch):
        raise ValueError(f"compile_linear_step: need x [{k}, N] and dy [{cout}, N], got {list(x.shape)} and "
                         f"{list(dy.shape)}")
    lay = layout_sparsify(cfg, cout, k, n, m)
    if lay.k_pad < -(-k // cfg.cols) * cfg.cols:
        raise ValueError("compile_linear_step: the weight rows are padded less than the WU GEMM's column tiles")
    regions: dict[str, tuple[int, int]] = {}
    cursor = lay.end

    def place(name: str, nbytes: int) -> int:
        nonlocal cursor
        regions[name] = (cursor, nbytes)
        cursor = _align(cursor + nbytes, PAGE)
        return regions[name][0]

    v_addr, g_addr = place("v", lay.master_bytes), place("g", lay.master_bytes)
    ff_plan = plan_gemm(cfg, cout, batch, k, pattern=(n, m))
    bp_plan = plan_gemm(cfg, k, batch, cout, pattern=(n, m))
    wu_plan = plan_gemm(cfg, cout, k, batch)
    packed = {}
    for name, values, groups in (("x", x, ff_plan.units), ("dy", dy, bp_plan.units)):  # B operands, zero padded
        bits = np.zeros((groups * m, batch), dtype=np.uint16)
        bits[:values.shape[0]] = f32_to_bf16_bits(values)
        packed[name] = pack_b(cfg, bits)
    packed["dy_a"] = pack_a(cfg, f32_to_bf16_bits(dy))  # the WU GEMM's A = dY [out, batch]
    packed["x_t"] = pack_b(cfg, f32_to_bf16_bits(x.T))  # its B = Xᵀ [batch, in]
    for name in packed:
        place(name, packed[name].nbytes)
    place("y", ff_plan.mt * ff_plan.nt * cfg.rows * cfg.acc_word_bytes)
    place("dx", bp_plan.mt * bp_plan.nt * cfg.rows * cfg.acc_word_bytes)
    ff_slots, bp_slots = lay.slots(k), lay.slots(cout)
    programs = [
        lay.instructions(),
        emit_gemm(cfg, ff_plan, a_addr=lay.ff_record(0, 0), b_addr=regions["x"][0], c_addr=regions["y"][0],
                  idx_addr=lay.ff_record(0, 0) + ff_slots * cfg.a_word_bytes, a_tile_stride=lay.record_bytes(k)),
        emit_gemm(cfg, bp_plan, a_addr=lay.bp_record(0, 0), b_addr=regions["dy"][0], c_addr=regions["dx"][0],
                  idx_addr=lay.bp_record(0, 0) + bp_slots * cfg.a_word_bytes, a_tile_stride=lay.record_bytes(cout)),
        emit_gemm(cfg, wu_plan, a_addr=regions["dy_a"][0], b_addr=regions["x_t"][0], c_addr=g_addr,
                  c_row_stride=lay.stride),
        update_instructions(lay, v_addr, g_addr) + lay.instructions(),
    ]
    runs, blobs = [], []
    for words in programs:
        words = words + [encode(Opcode.FINISH)]
        if len(words) > cfg.imem_depth:
            raise ValueError(f"compile_linear_step: a program of {len(words)} instructions does not fit the "
                             f"instruction memory ({cfg.imem_depth}); the layer is too large for this config")
        blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
        runs.append((place(f"program{len(runs)}", blob.size), len(words)))
        blobs.append(blob)
    memory = np.zeros(cursor, dtype=np.uint8)
    for addr, array in ((lay.base, w), (v_addr, momentum_buffer)):
        data = pack_master(lay, np.asarray(array, dtype=np.float32)).view(np.uint8).ravel()
        memory[addr:addr + data.size] = data
    for name, data in packed.items():
        addr, nbytes = regions[name]
        memory[addr:addr + nbytes] = data.view(np.uint8).ravel()
    for (addr, _), blob in zip(runs, blobs):
        memory[addr:addr + blob.size] = blob
    registers = {Csr.LR: _bits(lr), Csr.MOMENTUM: _bits(momentum), Csr.WEIGHT_DECAY: _bits(weight_decay)}
    return LinearStep(cfg, lay, memory, runs, registers, regions, batch)
