"""The work of one training iteration of a model, layer by layer: GEMMs, vector-unit passes, weights.

Shapes only (no torch, no numpy): each builder returns the model's layers in
forward order as :class:`LayerWork` — its FF, BP and WU GEMMs
(:mod:`nmsat.dataflow.layers`), the passes over memory the vector unit makes
for it forward and backward (:class:`VectorPass`), and its weights if it has
any (what the weight update and the sparsifier work on).  Built-in models
(:data:`MODELS`): ResNet-18 and VGG-16 on CIFAR-10 shapes (32 × 32), ResNet-50
on ImageNet shapes (224 × 224), ViT-S/16 (224 × 224, 197 tokens of 384).

Which layers BDWP prunes follows ``nmsat.sw.bdwp`` and SAT: every conv and
linear layer but the first and the last (``LayerWork.sparse``).

Not here: cycles (``nmsat.sw.iteration`` times this work on the simulator),
tiling, or the programs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .layers import GemmShape, conv2d_gemms, conv_output_size, linear_gemms

__all__ = ["VectorPass", "ConvGeometry", "LayerWork", "WorkBuilder", "MODELS", "build_model", "resnet18_cifar", "vgg16_cifar", "resnet50_imagenet",
           "vit_s16", "mobilenet_v1", "resnext50", "GROUPED_MODELS", "group_count", "fggc_twin"]


@dataclass(frozen=True)
class VectorPass:
    """One pass of the vector unit over memory: ``elements`` elements, ``reads`` arrays read and ``writes``
    written (a stream instruction's shape, ``nmsat.hw.timing.stream_cycles``).  ``op`` names it; ``built``:
    a VECTOR function does it today (else its cost is charged by the same stream rule, see
    ``nmsat.sw.iteration``)."""

    op: str
    stage: str  # "FF" or "BP"
    elements: int
    reads: int
    writes: int
    bf16: bool = True
    built: bool = False


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's shape, for the kernel walk (``nmsat.dataflow.conv``); ``first``: its input needs no gradient."""

    batch: int
    cin: int
    cout: int
    size: int
    kernel: int
    stride: int
    padding: int
    groups: int
    first: bool


@dataclass(frozen=True)
class LayerWork:
    """One layer of the iteration: GEMMs, vector passes, and weights ``(cout, K per group, groups)`` if any;
    a convolution's geometry (its FF and BP can also run as kernel walks)."""

    name: str
    kind: str
    gemms: tuple[GemmShape, ...] = ()
    passes: tuple[VectorPass, ...] = ()
    weights: tuple[int, int, int] | None = None
    sparse: bool = False  # BDWP prunes its FF and BP
    conv: ConvGeometry | None = None
    shape: tuple[int, int, int, int] | None = None  # a batch norm's activation [N, C, H, W] (that of the conv before it)

    @property
    def macs(self) -> int:
        return sum(g.macs for g in self.gemms)


@dataclass
class WorkBuilder:
    batch: int
    layers: list[LayerWork] = field(default_factory=list)

    def conv(self, name, cin, cout, size, kernel, stride=1, padding=0, groups=1, first=False) -> int:
        gemms = conv2d_gemms(name, self.batch, cin, cout, size, size, kernel, stride, padding, groups=groups)
        if first:  # the data needs no gradient: no BP GEMM
            gemms = [g for g in gemms if g.stage != "BP"]
        self.layers.append(LayerWork(name, "conv2d", tuple(gemms), weights=(cout, cin // groups * kernel * kernel,
                                                                             groups),
                                     conv=ConvGeometry(self.batch, cin, cout, size, kernel, stride, padding, groups,
                                                       first)))
        return conv_output_size(size, kernel, stride, padding, 1)

    def linear(self, name, tokens, fin, fout, first=False):
        gemms = [g for g in linear_gemms(name, tokens, fin, fout) if not (first and g.stage == "BP")]
        self.layers.append(LayerWork(name, "linear", tuple(gemms), weights=(fout, fin, 1)))

    def norm(self, name, elements, kind="batchnorm", relu=True):
        """Batch (or layer) norm: statistics then scale and shift forward; two reductions then the input
        gradient backward.  A batch norm of the output of the convolution before it records that output's
        shape; ``relu``: a ReLU follows it, fused into its apply (forward) and, backward, into its input
        gradient's pass — or, where the norm runs as walks, its own RELU_GRAD (the built pass listed last)."""
        shape = None
        convs = [x.conv for x in self.layers if x.conv is not None]
        if kind == "batchnorm" and convs:
            g = convs[-1]
            out = conv_output_size(g.size, g.kernel, g.stride, g.padding, 1)
            if self.batch * g.cout * out * out == elements:
                shape = (self.batch, g.cout, out, out)
        passes = (VectorPass(f"{kind} statistics", "FF", elements, 1, 0), VectorPass(f"{kind} apply", "FF", elements, 1, 1),
                  VectorPass(f"{kind} grad reductions", "BP", elements, 2, 0),
                  VectorPass(f"{kind} input grad", "BP", elements, 2, 1))
        if relu and kind == "batchnorm":
            passes += (VectorPass("relu grad", "BP", elements, 2, 1, built=True),)
        self.layers.append(LayerWork(name, kind, passes=passes, shape=shape))

    def relu_grad(self, name, elements):
        """A ReLU not fused into a norm: forward fused into the STORE, backward one RELU_GRAD."""
        self.layers.append(LayerWork(name, "relu", passes=(VectorPass("relu grad", "BP", elements, 2, 1, built=True),)))

    def add(self, name, elements):
        """A residual add forward, and the gradients of its two branches summed at the fork backward."""
        self.layers.append(LayerWork(name, "add", passes=(VectorPass("add", "FF", elements, 2, 1, built=True),
                                                          VectorPass("fork grad add", "BP", elements, 2, 1, built=True))))

    def pool(self, name, in_elements, out_elements, kind):
        """Max pooling (window, argmax kept) or global average pooling, and their gradients."""
        if kind == "max":
            passes = (VectorPass("maxpool", "FF", in_elements, 1, 1), VectorPass("maxpool grad", "BP", in_elements, 2, 1))
        else:
            passes = (VectorPass("avgpool", "FF", in_elements, 1, 0), VectorPass("avgpool grad", "BP", in_elements, 0, 1))
        del out_elements  # the small side's traffic is inside the pass over the large one
        self.layers.append(LayerWork(name, f"{kind}pool", passes=passes))

    def elementwise(self, name, elements, kind, forward=(1, 1), backward=(2, 1)):
        self.layers.append(LayerWork(name, kind, passes=(VectorPass(kind, "FF", elements, *forward),
                                                         VectorPass(f"{kind} grad", "BP", elements, *backward))))

    def loss(self, classes):
        """Softmax cross-entropy: the gradient ``softmax(logits) − onehot`` from the logits (fp32)."""
        e = self.batch * classes
        self.layers.append(LayerWork("loss", "loss", passes=(VectorPass("softmax statistics", "FF", e, 1, 0, bf16=False),
                                                             VectorPass("loss grad", "BP", e, 1, 1, bf16=False))))

    def dense_gemm(self, name, gemms):
        """Activation × activation GEMMs (attention): no weights, dense in BDWP too."""
        self.layers.append(LayerWork(name, "matmul", tuple(gemms)))

    def done(self) -> list[LayerWork]:
        convs = [i for i, x in enumerate(self.layers) if x.weights is not None]
        first, last = convs[0], convs[-1]
        return [dataclasses.replace(x, sparse=x.weights is not None and i not in (first, last))
                for i, x in enumerate(self.layers)]


def resnet18_cifar(batch: int = 32) -> list[LayerWork]:
    """ResNet-18 for CIFAR-10: 3×3 stem, four stages of two basic blocks, global average pool, fc 512 → 10."""
    b = WorkBuilder(batch)
    size = b.conv("conv1", 3, 64, 32, 3, padding=1, first=True)
    b.norm("bn1", batch * 64 * size * size)
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if (stage > 1 and block == 0) else 1
            name = f"layer{stage}.{block}"
            out = b.conv(f"{name}.conv1", cin, cout, size, 3, stride, 1)
            e = batch * cout * out * out
            b.norm(f"{name}.bn1", e)
            b.conv(f"{name}.conv2", cout, cout, out, 3, 1, 1)
            b.norm(f"{name}.bn2", e, relu=False)  # the ReLU comes after the residual add
            if stride != 1 or cin != cout:
                b.conv(f"{name}.downsample", cin, cout, size, 1, stride)
                b.norm(f"{name}.downsample.bn", e, relu=False)
            b.add(f"{name}.add", e)
            b.relu_grad(f"{name}.relu", e)
            cin, size = cout, out
    b.pool("avgpool", batch * 512 * size * size, batch * 512, "avg")
    b.linear("fc", batch, 512, 10)
    b.loss(10)
    return b.done()


VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_cifar(batch: int = 32) -> list[LayerWork]:
    """VGG-16 with batch norm for CIFAR-10: 13 3×3 convs, five 2×2 max pools, one fc 512 → 10."""
    b = WorkBuilder(batch)
    cin, size, n = 3, 32, 0
    for item in VGG16:
        if item == "M":
            b.pool(f"pool{n}", batch * cin * size * size, batch * cin * (size // 2) ** 2, "max")
            size //= 2
            continue
        n += 1
        b.conv(f"conv{n}", cin, item, size, 3, padding=1, first=n == 1)
        b.norm(f"bn{n}", batch * item * size * size)
        cin = item
    b.linear("fc", batch, 512, 10)
    b.loss(10)
    return b.done()


def _bottleneck_net(batch: int, widths, expansion: int, groups_of) -> list[LayerWork]:
    """ResNet-50's layout on 224 × 224 (torchvision's v1.5: stride on the 3×3): 7×7 stem, max pool, 3-4-6-3
    bottlenecks of the stage ``widths`` (out: ``expansion`` × width; the 3×3 in ``groups_of(width)`` groups),
    global average pool, fc → 1000."""
    b = WorkBuilder(batch)
    size = b.conv("conv1", 3, 64, 224, 7, 2, 3, first=True)
    b.norm("bn1", batch * 64 * size * size)
    b.pool("maxpool", batch * 64 * size * size, batch * 64 * (size // 2) ** 2, "max")
    size //= 2
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), widths), start=1):
        for block in range(blocks):
            stride = 2 if (stage > 1 and block == 0) else 1
            name = f"layer{stage}.{block}"
            cout = expansion * width
            b.conv(f"{name}.conv1", cin, width, size, 1)
            b.norm(f"{name}.bn1", batch * width * size * size)
            out = b.conv(f"{name}.conv2", width, width, size, 3, stride, 1, groups=groups_of(width))
            b.norm(f"{name}.bn2", batch * width * out * out)
            b.conv(f"{name}.conv3", width, cout, out, 1)
            e = batch * cout * out * out
            b.norm(f"{name}.bn3", e, relu=False)  # the ReLU comes after the residual add
            if block == 0:
                b.conv(f"{name}.downsample", cin, cout, size, 1, stride)
                b.norm(f"{name}.downsample.bn", e, relu=False)
            b.add(f"{name}.add", e)
            b.relu_grad(f"{name}.relu", e)
            cin, size = cout, out
    b.pool("avgpool", batch * cin * size * size, batch * cin, "avg")
    b.linear("fc", batch, cin, 1000)
    b.loss(1000)
    return b.done()


def resnet50_imagenet(batch: int = 32) -> list[LayerWork]:
    """ResNet-50 (torchvision's v1.5: stride on the 3×3) on 224 × 224: 7×7 stem, max pool, 3-4-6-3 bottlenecks,
    global average pool, fc 2048 → 1000."""
    return _bottleneck_net(batch, (64, 128, 256, 512), 4, lambda width: 1)


def vit_s16(batch: int = 32) -> list[LayerWork]:
    """ViT-S/16 on 224 × 224: 16 × 16 patches (196 + the class token = 197 tokens of 384), 12 blocks of
    6-head attention and a 1536-wide MLP, pre-norm, head 384 → 1000."""
    b = WorkBuilder(batch)
    tokens, dim, heads, hidden = 197, 384, 6, 1536
    head_dim = dim // heads
    t = batch * tokens
    b.conv("patch_embed", 3, dim, 224, 16, 16, first=True)
    e = t * dim
    pairs = batch * heads
    for i in range(12):
        name = f"blocks.{i}"
        b.norm(f"{name}.norm1", e, "layernorm")
        b.linear(f"{name}.attn.qkv", t, dim, 3 * dim)
        # S = Q·Kᵀ and O = P·V per image and head; BP: dQ = dS·K, dK = dSᵀ·Q, dP = dO·Vᵀ, dV = Pᵀ·dO
        b.dense_gemm(f"{name}.attn.scores", [
            GemmShape(f"{name}.attn.scores", "FF", tokens, tokens, head_dim, pairs),
            GemmShape(f"{name}.attn.scores", "BP", tokens, head_dim, tokens, 2 * pairs)])
        b.elementwise(f"{name}.attn.softmax", pairs * tokens * tokens, "softmax", forward=(1, 1), backward=(2, 1))
        b.dense_gemm(f"{name}.attn.values", [
            GemmShape(f"{name}.attn.values", "FF", tokens, head_dim, tokens, pairs),
            GemmShape(f"{name}.attn.values", "BP", tokens, tokens, head_dim, pairs),
            GemmShape(f"{name}.attn.values", "BP", tokens, head_dim, tokens, pairs)])
        b.linear(f"{name}.attn.proj", t, dim, dim)
        b.add(f"{name}.add1", e)
        b.norm(f"{name}.norm2", e, "layernorm")
        b.linear(f"{name}.mlp.fc1", t, dim, hidden)
        b.elementwise(f"{name}.mlp.gelu", t * hidden, "gelu")
        b.linear(f"{name}.mlp.fc2", t, hidden, dim)
        b.add(f"{name}.add2", e)
    b.norm("norm", e, "layernorm")
    b.linear("head", batch, dim, 1000)  # the class token only
    b.loss(1000)
    return b.done()


def group_count(channels: int, group_size: int | None = None, groups: int | None = None) -> int:
    """Groups of a grouped convolution over ``channels``: ``channels / group_size`` (E2GC's constant group
    size) or ``groups`` (a fixed number of groups, FgGC); exactly one is given, and it divides ``channels``."""
    if (group_size is None) == (groups is None):
        raise ValueError("give exactly one of group_size (E2GC) and groups (FgGC)")
    for what, value in (("group_size", group_size), ("groups", groups)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{what} must be a positive whole number, got {value!r}")
    count = channels // group_size if group_size is not None else groups
    if count < 1 or channels % count or (group_size is not None and channels % group_size):
        what = f"group size {group_size}" if group_size is not None else f"{groups} groups"
        raise ValueError(f"{what} does not divide {channels} channels")
    return count


MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
                (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1(batch: int = 32, *, group_size: int | None = 1, groups: int | None = None) -> list[LayerWork]:
    """MobileNet-V1 on 224 × 224: a 3×3 stride-2 stem, 13 separable blocks (a grouped 3×3, batch norm, ReLU, a
    pointwise 1×1, batch norm, ReLU), global average pool, fc 1024 → 1000.  The 3×3 of every block is a group
    convolution of ``group_size`` channels a group (E2GC; 1 is the original depthwise) or of ``groups`` groups
    (FgGC: give ``group_size=None``)."""
    b = WorkBuilder(batch)
    size = b.conv("conv1", 3, 32, 224, 3, 2, 1, first=True)
    b.norm("bn1", batch * 32 * size * size)
    cin = 32
    for i, (cout, stride) in enumerate(MOBILENET_V1, start=1):
        name = f"block{i}"
        out = b.conv(f"{name}.group", cin, cin, size, 3, stride, 1, groups=group_count(cin, group_size, groups))
        b.norm(f"{name}.bn1", batch * cin * out * out)
        b.conv(f"{name}.pointwise", cin, cout, out, 1)
        b.norm(f"{name}.bn2", batch * cout * out * out)
        cin, size = cout, out
    b.pool("avgpool", batch * cin * size * size, batch * cin, "avg")
    b.linear("fc", batch, cin, 1000)
    b.loss(1000)
    return b.done()


def resnext50(batch: int = 32, *, group_size: int | None = None, groups: int | None = 32) -> list[LayerWork]:
    """ResNeXt-50 (32×4d) on 224 × 224: ResNet-50's stem and 3-4-6-3 bottlenecks with widths 128, 256, 512,
    1024, the 3×3 of each a group convolution of ``groups`` groups (FgGC, 32 in the original) or of
    ``group_size`` channels a group (E2GC: give ``groups=None``)."""
    return _bottleneck_net(batch, (128, 256, 512, 1024), 2, lambda width: group_count(width, group_size, groups))


#: the models with grouped convolutions, each with its grouping keywords (``group_size`` for E2GC,
#: ``groups`` for FgGC)
GROUPED_MODELS = {"mobilenet_v1": mobilenet_v1, "resnext50": resnext50}


def fggc_twin(name: str, group_size: int, batch: int = 32) -> tuple[int, float]:
    """The fixed number of groups g whose FgGC model (``name`` in :data:`GROUPED_MODELS`) has the FF MACs of
    its E2GC model with ``group_size`` most nearly (g a power of two dividing every grouped layer), and the
    ratio of their total FF MACs (FgGC / E2GC)."""
    build = GROUPED_MODELS[name]
    e2gc = _ff_macs(build(batch, group_size=group_size, groups=None))
    best = None
    g = 1
    while True:
        try:
            macs = _ff_macs(build(batch, group_size=None, groups=g))
        except ValueError:  # g no longer divides every grouped layer
            break
        ratio = macs / e2gc
        if best is None or abs(math.log(ratio)) < abs(math.log(best[1])):
            best = (g, ratio)
        g *= 2
    return best


def _ff_macs(layers: list[LayerWork]) -> int:
    return sum(g.macs for x in layers for g in x.gemms if g.stage == "FF")


MODELS = {"resnet18": resnet18_cifar, "vgg16": vgg16_cifar, "resnet50": resnet50_imagenet, "vit": vit_s16,
          "mobilenet_v1": mobilenet_v1, "resnext50": resnext50}


def build_model(name: str, batch: int = 32, *, group_size: int | None = None,
                groups: int | None = None) -> list[LayerWork]:
    """The layers of a built-in model (:data:`MODELS`) at ``batch``; a model of :data:`GROUPED_MODELS` with its
    grouped convolutions of ``group_size`` channels (E2GC) or of ``groups`` groups (FgGC) if one is given."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if group_size is None and groups is None:
        return MODELS[name](batch)
    if name not in GROUPED_MODELS:
        raise ValueError(f"model {name!r} has no grouped convolutions; group sizes apply to {sorted(GROUPED_MODELS)}")
    return GROUPED_MODELS[name](batch, group_size=group_size, groups=groups)
