"""A model's iteration work (``nmsat.dataflow.models``) and its cycles (``nmsat.sw.iteration``).

The built-in models' GEMM shapes are checked against torch definitions of the
same networks written here (MACs of every conv and linear layer, FF/BP/WU, by
``nmsat.sw.cost``); the vector passes a VECTOR function runs are charged what
the simulator says those VECTORs take; BDWP at 2:8 makes the GEMMs faster and
leaves the vector work alone.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn

from nmsat.dataflow.models import VGG16, VectorPass, build_model
from nmsat.dataflow.norm import norm_programs
from nmsat.dataflow.vector import array_bytes, vector_instructions
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Opcode, VectorFunc, encode
from nmsat.sim.core import CoreModel
from nmsat.sw.cost import count_training_macs
from nmsat.sw.iteration import HIDE_SHARE, Timer, pass_cycles, time_iteration


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(y + (self.down(x) if self.down is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride, first):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.down = nn.Conv2d(cin, 4 * width, 1, stride, bias=False) if first else None

    def forward(self, x):
        y = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return torch.relu(y + (self.down(x) if self.down is not None else x))


def torch_resnet18():
    blocks, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False)], 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            blocks.append(Basic(cin, cout, 2 if stage and not block else 1))
            cin = cout
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def torch_vgg16():
    layers, cin = [], 3
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU()]
            cin = item
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))


def torch_resnet50():
    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)], 64
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
        for block in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if stage and not block else 1, block == 0))
            cin = 4 * width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


@pytest.mark.parametrize("name,model,size", [("resnet18", torch_resnet18, 32), ("vgg16", torch_vgg16, 32),
                                             ("resnet50", torch_resnet50, 224)])
def test_model_gemms_have_the_macs_of_the_torch_network(name, model, size):
    batch = 2
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, requires_grad=False)
    cost = count_training_macs(model(), x)
    ours = [layer for layer in build_model(name, batch) if layer.weights is not None]
    assert len(ours) == len(cost.layers)
    for mine, theirs in zip(ours, cost.layers):
        by_stage = {s: sum(g.macs for g in mine.gemms if g.stage == s) for s in ("FF", "BP", "WU")}
        assert (by_stage["FF"], by_stage["BP"], by_stage["WU"]) == (theirs.dense_ff, theirs.dense_bp, theirs.dense_wu), \
            mine.name
    sparse = [layer.sparse for layer in ours]
    assert sparse == [False] + [True] * (len(ours) - 2) + [False]  # BDWP: all but the first and the last


def test_vit_has_the_shapes_of_vit_s16():
    layers = build_model("vit", 1)
    linear = [layer for layer in layers if layer.kind == "linear"]
    assert len(linear) == 12 * 4 + 1
    per_image = sum(layer.macs for layer in layers) / 3  # FF + BP + WU are each about one forward's MACs
    assert 4.0e9 < per_image < 5.0e9  # ViT-S/16 at 224: 4.6 GMAC forward (timm), BP of the patch embedding aside


@pytest.mark.parametrize("elements,bf16", [(1000, True), (4096 * 33 + 5, False)])
def test_built_vector_passes_cost_what_the_simulator_says_their_vectors_take(elements, bf16):
    """A residual add / ReLU gradient is charged the cycles of the VECTOR that does it."""
    cfg = SATConfig.vcu1525()
    size = array_bytes(cfg, elements, bf16)
    words = vector_instructions(cfg, VectorFunc.ADD, 0, size, 2 * size, elements, bf16=bf16)
    core = CoreModel(cfg)
    busy = core.time_program(words + [encode(Opcode.FINISH)]).busy["sparsify"]
    assert pass_cycles(cfg, VectorPass("add", "FF", elements, 2, 1, bf16=bf16, built=True)) == busy


def test_bdwp_speeds_up_the_gemms_and_leaves_the_vector_work():
    cfg = SATConfig.vcu1525()
    layers = build_model("resnet18", 4)
    core = CoreModel(cfg)
    dense = time_iteration(cfg, layers, None, core=core)
    sparse = time_iteration(cfg, layers, (2, 8), core=core)
    assert sparse.vector == dense.vector > 0
    assert 1.3 < dense.gemm / sparse.gemm < 2.0
    assert dense.total > sparse.total
    no_pregen = time_iteration(cfg, layers, (2, 8), pregeneration=False, core=core)
    assert no_pregen.total == sparse.total - sparse.pregen_charged + sparse.pregen > sparse.total
    first, last = sparse.layers[0], [x for x in sparse.layers if x.kind == "linear"][-1]
    assert not first.sparse and not last.sparse and first.bp == 0


def test_bad_patterns_and_models_are_clear_errors():
    cfg = SATConfig.tiny()
    with pytest.raises(ValueError, match="m in"):
        time_iteration(cfg, build_model("resnet18", 1), (2, 16))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="batch"):
        build_model("vgg16", 0)
    assert np.isfinite(pass_cycles(cfg, VectorPass("x", "FF", 1, 1, 1)))
    with pytest.raises(ValueError, match="norms must be"):
        time_iteration(cfg, build_model("resnet18", 1), None, norms="host")


def test_batch_norms_are_charged_the_cycles_of_the_walks_built():
    """Each batch norm (the shape of the conv before it) costs the cycles its four programs take on the
    simulator (``nmsat.dataflow.norm``), serially; with ``norms="stream"`` its four stream passes instead."""
    cfg = SATConfig.vcu1525()
    layers = build_model("resnet18", 4)
    core = CoreModel(cfg)
    walks = time_iteration(cfg, layers, (2, 8), core=core)
    stream = time_iteration(cfg, layers, (2, 8), core=core, norms="stream")
    norms = [i for i, x in enumerate(layers) if x.kind == "batchnorm"]
    assert len(norms) == 20 and layers[norms[-1]].shape == (4, 512, 4, 4)
    for i in norms:
        programs = norm_programs(cfg, *layers[i].shape)
        assert walks.layers[i].norm == sum(core.time_programs(p).cycles for p in programs.values()) > 0
        assert walks.layers[i].vector_ff == 0 and stream.layers[i].norm == 0
        assert stream.layers[i].vector == sum(pass_cycles(cfg, p) for p in layers[i].passes if not p.built)
    assert walks.gemm == stream.gemm
    relu = [i for i in norms if any(p.built for p in layers[i].passes)]  # a ReLU after it: its RELU_GRAD
    assert len(relu) == 9 and all(walks.layers[i].vector_bp == pass_cycles(cfg, layers[i].passes[-1]) for i in relu)


def test_on_chip_im2col_makes_sparse_convolutions_compute_bound():
    """A 3×3 conv's FF and BP as kernel walks: dense at ≥ 90% of the array, 2:8 at ≥ 3.6× of dense (the sparse
    target), WU at ≥ 95%; the same layer as GEMMs on im2col operands is slower, and the iteration with walks is
    faster."""
    cfg = SATConfig.vcu1525()
    core = CoreModel(cfg)
    layers = build_model("resnet18", 32)
    layer = next(x for x in layers if x.name == "layer1.0.conv1")
    walks = {p: time_iteration(cfg, [layer], p, core=core, pregeneration=False).layers[0] for p in (None, (2, 8))}
    ff_macs = next(g.macs for g in layer.gemms if g.stage == "FF")
    assert ff_macs / (walks[None].ff * cfg.rows * cfg.cols) >= 0.9
    assert walks[None].ff / walks[(2, 8)].ff >= 3.6 and walks[None].bp / walks[(2, 8)].bp >= 3.6
    gemms = time_iteration(cfg, [layer], (2, 8), core=core, pregeneration=False, im2col=False).layers[0]
    assert gemms.ff > 1.5 * walks[(2, 8)].ff and gemms.wu >= walks[(2, 8)].wu
    assert ff_macs / (walks[(2, 8)].wu * cfg.rows * cfg.cols) >= 0.95  # WU (dense) on its walk, no host im2col
    with_walks = time_iteration(cfg, layers, (2, 8), core=core)
    without = time_iteration(cfg, layers, (2, 8), core=core, im2col=False)
    assert with_walks.total < without.total and with_walks.im2col and not without.im2col


def test_offline_scheduling_hides_backward_vector_passes_under_the_wus():
    cfg = SATConfig.vcu1525()
    core = CoreModel(cfg)
    layers = build_model("resnet18", 32)
    on = time_iteration(cfg, layers, (2, 8), core=core)
    off = time_iteration(cfg, layers, (2, 8), core=core, offline=False)
    assert off.vector_hidden == 0 and on.vector_hidden > 0
    assert on.total < off.total and on.gemm == off.gemm and on.vector == off.vector
    assert on.vector_hidden <= HIDE_SHARE * sum(x.wu for x in on.layers)
    by_name = {x.name: x for x in on.layers}
    for layer in on.layers:
        assert layer.vector_hidden <= layer.vector_bp  # forward passes stay serial
    # the loss's gradient comes first backward: no WU runs beside it
    assert by_name["loss"].vector_bp > 0 and by_name["loss"].vector_hidden == 0
    # a norm between two convolutions hides under the WU of the conv after it (small against it: all of it)
    bn, after = by_name["layer1.0.bn1"], by_name["layer1.0.conv2"]
    assert bn.vector_bp < HIDE_SHARE * after.wu and bn.vector_hidden == bn.vector_bp


def test_vector_work_in_one_program_with_a_wu_walk_runs_under_it():
    """The measurement behind the offline model (benchmarks/vector_under_wu.py), on one layer."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "vector_under_wu", Path(__file__).parents[2] / "benchmarks" / "vector_under_wu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = SATConfig.vcu1525()
    layer = next(x for x in build_model("resnet18", 32) if x.name == "layer3.0.conv2")
    t_wu, t_vec, t_both = bench.under_wu(cfg, CoreModel(cfg), layer.conv)
    assert t_vec > 0.05 * t_wu
    assert t_both <= t_wu + 0.1 * t_vec < t_wu + t_vec  # at least 90% hidden


def test_offline_scheduling_runs_the_independent_gemms_of_a_stage_in_one_program():
    """Attention's per-head GEMMs as one stream: each head's transfers run under the one before, so 16 heads take
    well under 16 times one alone, never less than their MACs; without offline scheduling each is its own
    program."""
    cfg = SATConfig.vcu1525()
    timer = Timer(cfg, CoreModel(cfg))
    alone = timer.gemm(197, 64, 197, None, True)
    batch = timer.gemm_batch(197, 64, 197, None, True, 16)
    assert 16 * 197 * 64 * 197 / (cfg.rows * cfg.cols) <= batch < 0.7 * 16 * alone
    assert timer.gemm_batch(197, 64, 197, None, True, 1) == alone
    layer = next(x for x in build_model("vit", 2) if x.name == "blocks.0.attn.scores")
    on = time_iteration(cfg, [layer], None).layers[0]
    off = time_iteration(cfg, [layer], None, offline=False).layers[0]
    heads = next(g for g in layer.gemms if g.stage == "FF")
    assert off.ff == heads.count * timer.gemm(heads.m, heads.n, heads.k, None, True) > on.ff


def test_dense_grouped_convolutions_pack_their_small_groups():
    """A grouped convolution's dense stages are timed with its groups packed (nmsat.dataflow.groupconv) where
    that is faster: FF and WU of 16 groups of 4 channels (4 rows each) in fewer cycles than the groups one by
    one (FF by 1.4x only: both are bound by reading B, an im2col word per step per group); BP's groups have 36 rows (4 channels x 9 taps), more than half the array, and stay apart."""
    from nmsat.dataflow.models import WorkBuilder

    cfg = SATConfig.vcu1525()
    b = WorkBuilder(4)
    b.conv("stem", 3, 64, 16, 3, padding=1, first=True)
    b.conv("grouped", 64, 64, 16, 3, padding=1, groups=16)
    b.linear("fc", 4, 64, 10)
    layer = b.done()[1]
    timer = Timer(cfg, CoreModel(cfg))
    cycles = {}
    for g in layer.gemms:
        packed = timer.packed_groups(g, g.stage != "WU", True)
        apart = timer.gemm_batch(g.m, g.n, g.k, None, g.stage != "WU", g.count)
        if g.stage == "BP":
            assert packed is None
        else:
            assert packed is not None and packed < apart, (g.stage, packed, apart)
        cycles[g.stage] = apart if packed is None else packed
    dense = time_iteration(cfg, b.done(), None, im2col=False).layers[1]  # group walks are on-chip im2col's
    assert (dense.ff, dense.bp, dense.wu) == (cycles["FF"], cycles["BP"], cycles["WU"])


def test_dense_depthwise_convolutions_run_as_group_walks_where_faster():
    """With on-chip im2col a grouped conv's dense FF and BP run as group walks (nmsat.dataflow.groupwalk) when
    the planners estimate them faster than its GEMMs, and its WU as its diagonal tiles' WU walks: a depthwise
    3×3 at batch 32 by several times."""
    from nmsat.dataflow.models import WorkBuilder

    cfg = SATConfig.vcu1525()
    b = WorkBuilder(32)
    b.conv("stem", 3, 64, 28, 3, padding=1, first=True)
    b.conv("depthwise", 64, 64, 28, 3, padding=1, groups=64)
    b.linear("fc", 32, 64, 10)
    layers = b.done()
    core = CoreModel(cfg)
    walks = time_iteration(cfg, layers, None, core=core, pregeneration=False).layers[1]
    gemms = time_iteration(cfg, layers, None, core=core, pregeneration=False, im2col=False).layers[1]
    timer = Timer(cfg, core)
    ff, bp, wu = sorted(layers[1].gemms, key=lambda g: ("FF", "BP", "WU").index(g.stage))
    assert walks.ff == timer.group_walk(layers[1].conv, "FF", ff) and walks.bp == timer.group_walk(layers[1].conv, "BP", bp)
    assert walks.wu == timer.group_wu(layers[1].conv, wu)
    assert 3 * walks.ff < gemms.ff and 3 * walks.bp < gemms.bp and 2 * walks.wu < gemms.wu, (walks, gemms)
    # BDWP's sparse FF and BP of the layer: group by group as SPARSE_GEMMs, or the same walks on the pruned
    # weights, the faster
    sparse = time_iteration(cfg, layers, (2, 8), core=core, pregeneration=False)
    sparse_gemms = time_iteration(cfg, layers, (2, 8), core=core, pregeneration=False, im2col=False)
    assert sparse.layers[1].sparse and (sparse.layers[1].ff, sparse.layers[1].bp) == (walks.ff, walks.bp)
    assert sparse.layers[1].ff < sparse_gemms.layers[1].ff and sparse.layers[1].bp < sparse_gemms.layers[1].bp
