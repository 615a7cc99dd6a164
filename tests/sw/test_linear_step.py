"""A BDWP training step of a linear layer on the simulator (pre-generation, sparse FF and BP on the forms,
dense WU into the master layout, the weight update and the next forms) against torch's ``BDWPLinear`` and SGD."""

import numpy as np
import pytest
import torch

from nmsat.dataflow.sparsify import read_form
from nmsat.dataflow.step import compile_linear_step
from nmsat.hw.config import SATConfig
from nmsat.hw.sparsity import compress
from nmsat.sim.core import CoreModel
from nmsat.sw.bdwp import BDWPLinear

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("n,m", [(2, 8), (1, 4)])
def test_one_step_matches_torch_bdwp_linear(n, m):
    cfg = SATConfig.tiny()
    rng = np.random.default_rng(n + m)
    cout, k, batch = 10, 21, 6
    w = rng.standard_normal((cout, k)).astype(np.float32)
    v = (rng.standard_normal((cout, k)) * 0.1).astype(np.float32)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    dy = rng.standard_normal((batch, cout)).astype(np.float32)
    step = compile_linear_step(cfg, w, v, x.T, dy.T, n, m, **HYPER)
    core = CoreModel(cfg)
    for reg, value in step.registers.items():
        core.write_csr(reg, value)
    memory = step.memory.copy()
    result = core.run_sequence(memory, step.runs)
    assert result.ok and result.race_free and all(result.busy[u] > 0 for u in result.busy)

    layer = BDWPLinear(k, cout, bias=False, n=n, m=m)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    xt = torch.from_numpy(x).requires_grad_(True)
    layer(xt).backward(torch.from_numpy(dy))
    y_ref = (layer.weight * layer.mask_ff).detach().numpy() @ x.T
    opt = torch.optim.SGD(layer.parameters(), **HYPER)
    opt.state[layer.weight]["momentum_buffer"] = torch.from_numpy(v.copy())
    opt.step()
    # bf16 operands: a few parts in a thousand of the largest value
    assert relative(step.y(memory), y_ref) < 1e-2
    assert relative(step.dx(memory), xt.grad.numpy().T) < 1e-2
    assert relative(step.weight(memory), layer.weight.detach().numpy()) < 1e-2
    assert relative(step.momentum(memory), opt.state[layer.weight]["momentum_buffer"].numpy()) < 1e-2
    # and the next step's forms are those of the new weights
    bits, idx = read_form(step.layout, memory, "FF")
    ref_bits, ref_idx = compress(step.weight(memory), n, m)
    assert (bits[0] == ref_bits).all() and (idx[0] == ref_idx).all()
