"""Sparsify programs: layout rules and clear errors for what the sparsifier cannot do."""

import numpy as np
import pytest

from nmsat.dataflow.sparsify import compile_sparsified_gemm, compile_sparsify, layout_sparsify
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import decode

TINY = SATConfig.tiny()


def test_layout_pads_to_whole_chunks_and_tiles_and_places_records_after_the_master():
    lay = layout_sparsify(TINY, 10, 21, 2, 8)
    assert (lay.rows_pad, lay.k_pad) == (16, 24)  # lcm(rows 4, chunk 8) = 8
    assert lay.ff_base >= lay.groups * lay.rows_pad * lay.stride and lay.bp_base > lay.ff_base
    words = [decode(w) for w in lay.instructions()]
    assert [w.transpose for w in words] == [1] * lay.m_tiles + [0] * lay.k_tiles
    ff = words[1]  # M-tile 1: rows 4..7 of the master, record 1
    assert ff.src_addr == 4 * lay.stride and ff.src_addr + ff.dst_offset == lay.ff_record(0, 1)
    assert ff.length == 21 and ff.n == 2 and ff.m_log2 == 3
    bp = words[lay.m_tiles + 2]  # K-tile 2: columns 8..11
    assert bp.src_addr == 2 * 4 * TINY.rows and bp.length == 10 and bp.src_addr + bp.dst_offset == lay.bp_record(0, 2)


@pytest.mark.parametrize("args,message", [
    (dict(cout=8, k_g=16, n=2, m=16), "not one of the config's group sizes"),
    (dict(cout=8, k_g=16, n=1, m=2), "not one of the config's group sizes"),
    (dict(cout=8, k_g=16, n=0, m=8), "1 <= n <= m"),
    (dict(cout=9, k_g=16, n=2, m=8, groups=2), "must divide cout"),
    (dict(cout=8, k_g=40000, n=2, m=8), "too long for one SPARSIFY row stride"),
    (dict(cout=8, k_g=16, n=2, m=8, base_addr=64), "4 KiB aligned"),
])
def test_layout_refuses_what_the_sparsifier_cannot_do(args, message):
    with pytest.raises(ValueError, match=message):
        layout_sparsify(TINY, **args)


def test_compile_refuses_non_float_or_non_matrix_weights():
    with pytest.raises(TypeError, match="2-D floating-point"):
        compile_sparsify(TINY, np.ones((4, 4), dtype=np.int32), 2, 8)
    with pytest.raises(TypeError, match="2-D floating-point"):
        compile_sparsify(TINY, np.ones(16, dtype=np.float32), 2, 8)
    with pytest.raises(ValueError, match="operand must be"):
        compile_sparsified_gemm(TINY, np.ones((4, 8), np.float32), np.ones((4, 2), np.float32), 2, 8)
    with pytest.raises(ValueError, match="direction"):
        compile_sparsified_gemm(TINY, np.ones((4, 8), np.float32), np.ones((8, 2), np.float32), 2, 8, direction="WU")


def test_a_large_layer_is_updated_by_several_weight_updates_on_burst_boundaries():
    """The words field holds 2^18 − 1: a 4096 × 4096 Linear at vcu1525 (524,288 words) takes three."""
    from nmsat.dataflow.sparsify import update_instructions

    cfg = SATConfig.vcu1525()
    lay = layout_sparsify(cfg, 4096, 4096, 2, 8)
    words = [decode(w) for w in update_instructions(lay, lay.end, lay.end + lay.master_bytes)]
    assert len(words) == 3 and sum(w.words for w in words) == lay.master_bytes // (4 * cfg.rows)
    align = cfg.max_burst_beats * cfg.bus_bytes
    assert all(w.w_addr % align == 0 and w.w_addr + w.v_offset == lay.end + (w.w_addr - lay.base) for w in words)


def test_overlapping_weight_update_arrays_are_a_hazard():
    """Chunk by chunk, a later chunk would read what an earlier one wrote."""
    from nmsat.hw.isa import Opcode, encode, to_bytes
    from nmsat.sim.core import CoreModel

    memory = np.zeros(0x4000, dtype=np.uint8)
    for v_offset, g_offset, racy in ((128, 1024, True), (1024, 128, True), (1024, 2048, False)):
        words = [encode(Opcode.WEIGHT_UPDATE, w_addr=0x1000, words=16, v_offset=v_offset, g_offset=g_offset),
                 encode(Opcode.FINISH)]
        memory[:32] = np.frombuffer(to_bytes(words), dtype=np.uint8)
        result = CoreModel(TINY).run(memory.copy(), 0, 2)
        assert result.ok and (result.hazards == []) is not racy, (v_offset, g_offset, result.hazards)
