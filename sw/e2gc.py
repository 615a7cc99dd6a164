"""E2GC in PyTorch: group convolutions with a constant group size, and the models built of them.

E2GC (Jha et al., VLSID 2020) sizes a group convolution by its group size G
(channels per group; g = C / G groups, ``nmsat.dataflow.models.group_count``, so each layer's groups grow with its
width) instead of by a fixed number of groups g (FgGC, whose group size
C / g shrinks in the narrow layers).  A layer's MACs are H·W·K²·C·G, so a
constant G keeps every layer's arithmetic intensity alike.

Holds :class:`E2GCConv2d` (an ``nn.Conv2d`` given ``group_size``), the
builders :func:`mobilenet_v1` and :func:`resnext50` (each takes
``group_size`` for E2GC or ``groups`` for its FgGC twin;
``nmsat.dataflow.models.fggc_twin`` finds the g that matches an E2GC
model's MACs), and :class:`DigitsGroupCNN`, a small network for the
8 × 8 digits to compare E2GC with FgGC on accuracy.  BDWP composes with
them: ``nmsat.sw.bdwp.sparsify`` turns each conv into a ``BDWPConv2d`` of
the same groups, whose N:M groups run inside each conv group.

Not here: the accelerator's work for these models (``nmsat.dataflow.models``
has the same shapes; ``nmsat.sw.workload.module_work`` traces these modules
into them) or their cycles.
"""

from __future__ import annotations

from torch import nn

from ..dataflow.models import group_count

__all__ = ["E2GCConv2d", "mobilenet_v1", "resnext50", "DigitsGroupCNN"]


class E2GCConv2d(nn.Conv2d):
    """A group convolution of ``group_size`` input channels a group (``groups = in_channels / group_size``;
    ``group_size = 1`` is depthwise); otherwise ``nn.Conv2d``'s arguments and state dict."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, group_size: int, stride=1, padding=0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros"):
        groups = group_count(in_channels, group_size=group_size)
        if out_channels % groups:
            raise ValueError(f"E2GCConv2d: {groups} groups (group size {group_size}) do not divide "
                             f"out_channels={out_channels}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode)
        self.group_size = group_size

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


def _grouped(channels: int, stride: int, group_size: int | None, groups: int | None) -> nn.Conv2d:
    """The 3×3 group convolution of a block: E2GC if ``group_size`` is given, else FgGC of ``groups``."""
    if group_size is not None and groups is None:
        return E2GCConv2d(channels, channels, 3, group_size, stride, 1, bias=False)
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=group_count(channels, group_size, groups), bias=False)


def _conv_bn_relu(cout: int, conv: nn.Module) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]


# the separable blocks: (output channels of the pointwise, stride of the grouped 3×3)
_MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
                 (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1(*, group_size: int | None = 1, groups: int | None = None, classes: int = 1000) -> nn.Sequential:
    """MobileNet-V1 (224 × 224 inputs): a 3×3 stride-2 stem, 13 blocks of a grouped 3×3 (``group_size``
    channels a group, E2GC, 1 being the original depthwise; or ``groups`` groups with ``group_size=None``,
    FgGC) and a pointwise 1×1, each with batch norm and ReLU; global average pool; fc to ``classes``."""
    layers = _conv_bn_relu(32, nn.Conv2d(3, 32, 3, 2, 1, bias=False))
    cin = 32
    for cout, stride in _MOBILENET_V1:
        layers += _conv_bn_relu(cin, _grouped(cin, stride, group_size, groups))
        layers += _conv_bn_relu(cout, nn.Conv2d(cin, cout, 1, bias=False))
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int, group_size, groups):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _grouped(width, stride, group_size, groups), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _ResNeXt(nn.Module):
    def __init__(self, group_size, groups, classes):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for stage, (blocks, width) in enumerate(((3, 128), (4, 256), (6, 512), (3, 1024)), start=1):
            cout = 2 * width
            stage_blocks = []
            for block in range(blocks):
                stage_blocks.append(_Bottleneck(cin, width, cout, 2 if stage > 1 and block == 0 else 1, group_size,
                                                groups))
                cin = cout
            stages.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnext50(*, group_size: int | None = None, groups: int | None = 32, classes: int = 1000) -> nn.Module:
    """ResNeXt-50 (32×4d, 224 × 224 inputs, torchvision's stride on the 3×3): bottleneck widths 128, 256, 512,
    1024 whose 3×3 is a group convolution of ``groups`` groups (FgGC; 32 in the original) or, with
    ``groups=None``, of ``group_size`` channels a group (E2GC)."""
    return _ResNeXt(group_size, groups, classes)


class DigitsGroupCNN(nn.Module):
    """A small network for scikit-learn's 8 × 8 digits with two grouped 3×3 convolutions (16 and 32
    channels), E2GC (``group_size``) or FgGC (``groups``), each after a pointwise 1×1, as MobileNet's blocks."""

    def __init__(self, *, group_size: int | None = None, groups: int | None = None, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(16, nn.Conv2d(1, 16, 3, padding=1, bias=False)))
        self.block1 = nn.Sequential(*_conv_bn_relu(16, _grouped(16, 1, group_size, groups)),
                                    *_conv_bn_relu(32, nn.Conv2d(16, 32, 1, bias=False)))
        self.block2 = nn.Sequential(*_conv_bn_relu(32, _grouped(32, 2, group_size, groups)),
                                    *_conv_bn_relu(64, nn.Conv2d(32, 64, 1, bias=False)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))
