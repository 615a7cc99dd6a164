"""The MAC counter against hand-computed layer costs."""

import pytest
import torch
import torch.nn as nn

from nmsat.sw.bdwp import BDWPConv2d, BDWPLinear, sparsify
from nmsat.sw.cost import count_training_macs


def test_all_sparse_2_8_gives_the_ideal_2x():
    model = nn.Sequential(BDWPConv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), BDWPLinear(32 * 4 * 4, 64))
    x = torch.randn(4, 16, 4, 4, requires_grad=True)  # input needs a gradient: BP counted everywhere
    report = count_training_macs(model, x)
    conv, fc = report.layers
    positions = 4 * 4 * 4
    assert conv.dense_ff == conv.dense_bp == conv.dense_wu == positions * 32 * 16 * 9
    assert conv.bdwp_ff == conv.bdwp_bp == conv.dense_ff // 4 and conv.bdwp_wu == conv.dense_wu
    assert fc.dense_ff == 4 * 64 * 512 and fc.bdwp_ff == fc.dense_ff // 4
    assert report.ideal_speedup == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("n,m,bound", [(1, 8, 3 / (1 / 8 + 1 / 8 + 1)), (4, 8, 3 / 2), (2, 4, 3 / 2)])
def test_speedup_formula(n, m, bound):
    model = nn.Sequential(BDWPLinear(64, 64, n=n, m=m))
    report = count_training_macs(model, torch.randn(8, 64, requires_grad=True))
    assert report.ideal_speedup == pytest.approx(bound)


def test_first_layer_has_no_bp_and_dense_layers_cost_the_same():
    model = sparsify(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                                   nn.Linear(8 * 2 * 2, 10)), 2, 8)
    report = count_training_macs(model, torch.randn(2, 3, 6, 6))
    first, middle, last = report.layers
    assert first.pattern == "dense" and first.dense_bp == first.bdwp_bp == 0
    assert middle.pattern == "2:8" and middle.bdwp_ff == middle.dense_ff // 4
    assert last.dense_total == last.bdwp_total
    assert 1.0 < report.ideal_speedup < 2.0
    assert "total" in report.table()


def test_ragged_groups_count_kept_weights():
    layer = BDWPLinear(12, 8)  # K = 12 = 8 + 4: 2 + 2 kept per row; Cout = 8: 2 kept per column
    report = count_training_macs(nn.Sequential(layer), torch.randn(1, 12, requires_grad=True))
    (c,) = report.layers
    assert c.bdwp_ff == 8 * 4 and c.bdwp_bp == 12 * 2 and c.dense_ff == 96


def test_counting_has_no_side_effects_and_needs_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    stats = model[1].running_mean.clone()
    count_training_macs(model.train(), torch.randn(8, 4) + 5)
    assert model.training and torch.equal(model[1].running_mean, stats)
    with pytest.raises(ValueError, match="ran no nn.Linear or nn.Conv2d"):
        count_training_macs(nn.Sequential(nn.ReLU()), torch.randn(2, 2))
