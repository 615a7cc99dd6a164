"""E2GC (``nmsat.sw.e2gc``, ``nmsat.dataflow.models``): constant-group-size convolutions, MobileNet-V1 and
ResNeXt-50 with E2GC and FgGC groupings, the FgGC twin at matched MACs, BDWP inside conv groups, the CLI."""

import pytest
import torch
from torch import nn

from nmsat.dataflow.models import GROUPED_MODELS, build_model, fggc_twin
from nmsat.sw.bdwp import BDWPConv2d, sparsify
from nmsat.sw.cli import main
from nmsat.sw.cost import count_training_macs
from nmsat.dataflow.models import group_count
from nmsat.sw.e2gc import DigitsGroupCNN, E2GCConv2d, mobilenet_v1, resnext50
from nmsat.sw.workload import module_work


def signature(layer):
    return (layer.kind, layer.sparse, layer.weights, layer.conv,
            [(g.stage, g.m, g.n, g.k, g.count) for g in layer.gemms], [(p.op, p.elements) for p in layer.passes])


def test_e2gc_conv_has_a_constant_group_size():
    for channels in (16, 64, 256):
        conv = E2GCConv2d(channels, channels, 3, group_size=8, padding=1)
        assert conv.groups == channels // 8 and conv.weight.shape == (channels, 8, 3, 3)
    assert E2GCConv2d(32, 32, 3, group_size=1).groups == 32  # depthwise
    with pytest.raises(ValueError, match="group size 3 does not divide 32"):
        E2GCConv2d(32, 32, 3, group_size=3)
    with pytest.raises(ValueError, match="exactly one"):
        group_count(32, 4, 8)
    with pytest.raises(ValueError, match="positive whole number"):
        group_count(32, groups=0)


@pytest.mark.parametrize("name,build,grouping", [
    ("mobilenet_v1", mobilenet_v1, {"group_size": 1, "groups": None}),
    ("mobilenet_v1", mobilenet_v1, {"group_size": None, "groups": 16}),
    ("resnext50", resnext50, {"group_size": None, "groups": 32}),
    ("resnext50", resnext50, {"group_size": 8, "groups": None}),
])
def test_the_torch_models_are_the_built_in_work(name, build, grouping):
    """The torch networks traced (``module_work``) give exactly the layers of the dataflow builders, and their
    MACs are the published ones: MobileNet-V1 569 M, ResNeXt-50 32×4d 4.23 G per 224 × 224 image."""
    torch.manual_seed(0)
    net = build(**grouping)
    work = module_work(net, torch.zeros(1, 3, 224, 224))
    assert work.unsupported == []
    ours = build_model(name, 1, **{k: v for k, v in grouping.items() if v is not None})
    assert [signature(x) for x in work.layers] == [signature(x) for x in ours]
    cost = count_training_macs(net, torch.zeros(1, 3, 224, 224))
    assert sum(x.dense_ff for x in cost.layers) == sum(g.macs for x in ours for g in x.gemms if g.stage == "FF")
    if grouping == {"group_size": 1, "groups": None}:
        assert round(sum(x.dense_ff for x in cost.layers) / 1e6) == 569
    if grouping == {"group_size": None, "groups": 32}:
        assert round(sum(x.dense_ff for x in cost.layers) / 1e7) == 423


def test_e2gc_layers_keep_their_group_size_and_fggc_layers_their_group_count():
    for name in GROUPED_MODELS:
        e2gc = [x.conv for x in build_model(name, 2, group_size=4) if x.conv is not None and x.conv.groups > 1]
        fggc = [x.conv for x in build_model(name, 2, groups=8) if x.conv is not None and x.conv.groups > 1]
        assert len(e2gc) == len(fggc) > 0
        assert {c.cin // c.groups for c in e2gc} == {4} and len({c.groups for c in e2gc}) > 1
        assert {c.groups for c in fggc} == {8} and len({c.cin // c.groups for c in fggc}) > 1


def test_the_fggc_twin_matches_the_macs_as_closely_as_a_power_of_two_allows():
    g, ratio = fggc_twin("resnext50", 8)
    assert g == 32 and 0.99 < ratio < 1.02  # ResNeXt-50 32x4d is the FgGC twin of E2GC G = 8
    for size in (1, 4, 8):
        g, ratio = fggc_twin("mobilenet_v1", size)
        e2gc = sum(t.macs for x in build_model("mobilenet_v1", 1, group_size=size) for t in x.gemms if t.stage == "FF")
        for other in (g // 2, g * 2):
            if other < 1 or 32 % other:
                continue
            macs = sum(t.macs for x in build_model("mobilenet_v1", 1, groups=other) for t in x.gemms
                       if t.stage == "FF")
            assert abs(macs / e2gc - 1) >= abs(ratio - 1)


def test_bdwp_prunes_inside_each_conv_group():
    """BDWP on an E2GC network: every grouped conv becomes a BDWPConv2d of the same groups whose FF mask keeps
    n of each m along the group's own K (C/g · 3 · 3), never across groups."""
    net = sparsify(DigitsGroupCNN(group_size=4), n=2, m=8)
    grouped = [x for x in net.modules() if isinstance(x, BDWPConv2d) and x.groups > 1]
    assert [x.groups for x in grouped] == [4, 8]
    for conv in grouped:
        conv(torch.randn(2, conv.in_channels, 6, 6))
        mask = conv.mask_ff  # [Cout, Cin/g, 3, 3]: per output row, K = Cin/g·9 = 36 in BDWP's order
        per_row = mask.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        k = per_row.shape[1]
        padded = torch.nn.functional.pad(per_row, (0, -k % 8)).reshape(conv.out_channels, -1, 8)
        assert k == conv.in_channels // conv.groups * 9 and (padded[:, : k // 8].sum(-1) == 2).all()


@pytest.mark.parametrize("args,message", [
    (["resnet18", "--e2gc", "4"], "apply to mobilenet_v1 and resnext50, not resnet18"),
    (["mobilenet_v1", "--e2gc", "3"], "--e2gc: group size 3 does not divide"),
    (["resnext50", "--e2gc", "4", "--fggc", "8"], "not both"),
    (["mobilenet_v1", "--fggc", "64"], "64 groups does not divide 32 channels"),
    (["mobilenet_v1", "--e2gc", "0"], "positive whole number"),
])
def test_cli_grouping_options_are_checked(args, message, capsys):
    assert main(["simulate", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
