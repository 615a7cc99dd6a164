"""A small residual CNN's BDWP training iteration with its convolutions (kernel walks), GEMMs, residual add,
ReLU gradients and weight updates on the simulator (``nmsat.sw.cnn_step``), against the same network in
torch (``SmallCNN``: ``BDWPConv2d`` and SGD): the loss, the gradients and momenta after one step, and the loss
curve over ten steps.  Activations between programs are bf16 and torch's are fp32, and a ReLU whose input
is near zero can fall either side, so the comparison is to bf16 accuracy over whole tensors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nmsat.hw.config import SATConfig
from nmsat.sw.cnn_step import NAMES, CnnState, SmallCNN, cnn_iteration, sim_runner

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def problem(batch, seed=0):
    torch.manual_seed(seed)
    model = SmallCNN()
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, batch)
    centres = rng.standard_normal((4, 8, 6, 6)).astype(np.float32)
    x = (rng.standard_normal((batch, 8, 6, 6)) * 0.5 + centres[labels]).astype(np.float32)
    state = CnnState({k: getattr(model, k).weight.detach().numpy().copy() for k in NAMES},
                     {k: np.zeros_like(getattr(model, k).weight.detach().numpy()) for k in NAMES})
    return model, x, labels, state


def torch_step(model, opt, x, labels):
    opt.zero_grad()
    loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(labels))
    loss.backward()
    grads = {k: getattr(model, k).weight.grad.numpy().copy() for k in NAMES}
    opt.step()
    return loss.item(), grads


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_one_iteration_on_the_simulator_is_the_torch_step():
    cfg = SATConfig.tiny()
    model, x, labels, state = problem(16)
    opt = torch.optim.SGD([getattr(model, k).weight for k in NAMES], **HYPER)
    jobs = []
    result = cnn_iteration(cfg, state, x, labels, sim_runner(cfg, jobs), **HYPER)
    loss, grads = torch_step(model, opt, x, labels)
    assert abs(result.loss - loss) <= 1e-3 * loss
    for k in NAMES:
        p = getattr(model, k).weight
        assert rel(result.grads[k], grads[k]) < 0.08, k
        assert rel(result.state.momenta[k], opt.state[p]["momentum_buffer"].numpy()) < 0.08, k
        step = np.abs(opt.state[p]["momentum_buffer"].numpy()).max() * HYPER["lr"]
        assert np.abs(result.state.weights[k] - p.detach().numpy()).max() < 0.1 * step, k
    # what ran where: every convolution direction, GEMM, vector op and update is a program
    names = [job.name for job, _, _ in jobs]
    assert {"conv1 FF", "conv2 FF", "conv3 FF", "conv3 BP", "conv2 BP", "conv1 WU", "fc FF", "fc BP", "fc WU",
            "bn1 stats", "bn1 apply", "bn2 apply", "bn2 grad stats", "bn1 grad apply", "fork grad add",
            "conv1 relu grad", "conv3 update"} <= set(names)
    assert "conv1 BP" not in names  # the input needs no gradient


def test_ten_iterations_on_the_simulator_follow_the_torch_loss_curve():
    cfg = SATConfig.tiny()
    model, x, labels, state = problem(16, seed=1)
    opt = torch.optim.SGD([getattr(model, k).weight for k in NAMES], **HYPER)
    run = sim_runner(cfg)
    first = None
    for _ in range(10):
        result = cnn_iteration(cfg, state, x, labels, run, **HYPER)
        loss, _ = torch_step(model, opt, x, labels)
        first = first or loss
        assert abs(result.loss - loss) <= 0.02 * first
        state = result.state
    assert result.loss < 0.8 * first  # it learns
