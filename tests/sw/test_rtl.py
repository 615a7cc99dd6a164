"""The Verilator runner: concurrent runs keep to themselves, nothing piles up in the build cache."""

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from nmsat.dataflow.gemm import compile_gemm, read_c
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()

pytestmark = pytest.mark.skipif(not (shutil.which("make") and (shutil.which("c++") or shutil.which("g++"))),
                                reason="Verilator needs make and a C++ compiler, and this machine has none")

SCRIPT = """
import sys, numpy as np
from nmsat.dataflow.gemm import compile_gemm, read_c
from nmsat.hw.config import SATConfig
from nmsat.sw.rtl import RtlJob, run_programs
cfg = SATConfig.tiny()
seed = int(sys.argv[1])
rng = np.random.default_rng(seed)
prog = compile_gemm(cfg, rng.standard_normal((8, 24)).astype(np.float32), rng.standard_normal((24, 8)).astype(np.float32))
(result,) = run_programs(cfg, [RtlJob(prog.memory, prog.program_addr, prog.length)])
np.save(sys.argv[2], read_c(prog, result.memory))
"""


def expected_c(seed):
    rng = np.random.default_rng(seed)
    prog = compile_gemm(TINY, rng.standard_normal((8, 24)).astype(np.float32), rng.standard_normal((24, 8)).astype(np.float32))
    memory = prog.memory.copy()
    assert CoreModel(TINY).run(memory, prog.program_addr, prog.length).ok
    return read_c(prog, memory)


def test_concurrent_runs_in_two_processes_get_their_own_results(tmp_path):
    from nmsat.sw.rtl import _build, build_dir_root

    _build(TINY)  # built once, so both processes race on running, not building
    before = sorted(p.name for p in build_dir_root().iterdir())
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(seed), str(tmp_path / f"c{seed}.npy")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (1, 2)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-2000:]
    for seed in (1, 2):
        assert np.array_equal(np.load(tmp_path / f"c{seed}.npy"), expected_c(seed))
    assert sorted(p.name for p in build_dir_root().iterdir()) == before  # no job files left in the cache


def test_concurrent_runs_in_two_threads_get_their_own_results():
    from nmsat.sw.rtl import RtlJob, run_programs

    out = {}

    def work(seed):
        rng = np.random.default_rng(seed)
        prog = compile_gemm(TINY, rng.standard_normal((8, 24)).astype(np.float32),
                            rng.standard_normal((24, 8)).astype(np.float32))
        (result,) = run_programs(TINY, [RtlJob(prog.memory, prog.program_addr, prog.length)])
        out[seed] = read_c(prog, result.memory)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for seed in (3, 4):
        assert np.array_equal(out[seed], expected_c(seed))


def test_bad_jobs_are_refused_before_the_bench_starts():
    from nmsat.sw.rtl import RtlJob, run_programs

    with pytest.raises(TypeError, match="job 0: memory must be a 1-D numpy uint8 array"):
        run_programs(TINY, [RtlJob(np.zeros(16, dtype=np.float32), 0, 1)])
    with pytest.raises(ValueError, match="memory_model must be"):
        run_programs(TINY, [], memory_model="ddr")
    with pytest.raises(ValueError, match="max_cycles must be >= 1"):
        run_programs(TINY, [RtlJob(np.zeros(16, dtype=np.uint8), 0, 1, max_cycles=0)])


def test_build_dir_holds_builds_and_locks_only():
    from nmsat.sw.rtl import build_dir_root

    root = build_dir_root()
    if root.is_dir():
        names = [p for p in Path(root).iterdir()]
        assert all(p.name.startswith(("verilator-", "device-")) for p in names), names  # cocotb bench, C++ harness
