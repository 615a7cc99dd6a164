"""The vector unit's element functions (VECTOR, on the simulator) against PyTorch's own operators.

What a training iteration needs between its GEMMs: a residual add (``x + y``,
bf16 activations), ReLU's backward (``threshold_backward``: the gradient where
the forward output is positive), products, and ``maximum`` (max pooling).  The
core's rule reads subnormals as zeros, so the inputs here are normal numbers,
zeros, infinities and NaNs (rule and torch agree on those); the subnormal and
canonical-NaN cases of the rule are checked bit for bit against the RTL in
``tests/equiv``.
"""

import numpy as np
import pytest
import torch

from nmsat.dataflow.vector import compile_vector, read_array
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import VectorFunc
from nmsat.sim.core import CoreModel

TORCH = {VectorFunc.ADD: torch.add, VectorFunc.SUB: torch.sub, VectorFunc.MUL: torch.mul, VectorFunc.MAX: torch.maximum,
         VectorFunc.RELU_GRAD: lambda dy, y: torch.ops.aten.threshold_backward(dy, y, 0.0)}


def operands(n, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, generator=g) * 3, torch.randn(n, generator=g) * 3
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.0])
    x[:6], y[3:9] = special, special
    y[10:20] = x[10:20]  # ties
    return x.to(dtype), y.to(dtype)


def run(cfg, func, x, y, in_place=None):
    view = torch.int16 if x.dtype == torch.bfloat16 else torch.int32
    host = np.uint16 if x.dtype == torch.bfloat16 else np.uint32
    prog = compile_vector(cfg, func, x.view(view).numpy().view(host), y.view(view).numpy().view(host), in_place=in_place)
    memory = prog.memory.copy()
    result = CoreModel(cfg).run(memory, prog.program_addr, prog.length)
    assert result.ok and result.race_free
    return torch.from_numpy(read_array(prog, memory).view(np.int16 if host is np.uint16 else np.int32)).view(x.dtype)


@pytest.mark.parametrize("cfg", [SATConfig.tiny(), SATConfig.vcu1525()], ids=["tiny", "vcu1525"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("func", list(VectorFunc), ids=lambda f: f.name)
def test_vector_matches_torch(cfg, dtype, func):
    x, y = operands(1000 + 37 * func.value, seed=func.value, dtype=dtype)
    z = run(cfg, func, x, y, in_place="x" if func is VectorFunc.ADD else None)
    expected = TORCH[func](x, y)
    nan = expected.isnan()
    assert torch.equal(z.isnan(), nan)
    # bit for bit where not NaN (the rule makes every NaN canonical; torch keeps payloads)
    assert torch.equal(z[~nan], expected[~nan]) and torch.equal(z[~nan].signbit(), expected[~nan].signbit())


def test_vector_timing_is_the_stream_rule():
    """Cycles of a VECTOR alone: the schedule of nmsat.hw.timing.stream_cycles (two arrays read, one written)."""
    from nmsat.hw.timing import VECTOR_STREAMS, stream_cycles
    cfg = SATConfig.tiny()
    x, y = operands(333, seed=1, dtype=torch.float32)
    view = x.view(torch.int32).numpy().view(np.uint32)
    prog = compile_vector(cfg, VectorFunc.ADD, view, y.view(torch.int32).numpy().view(np.uint32))
    beats = -(-333 * 4 // cfg.bus_bytes)
    # dispatch (fetch of the program first) aside, the run lasts the VECTOR's busy cycles
    alone = CoreModel(cfg).time_program(prog.words)
    assert alone.busy["sparsify"] == stream_cycles(cfg, beats, VECTOR_STREAMS)[2] + 1
