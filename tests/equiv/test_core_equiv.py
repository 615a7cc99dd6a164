"""The RTL against the simulator: same status, error, error PC, cycle count and memory bytes.

Two benches: Amaranth's own simulator with the config's memory model (a few
programs: it is slow), and the Verilog under Verilator with cocotb,
cocotbext-axi's ``AxiRam`` and ``AxiLiteMaster`` (many programs in one
simulator start).  Programs: the compiler's GEMMs on random and conv-layer
shapes, serial and pipelined, and random instruction streams (random
arguments and token flags: deadlocks, overflows, range errors and races
included; their memory is compared only when the program is race-free).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from nmsat.dataflow.gemm import compile_gemm
from nmsat.dataflow.layers import conv2d_gemms
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Buffer, ErrorCode, Opcode, Status, encode, to_bytes
from nmsat.sim.core import CoreModel

sys.path.insert(0, str(Path(__file__).parent))
from amaranth_bench import run_core_amaranth  # noqa: E402

TINY = SATConfig.tiny()


def gemm_program(cfg, m, n, k, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32) * np.float32(4.0) ** rng.integers(-3, 4, (m, k))
    b = rng.standard_normal((k, n)).astype(np.float32)
    return compile_gemm(cfg, a, b)


def random_program(cfg, seed, length=24):
    """Random LOAD/GEMM/STORE with random (mostly valid) arguments and token flags, then FINISH."""
    rng = np.random.default_rng(seed)
    words = []
    data_base = 0x4000
    for _ in range(length):
        kind = rng.choice(["load", "gemm", "store"], p=[0.45, 0.35, 0.2])
        flags = {f: int(rng.random() < 0.15) for f in ("pop_prev", "pop_next", "push_prev", "push_next")}
        if kind == "load":
            flags.update(pop_prev=0, push_prev=0)
            buf = Buffer.A if rng.random() < 0.5 else Buffer.B
            rows = int(rng.integers(1, 40))
            word = cfg.word_bytes(buf)
            stride = word * int(rng.choice([1, 1, 2, 3]))
            words.append(encode(Opcode.LOAD, buffer=buf, sram_addr=int(rng.integers(0, cfg.depth(buf) - rows + 1)),
                                rows=rows, dram_addr=data_base + cfg.bus_bytes * int(rng.integers(0, 512)),
                                dram_stride=stride, **flags))
        elif kind == "gemm":
            k = int(rng.integers(1, 30))
            words.append(encode(Opcode.GEMM, a_addr=int(rng.integers(0, cfg.a_depth - k + 1)),
                                b_addr=int(rng.integers(0, cfg.b_depth - k + 1)),
                                acc_addr=int(rng.integers(0, cfg.acc_depth - cfg.rows + 1)), k=k,
                                accumulate=int(rng.random() < 0.5), **flags))
        else:
            flags.update(pop_next=0, push_next=0)
            rows = int(rng.integers(1, 10))
            words.append(encode(Opcode.STORE, buffer=Buffer.ACC, sram_addr=int(rng.integers(0, cfg.acc_depth - rows + 1)),
                                rows=rows, dram_addr=0x10000 + cfg.bus_bytes * int(rng.integers(0, 256)),
                                dram_stride=cfg.acc_word_bytes * int(rng.choice([1, 2])), **flags))
        if rng.random() < 0.03:  # an occasional bad word
            words[-1] = int(rng.integers(5, 16))
    words.append(encode(Opcode.FINISH))
    memory = np.zeros(0x14000, dtype=np.uint8)
    memory[:len(words) * 16] = np.frombuffer(to_bytes(words), dtype=np.uint8)
    memory[data_base:0x10000] = np.random.default_rng(seed + 1).integers(0, 256, 0x10000 - data_base, dtype=np.uint8)
    return memory, len(words)


def assert_same(sim_result, sim_memory, rtl, compare_memory=True):
    assert (rtl.status, rtl.error, rtl.cycles) == (sim_result.status, sim_result.error, sim_result.cycles)
    if rtl.status is Status.ERROR:
        assert rtl.error_pc == sim_result.error_pc
    elif compare_memory:
        assert np.array_equal(rtl.memory, sim_memory)


# ---------------------------------------------------------------- Amaranth simulator


@pytest.mark.parametrize("m,n,k,serial", [(4, 4, 4, False), (7, 9, 13, True), (9, 6, 21, False)])
def test_amaranth_core_matches_simulator_on_gemms(m, n, k, serial):
    prog = gemm_program(TINY, m, n, k, seed=m * n * k)
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length, serial=serial)
    assert expected.ok
    rtl = run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length, serial=serial)
    assert_same(expected, memory, rtl)


@pytest.mark.parametrize("words,code", [
    ([0xF, encode(Opcode.FINISH)], ErrorCode.BAD_OPCODE),
    ([encode(Opcode.GEMM, pop_prev=1, k=3), encode(Opcode.FINISH)], ErrorCode.DEADLOCK),
    ([encode(Opcode.GEMM, k=2)], ErrorCode.NO_FINISH),
])
def test_amaranth_core_matches_simulator_on_errors(words, code):
    memory = np.zeros(4096, dtype=np.uint8)
    memory[:len(words) * 16] = np.frombuffer(to_bytes(words), dtype=np.uint8)
    expected = CoreModel(TINY).run(memory.copy(), 0, len(words))
    assert expected.error is code
    rtl = run_core_amaranth(TINY, memory, 0, len(words))
    assert_same(expected, memory, rtl)


# ---------------------------------------------------------------- Verilator + cocotb


def conv_shapes():
    shapes = []
    for cin, cout, hw, kernel, stride in ((3, 8, 6, 3, 1), (8, 16, 4, 3, 2), (16, 8, 4, 1, 1)):
        for g in conv2d_gemms("c", 2, cin, cout, hw, hw, kernel, stride, kernel // 2):
            shapes.append((g.m, g.n, g.k))
    return shapes


@pytest.fixture(scope="module")
def verilator_results():
    import shutil

    pytest.importorskip("cocotb_tools.runner")
    if not (shutil.which("make") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("Verilator needs make and a C++ compiler, and this machine has none")
    from nmsat.sw.rtl import RtlJob, run_programs

    rng = np.random.default_rng(2026)
    cases = []  # (job, compare_memory)
    shapes = [tuple(int(x) for x in rng.integers(1, 24, 3)) for _ in range(6)] + conv_shapes()
    for i, (m, n, k) in enumerate(shapes):
        prog = gemm_program(TINY, m, n, k, seed=i)
        for serial in (False, True):
            cases.append((RtlJob(prog.memory, prog.program_addr, prog.length, serial), True))
    for seed in range(24):
        memory, length = random_program(TINY, seed)
        cases.append((RtlJob(memory, 0, length, serial=bool(seed % 4 == 0)), False))
    for prog_len in (0, TINY.imem_depth + 1):
        cases.append((RtlJob(np.zeros(4096, dtype=np.uint8), 0, prog_len), False))
    results = run_programs(TINY, [job for job, _ in cases])
    return cases, results


def test_verilator_core_id_is_the_config_hash(verilator_results):
    _, results = verilator_results
    assert all(r.id == TINY.hash32 for r in results)


def test_verilator_core_matches_simulator(verilator_results):
    cases, results = verilator_results
    errors = set()
    for (job, compare_memory), rtl in zip(cases, results):
        memory = job.memory.copy()
        expected = CoreModel(TINY).run(memory, job.program_addr, job.program_len, serial=job.serial)
        # a random program may race (two units touching one buffer word without a token between them);
        # its bytes depend on timing, so only its timing and status are compared
        assert_same(expected, memory, rtl, compare_memory=compare_memory)
        errors.add(rtl.error)
    # the random programs reach the interesting outcomes, not only DONE
    assert {ErrorCode.NONE, ErrorCode.DEADLOCK, ErrorCode.PROGRAM_TOO_LONG} <= errors


def test_verilator_serial_equals_pipelined(verilator_results):
    cases, results = verilator_results
    gemm = [(job, r) for (job, compare), r in zip(cases, results) if compare]
    for (job_p, rtl_p), (job_s, rtl_s) in zip(gemm[0::2], gemm[1::2]):
        assert not job_p.serial and job_s.serial
        assert rtl_p.ok and rtl_s.ok and np.array_equal(rtl_p.memory, rtl_s.memory)
        assert rtl_s.cycles > rtl_p.cycles


@pytest.mark.parametrize("memory_model", ["axiram", "axiram-backpressure"])
def test_verilator_with_cocotbext_axiram_gives_the_same_bytes(memory_model):
    """cocotbext-axi's AxiRam has no fixed latency, so only status and bytes are compared there;
    with back-pressure on every channel the core must still finish with the same bytes, later."""
    import shutil

    if not (shutil.which("make") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("Verilator needs make and a C++ compiler, and this machine has none")
    from nmsat.sw.rtl import RtlJob, run_programs

    progs = [gemm_program(TINY, m, n, k, seed=m + n + k) for m, n, k in ((5, 7, 9), (12, 16, 33))]
    results = run_programs(TINY, [RtlJob(p.memory, p.program_addr, p.length) for p in progs],
                           memory_model=memory_model)
    for prog, rtl in zip(progs, results):
        memory = prog.memory.copy()
        expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length)
        assert rtl.ok and rtl.error is ErrorCode.NONE
        assert np.array_equal(rtl.memory, memory)
        if memory_model == "axiram-backpressure":
            assert rtl.cycles > expected.cycles


VARIANTS = [
    SATConfig(name="narrow", rows=2, cols=8, a_depth=64, b_depth=64, acc_depth=32, bus_bytes=4, max_burst_beats=8,
              queue_depth=2, imem_depth=512, mem_read_latency=3, mem_write_latency=1),
    SATConfig(name="wide", rows=8, cols=2, a_depth=64, b_depth=128, acc_depth=32, bus_bytes=4, max_burst_beats=4,
              queue_depth=3, imem_depth=512, mem_read_latency=1, mem_write_latency=5),
    SATConfig(name="short-bursts", rows=4, cols=4, a_depth=64, b_depth=64, acc_depth=32, bus_bytes=8,
              max_burst_beats=2, queue_depth=1, imem_depth=256, mem_read_latency=6, mem_write_latency=3),
]


@pytest.mark.parametrize("cfg", VARIANTS, ids=[c.name for c in VARIANTS])
def test_amaranth_core_matches_simulator_on_other_configs(cfg):
    """Non-square arrays, narrow buses, short bursts, one-entry queues, other latencies: the same contract."""
    prog = gemm_program(cfg, 3, 17, 40, seed=7)
    memory = prog.memory.copy()
    expected = CoreModel(cfg).run(memory, prog.program_addr, prog.length)
    assert expected.ok
    assert_same(expected, memory, run_core_amaranth(cfg, prog.memory, prog.program_addr, prog.length))


@pytest.mark.slow
def test_amaranth_core_with_several_instructions_per_bus_beat():
    """A 256-bit bus carries two instructions per beat (the vcu1525 path: four); 16x16 array. About a minute."""
    cfg = SATConfig(name="bus32", rows=16, cols=16, a_depth=64, b_depth=64, acc_depth=64, bus_bytes=32,
                    max_burst_beats=4, queue_depth=2, imem_depth=256, mem_read_latency=5, mem_write_latency=2)
    prog = gemm_program(cfg, 20, 18, 9, seed=3)
    memory = prog.memory.copy()
    expected = CoreModel(cfg).run(memory, prog.program_addr, prog.length)
    assert expected.ok
    assert_same(expected, memory, run_core_amaranth(cfg, prog.memory, prog.program_addr, prog.length))
