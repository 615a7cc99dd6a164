"""The PyTorch offload backend: BDWP training steps through the sim and rtl targets are bit-identical to each
other and match the reference within bf16 tolerance; the custom ops pass torch's own checks (fake kernels,
autograd registration); layers left on the CPU are named; a missing card is a clear error."""

import copy
import shutil

import pytest
import torch
from torch import nn

from nmsat.sw.backend import TARGETS, offload
from nmsat.sw.bdwp import sparsify
from nmsat.sw.transports.xdma import CardMissing


def small_cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(16 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))
    return sparsify(net, 2, 8)


def train(model, steps, seed=1):
    """``steps`` SGD steps (momentum, weight decay) on fixed random batches; the losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 4, 8, 8, generator=gen)
        y = torch.randint(0, 4, (4,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def needs_cxx():
    if not (shutil.which("g++") or shutil.which("c++")) or not shutil.which("make"):
        pytest.skip("the rtl target needs make and a C++ compiler")


@pytest.fixture(scope="module")
def trained():
    needs_cxx()
    base = small_cnn()
    out = {"init": copy.deepcopy(base).state_dict()}
    for target in ("reference", "sim", "rtl"):
        model = copy.deepcopy(base)
        with pytest.warns(UserWarning, match=r"stay on the CPU: 1 \(BatchNorm2d\)"):
            session = offload(model, target)
        out[target] = (model, train(model, 3), session)
    plain = copy.deepcopy(base)
    out["bdwp"] = (plain, train(plain, 3), None)
    return out


def test_sim_and_rtl_train_bit_identically(trained):
    sim, rtl = trained["sim"], trained["rtl"]
    assert sim[1] == rtl[1]
    for a, b in zip(sim[0].state_dict().values(), rtl[0].state_dict().values()):
        assert torch.equal(a, b)
    assert dict(sim[2].cycles) == dict(rtl[2].cycles)  # and cycle for cycle


def test_the_targets_match_the_bdwp_reference_within_bf16_tolerance(trained):
    """The losses to 1e-3; every tensor of the state within 0.2% of its norm, or (those that start at zero or
    barely move, as batch norm's bias) its three updates within 15%: operands rounded to bf16 in every GEMM."""
    reference, bdwp, init = trained["reference"], trained["bdwp"], trained["init"]
    assert reference[1] == pytest.approx(bdwp[1], rel=1e-5)  # the reference target is BDWP's semantics
    for (name, a), b in zip(reference[0].state_dict().items(), bdwp[0].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7), name
    for target in ("sim", "rtl"):
        model, losses, _ = trained[target]
        assert losses == pytest.approx(bdwp[1], rel=1e-3), target
        for (name, a), b in zip(model.state_dict().items(), bdwp[0].state_dict().values()):
            if a.dtype.is_floating_point:
                error = (a - b).norm()
                assert error <= max(2e-3 * b.norm(), 0.15 * (b - init[name]).norm()), (target, name, error)


def test_per_layer_cycles_after_a_step(trained):
    _, _, session = trained["sim"]
    cycles = dict(session.cycles)
    assert set(cycles) == {"0", "3", "5", "8", "10"}
    assert cycles["0"]["BP"] == 0 and cycles["0"]["FF"] > 0 and cycles["0"]["WU"] > 0  # the input needs no dX
    assert all(c["FF"] > 0 and c["BP"] > 0 and c["WU"] > 0 for name, c in cycles.items() if name != "0")
    assert "total" in session.table()


def test_the_custom_ops_pass_torch_opcheck():
    model = sparsify(nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)), 2, 8)
    session = offload(model, "reference")
    x = torch.randn(3, 16, requires_grad=True)
    w = torch.randn(16, 16, requires_grad=True)
    torch.library.opcheck(torch.ops.nmsat.linear_ff.default, (x, w, 2, 8, 0.0, session.key, "1"))
    xc = torch.randn(2, 8, 6, 6, requires_grad=True)
    wc = torch.randn(8, 8, 3, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.nmsat.conv_ff.default, (xc, wc, 2, 8, 0.0, [1, 1], [1, 1], [1, 1], session.key, "c"))


def test_torch_compile_traces_an_offloaded_model():
    model = sparsify(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)), 2, 8)
    offload(model, "sim")
    x = torch.randn(5, 16)
    eager = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), eager)


def test_grouped_convolutions_stay_on_the_cpu_named_in_one_warning():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 8, 1))
    with pytest.warns(UserWarning, match=r"0 \(Conv2d: groups=2\)") as record:
        offload(model, "sim")
    assert len(record) == 1
    assert type(model[0]) is nn.Conv2d and type(model[1]).__name__ == "OffloadedConv2d"


def test_fpga_without_a_card_and_unknown_targets_are_clear_errors():
    import os

    if os.path.exists("/dev/xdma0_user"):
        pytest.skip("a card is present")
    with pytest.raises(CardMissing, match="/dev/xdma0_user"):
        offload(nn.Linear(4, 4), "fpga")
    with pytest.raises(ValueError, match=", ".join(TARGETS)):
        offload(nn.Linear(4, 4), "gpu")


def test_what_offload_cannot_swap_is_said():
    with pytest.raises(ValueError, match="single layer"):
        offload(nn.Linear(8, 4), "reference")
    from nmsat.sw.bdwp import BDWPLinear

    model = nn.Sequential(nn.Linear(8, 8), BDWPLinear(8, 8, mask_interval=10), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"1 \(BDWPLinear: mask_interval=10"):
        session = offload(model, "reference")
    assert type(model[1]) is BDWPLinear  # its masks live for ten steps: it stays as it is
    session.close()
    with pytest.raises(ValueError, match="closed or unknown"):
        model(torch.zeros(2, 8))
