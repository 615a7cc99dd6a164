"""The energy estimate (``nmsat.sw.energy``): its counts against what the programs do (MAC slots against the
simulator's count, DRAM bytes against the operands a single-pass GEMM moves, a walk's B reads against its
window), its prices against the source's figures, and the recording timer's programs against its cycles."""

import numpy as np
import pytest

from nmsat.dataflow import conv
from nmsat.dataflow.gemm import compile_gemm, compile_sparse_gemm
from nmsat.dataflow.models import WorkBuilder
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Buffer
from nmsat.sim.core import CoreModel
from nmsat.sw.energy import ENERGY_PJ, SRAM_POINTS, count_programs, energy_pj, sram_pj_per_64b
from nmsat.sw.iteration import Timer, time_iteration

TINY = SATConfig.tiny()


def test_a_single_pass_gemm_moves_each_operand_once_and_issues_the_simulators_mac_slots():
    rng = np.random.default_rng(0)
    m, k, n = TINY.rows, 2 * TINY.cols, TINY.cols  # one output tile, two reduction steps
    prog = compile_gemm(TINY, rng.standard_normal((m, k)), rng.standard_normal((k, n)))
    counts = count_programs(TINY, prog.run_words)
    result = CoreModel(TINY).run_sequence(prog.memory.copy(), list(prog.runs))
    assert result.ok and counts.mac_slots == result.gemm_macs == m * k * n
    assert counts.dram_read == (m * k + k * n) * 2  # bf16 operands, each loaded once
    assert counts.dram_written == m * n * 4  # fp32 C
    assert counts.writes[Buffer.A] == counts.reads[Buffer.A] == k  # A words of rows operands
    assert counts.writes[Buffer.ACC] >= TINY.rows and counts.reads[Buffer.ACC] == TINY.rows  # drained, stored


def test_a_sparse_gemm_reads_n_of_m_slots_of_a_and_all_m_words_of_b():
    rng = np.random.default_rng(1)
    m, k, n = TINY.rows, 16, TINY.cols
    prog = compile_sparse_gemm(TINY, rng.standard_normal((m, k)), rng.standard_normal((k, n)), 2, 8)
    counts = count_programs(TINY, prog.run_words)
    assert counts.reads[Buffer.A] == k * 2 // 8 and counts.reads[Buffer.B] == k
    assert counts.mac_slots == k * 2 // 8 * TINY.rows * TINY.cols
    assert counts.reads[Buffer.IDX] == 1  # 4 slots in one IDX word


def test_a_walk_loads_its_window_not_taps_times_it():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 8, 6, 6)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    walk = conv.ff_walk(w, 6, 6, 1, 1, 1)
    src = conv.ActLayout(4, 8, 6, 6, 1, 8)
    prog = conv.compile_walks(TINY, [walk], src, x, conv.ActLayout(4, 8, 6, 6, 0, 4))
    counts = count_programs(TINY, prog.run_words)
    taps_reads = 9 * 6 * 6 * 8 * TINY.b_word_bytes  # what im2col would read
    b_loaded = counts.writes[Buffer.B] * TINY.b_word_bytes
    assert src.nbytes(TINY) <= b_loaded < taps_reads  # halos on the tiny buffers' small tiles, but not k² reads
    assert counts.dram_read == counts.writes[Buffer.A] * TINY.a_word_bytes + b_loaded
    assert counts.reads[Buffer.B] == 9 * 8 * 6 * 6 * 2  # each output pixel's taps × channels, two Cout tiles


def test_prices_are_the_sources():
    assert ENERGY_PJ["mac"] == pytest.approx(2.0)
    for size, pj in SRAM_POINTS:
        assert sram_pj_per_64b(size) == pj
    assert 10.0 < sram_pj_per_64b(16 << 10) < 20.0 and sram_pj_per_64b(1 << 30) == 100.0
    rng = np.random.default_rng(3)
    prog = compile_gemm(TINY, rng.standard_normal((4, 8)), rng.standard_normal((8, 4)))
    counts = count_programs(TINY, prog.run_words)
    e = energy_pj(TINY, counts)
    assert e["dram"] == pytest.approx((counts.dram_read + counts.dram_written) / 8 * 1300.0)
    assert e["mac"] == pytest.approx(counts.mac_slots * 2.0)
    assert set(e) == {"mac", "dram", "sram_a", "sram_b", "sram_acc", "sram_idx"}


@pytest.mark.parametrize("offline", [True, False])
def test_the_recording_timer_keeps_the_programs_that_ran(offline):
    """Every piece charged is recorded once per charge (memo hits, two norms of one shape, the groups of a
    grouped conv apart without offline scheduling), and a mapping that lost (GEMMs against group walks) is
    timed but not recorded: the recorded programs' cycles are the report's array cycles."""
    cfg = SATConfig.vcu1525()
    core = CoreModel(cfg)
    b = WorkBuilder(2)
    b.conv("g", 64, 64, 8, 3, 1, 1, groups=16)
    b.norm("bn", 2 * 64 * 8 * 8)
    b.conv("g2", 64, 64, 8, 3, 1, 1, groups=16)
    b.norm("bn2", 2 * 64 * 8 * 8)
    timer = Timer(cfg, core, record=True)
    report = time_iteration(cfg, b.layers, None, pregeneration=False, interleave=False, offline=offline, core=core,
                            timer=timer)
    assert timer.calls and set(timer.calls) <= set(timer.programs)
    assert sum(key[0] == "norm" for key in timer.calls) == 4  # two norms, forward and backward each
    cycles = sum(core.time_programs(timer.programs[key]).cycles for key in timer.calls)
    assert cycles == report.gemm + report.norm


def test_a_transposing_load_moves_rows_tiles_of_r_words():
    """MemArgs.tile_transpose: ``rows`` blocks of R words each read, written as ``rows · cols`` words."""
    from nmsat.hw.isa import Opcode, encode
    load = encode(Opcode.LOAD, buffer=Buffer.B, rows=3, tile_transpose=1, sram_addr=0, dram_addr=0,
                  dram_stride=TINY.rows * TINY.b_word_bytes)
    plain = encode(Opcode.LOAD, buffer=Buffer.B, rows=3, sram_addr=0, dram_addr=0, dram_stride=TINY.b_word_bytes)
    t, p = count_programs(TINY, [[load]]), count_programs(TINY, [[plain]])
    assert t.dram_read == 3 * TINY.rows * TINY.b_word_bytes and t.writes[Buffer.B] == 3 * TINY.cols
    assert p.dram_read == 3 * TINY.b_word_bytes and p.writes[Buffer.B] == 3
