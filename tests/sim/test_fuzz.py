"""Fuzzing the simulator with random race-free programs that carry one fault each (``random_programs``).

The simulator must end every run quickly with the error the fault aims at,
at the faulty instruction, find no race in a race-free program, and reach
every error code.  A sample of the same programs runs through the RTL in
``tests/equiv`` and must match there in everything.
"""

import time

import numpy as np
import pytest
from random_programs import AIMED, VARIANTS, random_cases

from nmsat.hw.config import SATConfig
from nmsat.hw.isa import ErrorCode, Status
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()
SMALL = SATConfig(name="small", rows=2, cols=8, a_depth=64, b_depth=64, acc_depth=32, bus_bytes=4, max_burst_beats=8,
                  queue_depth=2, imem_depth=512, mem_read_latency=3, mem_write_latency=1)
#: a run of these programs takes milliseconds; this bounds the worst one with a wide margin for a busy machine
SECONDS_PER_RUN = 2.0


@pytest.mark.parametrize("cfg", [TINY, SMALL], ids=["tiny", "small"])
def test_fuzz_reaches_every_error_code_quickly_and_as_aimed(cfg):
    core = CoreModel(cfg)  # one core: buffers carry over from run to run, as on the device
    CoreModel(cfg).run(*_warm_up(cfg))  # the first run loads (or compiles) the simulator's kernels: not timed
    reached = set()
    for i, case in enumerate(random_cases(cfg, seed=11, count=400)):
        memory = case.memory.copy()
        for reg, value in case.registers:
            core.write_csr(reg, value)
        t0 = time.perf_counter()
        result = core.run(memory, case.program_addr, case.program_len, serial=case.serial)
        assert time.perf_counter() - t0 < SECONDS_PER_RUN, f"case {i} ({case.variant}) ran too long"
        what = f"case {i} ({case.variant})"
        assert result.race_free, (what, [str(h) for h in result.hazards[:3]])
        assert result.error is AIMED[case.variant], (what, result.error)
        assert (result.status is Status.DONE) == (result.error is ErrorCode.NONE)
        if case.fault_pc is not None and case.variant != "deadlock":  # a deadlock names the waiting instruction
            assert result.error_pc == case.fault_pc, what
        assert result.executed <= result.instructions
        if result.error is not ErrorCode.NONE:
            assert result.gemm_macs == 0
        reached.add(result.error)
    assert reached == set(ErrorCode)


def _warm_up(cfg):
    case = random_cases(cfg, seed=99, count=1)[0]
    return case.memory.copy(), case.program_addr, case.program_len


def test_fuzz_programs_are_deterministic_for_a_seed():
    first, second = random_cases(TINY, seed=3, count=len(VARIANTS)), random_cases(TINY, seed=3, count=len(VARIANTS))
    assert [c.variant for c in first] == list(VARIANTS)
    assert all(np.array_equal(a.memory, b.memory) and a.program_len == b.program_len for a, b in zip(first, second))


def test_an_error_leaves_the_effects_of_started_instructions_only():
    """Timing-only and full runs agree; the memory after an error differs from the input only where the
    STOREs that started wrote (every variant, many programs)."""
    for case in random_cases(TINY, seed=5, count=120):
        memory = case.memory.copy()
        full = CoreModel(TINY).run(memory, case.program_addr, case.program_len, serial=case.serial)
        timing = CoreModel(TINY).run(case.memory.copy(), case.program_addr, case.program_len, serial=case.serial,
                                     numerics=False)
        assert (full.status, full.error, full.error_pc, full.cycles) == \
            (timing.status, timing.error, timing.error_pc, timing.cycles)
        if full.executed == 0:
            assert np.array_equal(memory, case.memory)


@pytest.mark.parametrize("cfg", [TINY, SMALL], ids=["tiny", "small"])
def test_random_programs_are_race_free_over_many_seeds(cfg):
    """The generator's promise, over more seeds than the fuzz test (a straddling LOAD once read bytes a
    STORE wrote, and a range fault once asked for more IDX rows than the small config has)."""
    core = CoreModel(cfg)
    for seed in range(40):
        for case in random_cases(cfg, seed=seed, count=60):
            result = core.run(case.memory.copy(), case.program_addr, case.program_len, serial=case.serial,
                              numerics=False)
            assert result.race_free, (seed, case.variant, [str(h) for h in result.hazards[:2]])
