"""The weight-update engine on the simulator against torch's SGD (momentum, weight decay), and the forms the
sparsifier writes right after it (pre-generation) against BDWP's masks of the new weights."""

import numpy as np
import pytest
import torch

from nmsat.dataflow.sparsify import compile_weight_update, read_form, read_master
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Csr
from nmsat.sim.core import CoreModel
from nmsat.sim.numerics import sgd_update
from nmsat.sw.bdwp import bp_mask, ff_mask

HYPER = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)


def torch_steps(w, v, grads, **hyper):
    param = torch.nn.Parameter(torch.from_numpy(w.copy()))
    opt = torch.optim.SGD([param], lr=hyper["lr"], momentum=hyper["momentum"], weight_decay=hyper["weight_decay"])
    opt.state[param]["momentum_buffer"] = torch.from_numpy(v.copy())
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        opt.step()
    return param.detach().numpy(), opt.state[param]["momentum_buffer"].numpy()


def run_update(cfg, w, v, g, n=2, m=8, **hyper):
    program = compile_weight_update(cfg, w, v, g, n, m, **hyper)
    core = CoreModel(cfg)
    for reg, value in program.registers.items():
        core.write_csr(reg, value)
    memory = program.memory.copy()
    result = core.run(memory, program.program_addr, program.length)
    assert result.ok and result.race_free and result.busy["sparsify"] > 0
    return program, memory


def test_one_update_is_torch_sgd():
    rng = np.random.default_rng(0)
    w, v, g = (rng.standard_normal((12, 37)).astype(np.float32) * s for s in (1.0, 0.1, 1.0))
    program, memory = run_update(SATConfig.tiny(), w, v, g, **HYPER)
    w_ref, v_ref = torch_steps(w, v, [g], **HYPER)
    w_new, v_new = read_master(program.layout, memory), read_master(program.layout, memory, program.v_addr)
    assert np.array_equal(v_new, v_ref)  # g + λw, then μv + d: the same two roundings as torch's
    assert np.allclose(w_new, w_ref, rtol=2e-7, atol=1e-7)  # torch fuses w − η·v (add with alpha)
    assert not np.array_equal(w_new, w)


def test_ten_updates_track_torch_sgd():
    rng = np.random.default_rng(1)
    w, v = rng.standard_normal((8, 16)).astype(np.float32), np.zeros((8, 16), np.float32)
    grads = [rng.standard_normal((8, 16)).astype(np.float32) for _ in range(10)]
    lr, mu, wd = (np.float32(HYPER[k]) for k in ("lr", "momentum", "weight_decay"))
    ours_w, ours_v = w, v
    for g in grads:
        ours_w, ours_v = sgd_update(ours_w, ours_v, g, lr, mu, wd)
    w_ref, _ = torch_steps(w, v, grads, **HYPER)
    assert np.allclose(ours_w, w_ref, rtol=1e-5, atol=1e-6)


def test_the_forms_written_after_the_update_are_the_new_weights_masks():
    rng = np.random.default_rng(2)
    w, v, g = (rng.standard_normal((9, 20)).astype(np.float32) for _ in range(3))
    program, memory = run_update(SATConfig.tiny(), w, v, g, n=2, m=4, **HYPER)
    w_new = torch.from_numpy(read_master(program.layout, memory))
    for direction, mask in (("FF", ff_mask(w_new, 2, 4)), ("BP", bp_mask(w_new, 2, 4).T)):
        bits, idx = read_form(program.layout, memory, direction)
        lanes, length = mask.shape
        position = np.repeat(np.arange(-(-length // 4)), 2) * 4 + idx[0]
        kept = np.zeros((lanes, -(-length // 4) * 4), dtype=bool)
        np.put_along_axis(kept, position, position < length, axis=1)
        assert (kept[:, :length] == mask.numpy()).all(), direction


def test_registers_are_checked():
    core = CoreModel(SATConfig.tiny())
    with pytest.raises(ValueError, match="not a register instructions read"):
        core.write_csr(Csr.PROGRAM_LEN, 3)
    with pytest.raises(ValueError, match="32-bit"):
        core.write_csr(Csr.LR, 1 << 32)
