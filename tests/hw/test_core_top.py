"""The core's top level, piece by piece: the choice of the first error among those raised in one cycle."""

import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from nmsat.hw.core.common import PC_BITS
from nmsat.hw.core.top import first_error
from nmsat.hw.isa import ErrorCode


def test_first_error_takes_the_lowest_code_then_the_earliest_candidate():
    """Random sets of raised candidates (fixed and signal-valued codes, as the core has them): the pairwise
    choice picks what the simulator's rule picks, the lowest code and among equal codes the earliest."""
    rng = np.random.default_rng(4)
    fixed = [ErrorCode.AXI_ERROR, ErrorCode.DEADLOCK, ErrorCode.TOKEN_OVERFLOW, ErrorCode.AXI_ERROR, None,
             ErrorCode.DRAM_RANGE, ErrorCode.TOKEN_OVERFLOW, None, ErrorCode.AXI_ERROR, ErrorCode.PROGRAM_TOO_LONG,
             ErrorCode.TOKEN_OVERFLOW]
    m = Module()
    conds = [Signal(name=f"cond_{i}") for i in range(len(fixed))]
    pcs = [Signal(PC_BITS, name=f"pc_{i}") for i in range(len(fixed))]
    codes = [code if code is not None else Signal(ErrorCode, name=f"code_{i}") for i, code in enumerate(fixed)]
    raised, code, pc = first_error(m, list(zip(codes, conds, pcs)))
    trials = []

    async def bench(ctx):
        for _ in range(400):
            on = rng.random(len(fixed)) < rng.choice([0.1, 0.3, 0.6])
            values = [ErrorCode(int(rng.choice([1, 2, 3, 4, 5, 6, 7]))) if c is None else c for c in fixed]
            for i in range(len(fixed)):
                ctx.set(conds[i], int(on[i]))
                ctx.set(pcs[i], 100 + i)
                if fixed[i] is None:
                    ctx.set(codes[i], values[i])
            await ctx.delay(1e-9)
            trials.append((on, values, ctx.get(raised), ctx.get(code), ctx.get(pc)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    seen_ties = 0
    for on, values, got_raised, got_code, got_pc in trials:
        assert got_raised == on.any()
        if on.any():
            best = min((values[i].value, i) for i in np.flatnonzero(on))
            assert (ErrorCode(got_code).value, got_pc) == (best[0], 100 + best[1]), (on, values)
            seen_ties += sum(values[i].value == best[0] for i in np.flatnonzero(on)) > 1
    assert seen_ties > 20  # the tie-break was exercised
