"""The compiled timing worklist (``nmsat.sim.worklist``, numba) gives what the same function gives as Python.

Every cycle, status, error, error PC and counter of many programs — the fuzz
programs of every variant, serial and pipelined, and the compiler's dense,
sparse, sparsify, update, vector and chained programs — through both.
"""

import dataclasses

import numpy as np
import pytest
from random_programs import random_cases

from nmsat.dataflow.chain import compile_relu_mlp
from nmsat.dataflow.gemm import layout_gemm
from nmsat.dataflow.sparsify import compile_weight_update
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sim.worklist import COMPILED

TINY = SATConfig.tiny()


def same(a, b):
    a, b = dataclasses.asdict(a), dataclasses.asdict(b)
    return a == b


def test_numba_is_there():
    """The install brings numba (pyproject), so the simulator runs compiled."""
    assert COMPILED


def test_compiled_and_python_worklists_agree_on_random_programs():
    cfg = TINY
    fast, slow = CoreModel(cfg), CoreModel(cfg, compiled=False)
    for case in random_cases(cfg, seed=21, count=40):
        results = []
        for core in (fast, slow):
            memory = case.memory.copy()
            for reg, value in case.registers:
                core.write_csr(reg, value)
            results.append(core.run(memory, case.program_addr, case.program_len, serial=case.serial))
        assert same(*results), case.variant


def test_compiled_and_python_worklists_agree_on_compiled_programs():
    cfg = SATConfig.vcu1525()
    fast, slow = CoreModel(cfg), CoreModel(cfg, compiled=False)
    programs = [list(w) for g in (layout_gemm(cfg, 100, 300, 200), layout_gemm(cfg, 64, 200, 256, pattern=(2, 8)),
                                  layout_gemm(cfg, 64, 900, 27, out_bf16=True, relu=True)) for _, w in g.programs]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((70, 90)).astype(np.float32)
    programs.append(compile_weight_update(cfg, w, w, w, 2, 8, lr=0.1).words)
    programs.append(compile_relu_mlp(cfg, *(rng.standard_normal(s).astype(np.float32)
                                            for s in ((40, 50), (30, 40), (50, 60), (30, 60)))).words)
    for words in programs:
        for serial in (False, True):
            assert same(fast.time_program(words, serial=serial), slow.time_program(words, serial=serial))
