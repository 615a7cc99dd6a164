"""Ten BDWP training steps of a two-layer ReLU MLP with every GEMM and weight update on the simulator, against
the same steps in torch (``nmsat.sw.bdwp.BDWPLinear`` and SGD): the loss curve and the final weights.

Per step and layer, ``nmsat.dataflow.step.compile_linear_step`` (pre-generation of the forms, sparse FF
and BP on them, dense WU, WEIGHT_UPDATE and the next forms).  Between the layers the host does what the
vector unit does not yet in this flow: ReLU (its forward, which a STORE can fuse), its gradient, and the
softmax cross-entropy loss and its gradient.  The operands are bf16 on the accelerator and fp32 in torch, so
the curves agree to bf16 accuracy, not bit for bit.
"""

import numpy as np
import pytest
import torch

from nmsat.dataflow.step import compile_linear_step
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.bdwp import BDWPLinear

HYPER = dict(lr=0.2, momentum=0.9, weight_decay=5e-4)
K, HIDDEN, CLASSES, BATCH, STEPS = 16, 12, 4, 24, 10


def run_layer(cfg, core, w, v, x, dy, n, m, whole=True):
    """One layer's programs on the simulator: (y, dx, new w, new v); FF only (pre-generation, FF) unless whole."""
    step = compile_linear_step(cfg, w, v, x, dy, n, m, **HYPER)
    for reg, value in step.registers.items():
        core.write_csr(reg, value)
    memory = step.memory.copy()
    result = core.run_sequence(memory, step.runs if whole else step.runs[:2])
    assert result.ok and result.race_free
    return step.y(memory), step.dx(memory), step.weight(memory), step.momentum(memory)


def softmax_ce(logits, labels):
    """Mean softmax cross-entropy over the columns (samples) of ``logits`` [classes, batch], and its gradient."""
    z = logits - logits.max(axis=0, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=0, keepdims=True)
    loss = float(-np.log(p[labels, np.arange(labels.size)]).mean())
    grad = p.copy()
    grad[labels, np.arange(labels.size)] -= 1.0
    return loss, (grad / labels.size).astype(np.float32)


@pytest.mark.parametrize("n,m", [(2, 8), (2, 4)])
def test_ten_steps_on_the_simulator_follow_torch(n, m):
    cfg = SATConfig.tiny()
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((CLASSES, K)).astype(np.float32) * 2
    labels = rng.integers(0, CLASSES, BATCH)
    x = (centres[labels] + rng.standard_normal((BATCH, K))).astype(np.float32)  # [batch, K]
    w1 = (rng.standard_normal((HIDDEN, K)) / np.sqrt(K)).astype(np.float32)
    w2 = (rng.standard_normal((CLASSES, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)

    # torch: the same network, BDWP on both layers, SGD with momentum and weight decay
    l1, l2 = BDWPLinear(K, HIDDEN, bias=False, n=n, m=m), BDWPLinear(HIDDEN, CLASSES, bias=False, n=n, m=m)
    with torch.no_grad():
        l1.weight.copy_(torch.from_numpy(w1))
        l2.weight.copy_(torch.from_numpy(w2))
    opt = torch.optim.SGD([l1.weight, l2.weight], **HYPER)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    torch_losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(l2(torch.relu(l1(xt))), yt)
        loss.backward()
        opt.step()
        torch_losses.append(float(loss.detach()))

    # the accelerator (simulated): every GEMM and update there, the ReLU and the loss on the host
    core = CoreModel(cfg)
    v1, v2 = np.zeros_like(w1), np.zeros_like(w2)
    sim_losses = []
    for _ in range(STEPS):
        pre, _, _, _ = run_layer(cfg, core, w1, v1, x.T, np.zeros((HIDDEN, BATCH), np.float32), n, m, whole=False)
        h = np.maximum(pre, 0).astype(np.float32)
        logits, _, _, _ = run_layer(cfg, core, w2, v2, h, np.zeros((CLASSES, BATCH), np.float32), n, m, whole=False)
        loss, dlogits = softmax_ce(logits, labels)
        sim_losses.append(loss)
        _, dh, w2, v2 = run_layer(cfg, core, w2, v2, h, dlogits, n, m)
        _, _, w1, v1 = run_layer(cfg, core, w1, v1, x.T, (dh * (pre > 0)).astype(np.float32), n, m)

    torch_losses, sim_losses = np.array(torch_losses), np.array(sim_losses)
    print("torch", np.round(torch_losses, 4), "simulator", np.round(sim_losses, 4))
    assert torch_losses[-1] < 0.7 * torch_losses[0]  # it trains
    assert np.abs(sim_losses - torch_losses).max() < 0.01 * torch_losses[0]  # and the curves agree (bf16)
    for mine, layer in ((w1, l1), (w2, l2)):
        ref = layer.weight.detach().numpy()
        assert np.abs(mine - ref).max() < 0.03 * np.abs(ref).max()
