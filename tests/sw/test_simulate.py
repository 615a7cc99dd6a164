"""``nmsat simulate`` and :mod:`nmsat.sw.simulate`: a model's iteration, layer by layer, dense beside sparse;
a user's own ``nn.Module`` traced into the same work; the JSON report's documented fields; bad input."""

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nmsat.dataflow.models import build_model
from nmsat.hw.config import SATConfig
from nmsat.sw.cli import main
from nmsat.sw.simulate import JSON_FIELDS, LAYER_FIELDS, simulate, simulate_module
from nmsat.sw.workload import module_work

VCU = SATConfig.vcu1525()
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    """ResNet-18 for CIFAR as a user would write it (batch norms, functional ReLUs, a flatten)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for stage, cout in enumerate((64, 128, 256, 512)):
            for block in range(2):
                blocks.append(Block(cin, cout, 2 if stage and not block else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(torch.relu(self.bn1(self.conv1(x))))), 1))


def signature(layer):
    return (layer.kind, layer.sparse, layer.weights, layer.conv,
            [(g.stage, g.m, g.n, g.k, g.count) for g in layer.gemms], [(p.op, p.elements) for p in layer.passes])


def test_a_traced_torch_resnet18_is_the_built_in_resnet18_work():
    work = module_work(ResNet18(), torch.zeros(32, 3, 32, 32))
    assert work.unsupported == [] and work.batch == 32
    assert [signature(x) for x in work.layers] == [signature(x) for x in build_model("resnet18", 32)]


def test_a_users_module_is_simulated_and_what_it_cannot_map_is_named():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.Linear(32, 4)

        def forward(self, x):
            y = torch.cumsum(torch.relu(self.conv(x)), dim=1)
            return self.fc(y.mean(dim=(2, 3)))

    with pytest.warns(UserWarning, match=r"not timed on the accelerator.*cumsum"):
        report = simulate_module(Odd(), torch.zeros(8, 16, 8, 8), (2, 8), cfg=VCU)
    assert [x.name for x in report.layers if x.ff] == ["conv", "fc"]
    assert report.cycles > 0 and report.dense_cycles >= report.cycles
    # conv and fc are BDWP's first and last layers: dense in both runs
    assert report.layers[0].sparse is False


def test_a_model_without_layers_the_accelerator_runs_is_a_clear_error():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        module_work(nn.Sequential(nn.ReLU()), torch.zeros(2, 4))


def test_the_report_adds_up_and_the_speedup_is_dense_over_sparse():
    report = simulate("resnet18", (2, 8), cfg=VCU, batch=32)
    assert report.speedup_over_dense == pytest.approx(report.dense_cycles / report.cycles)
    assert 1.5 < report.speedup_over_dense <= report.ideal_speedup <= 2.0
    assert sum(x.cycles for x in report.layers) + report.totals["pregeneration_charged"] == report.cycles
    for x in report.layers:
        if x.utilisation is not None:
            assert 0 < x.utilisation <= 1.0
    table = report.format_table()
    assert "layer1.0.conv1" in table and f"speedup over dense {report.speedup_over_dense:.3f}x" in table
    assert "avgpool" in table.splitlines()[-1]  # the passes charged without a VECTOR function are named
    assert "batchnorm" not in table.splitlines()[-1]  # the norms run as walks: charged their cycles, not passes
    assert report.totals["norm_walks"] == sum(x.norm for x in report.layers) > 0


def test_cli_json_has_the_documented_fields(capsys):
    assert main(["simulate", "resnet18", "--nm", "2:8", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == set(JSON_FIELDS)
    assert set(out["layers"][0]) == set(LAYER_FIELDS)
    assert out["speedup_over_dense"] == pytest.approx(out["dense_cycles"] / out["cycles"])
    assert out["pattern"] == "2:8" and out["batch"] == 32 and out["preset"] == "vcu1525"
    doc = DOCS.read_text()
    for name in list(JSON_FIELDS) + list(LAYER_FIELDS):
        assert f"`{name}`" in doc, f"docs/cli.md does not describe {name}"


def test_cli_norms_walks_or_stream(capsys):
    totals = {}
    for norms in ("walks", "stream"):
        assert main(["simulate", "resnet18", "--batch", "4", "--json", "--quiet", "--norms", norms]) == 0
        out = json.loads(capsys.readouterr().out)
        totals[norms] = out["totals"]["norm_walks"], out["cycles"]
    assert totals["walks"][0] > 0 and totals["stream"][0] == 0 and totals["walks"][1] != totals["stream"][1]
    assert main(["simulate", "resnet18", "--norms", "host"]) == 2
    assert "'host' is not one of" in capsys.readouterr().err


def test_cli_dense_and_plot(tmp_path, capsys):
    plot = tmp_path / "bars.png"
    assert main(["simulate", "vgg16", "--dense", "--json", "--quiet", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pattern"] == "dense" and out["dense_cycles"] is None and out["speedup_over_dense"] == 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["simulate", "vgg16", "--dense", "--quiet", "--plot", str(plot)]) == 2  # no silent overwrite
    assert "exists; pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["resnet1"], "'resnet1' is not one of"),
    (["resnet18", "--nm", "9:8"], "need 1 <= N <= M"),
    (["resnet18", "--nm", "two:eight"], "two whole numbers"),
    (["resnet18", "--nm", "2:6"], "M in 4, 8"),
    (["resnet18", "--batch", "0"], "--batch must be >= 1"),
    (["resnet18", "--preset", "huge"], "unknown preset 'huge'"),
    (["resnet18", "--plot", "bars.svg"], "give a .png file"),
    (["resnet18", "--plot", "/nonexistent-folder/b.png"], "does not exist"),
    ([], "Missing argument 'MODEL'"),
])
def test_cli_bad_input_is_a_usage_error(args, message, capsys):
    assert main(["simulate", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------- nmsat train


def test_cli_train_through_the_simulator_reports_accuracy_and_core_time(capsys):
    assert main(["train", "--target", "sim", "--steps", "2", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and out["target"] == "sim" and out["preset"] == "vcu1525" and out["pattern"] == "2:8"
    assert out["train_cycles_total"] == sum(out["train_cycles"].values()) > 0
    assert out["simulated_seconds"] == pytest.approx(out["train_cycles_total"] / 200e6)
    assert 0 <= out["test_accuracy"] <= 100 and out["test_cycles"] > 0


def test_cli_train_on_fpga_without_a_card_says_what_is_missing(capsys):
    import os

    if os.path.exists("/dev/xdma0_user"):
        pytest.skip("a card is present")
    assert main(["train", "--target", "fpga", "--steps", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no VCU1525 card" in err and "/dev/xdma0_user" in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--target", "gpu"], "'gpu' is not one of"),
    (["--nm", "2:7"], "M in 4, 8"),
    (["--steps", "0"], "must be >= 1"),
])
def test_cli_train_bad_input(args, message, capsys):
    assert main(["train", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_tracing_leaves_the_users_model_alone_and_shared_modules_keep_their_own_rows():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = (nn.Conv2d(16, 16, 3, padding=1, bias=False) for _ in range(3))
            self.bn, self.act, self.fc = nn.BatchNorm2d(16), nn.GELU(), nn.Linear(16, 4)

        def forward(self, x):
            x = self.act(self.c2(self.act(self.bn(self.c1(x)))))
            return self.fc(self.c3(x).mean(dim=(2, 3)))

    net = Shared()
    before = copy.deepcopy(net.state_dict())
    report = simulate_module(net, torch.randn(8, 16, 8, 8), (2, 8), cfg=VCU, offline=False)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics untouched
    acts = [i for i, x in enumerate(report.layers) if x.kind == "gelu"]
    assert len(acts) == 2 and report.layers[acts[0]].name != report.layers[acts[1]].name
    for x, dense in zip(report.layers, report.dense_iteration.layers):
        assert x.dense_cycles == dense.gemm + dense.norm + dense.vector - dense.vector_hidden


def test_cli_a_path_it_cannot_use_is_one_line(capsys):
    assert main(["fpga", "build", "--preset", "tiny", "--out", "/etc/hostname/x"]) == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and "Traceback" not in err
