"""A user's PyTorch model as the accelerator's work of one training iteration (``nmsat.dataflow.models``).

:func:`module_work` traces an ``nn.Module`` with ``torch.fx`` on an example
batch (shapes by ``ShapeProp``) and turns each node into the work the
built-in models describe: ``Conv2d`` and ``Linear`` (BDWP's layers too) as
their FF/BP/WU GEMMs and kernel-walk geometry, batch and layer norms,
ReLU (module, ``F.relu``, ``torch.relu``, ``Tensor.relu``; fused into a norm it follows), GELU/SiLU/
sigmoid/tanh, residual adds, max and average pooling, and the softmax
cross-entropy loss on the output.  Shape-only nodes (flatten, view,
dropout, identity) cost nothing.  Anything else is returned in
``unsupported`` (the caller warns: it is not timed; in training it stays
on the CPU).

Not here: the cycles (``nmsat.sw.simulate``), the BDWP semantics
(``nmsat.sw.bdwp``).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..dataflow.models import LayerWork, WorkBuilder

__all__ = ["ModelWork", "module_work"]

_NORMS = {nn.BatchNorm1d: "batchnorm", nn.BatchNorm2d: "batchnorm", nn.LayerNorm: "layernorm",
          nn.GroupNorm: "groupnorm"}
_ELEMENTWISE = {nn.GELU: "gelu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
                nn.Softmax: "softmax"}
_FREE_MODULES = (nn.Flatten, nn.Dropout, nn.Identity, nn.Unflatten)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_FREE_FUNCTIONS = {torch.flatten, torch.reshape, getattr, operator.getitem, F.dropout, torch.squeeze,
                   torch.unsqueeze}
_FREE_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "squeeze", "unsqueeze", "dim"}
_ELEMENTWISE_FUNCTIONS = {F.gelu: "gelu", F.silu: "silu", torch.sigmoid: "sigmoid", torch.tanh: "tanh",
                          F.softmax: "softmax", torch.softmax: "softmax"}


@dataclass
class ModelWork:
    """The traced model's layers (forward order) and what it could not map: ``(node name, what it is)``."""

    layers: list[LayerWork]
    unsupported: list[tuple[str, str]]
    batch: int


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _elements(node) -> int:
    shape = _shape(node)
    return math.prod(shape) if shape else 0


def _pair(value, what: str) -> int:
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise ValueError(f"{what} {value} is not square")
    return a


class _LayerTracer(fx.Tracer):
    """torch.fx's tracer with every subclass of the layers mapped here (``nn.Conv2d``: BDWP's, E2GC's, a
    user's own) kept as one module call, as torch's own layers are."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, *_NORMS)) or super().is_leaf_module(m, qualname)


def module_work(module: nn.Module, example: torch.Tensor) -> ModelWork:
    """The work of one training iteration of ``module`` on a batch like ``example`` (``[N, ...]``)."""
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise ValueError("module_work: the example must be a batch tensor [N, ...]")
    import copy

    module = copy.deepcopy(module)  # tracing runs the model once: the user's own (batch-norm statistics,
    module.eval()                   # BDWP step counters) stays as it was
    try:
        graph = fx.GraphModule(module, _LayerTracer().trace(module))
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; the user needs one clear line
        raise ValueError(f"module_work: torch.fx cannot trace {type(module).__name__}: {exc}") from None
    with torch.no_grad():
        ShapeProp(graph).propagate(example)
    modules = dict(graph.named_modules())
    batch = example.shape[0]
    b = WorkBuilder(batch)
    unsupported: list[tuple[str, str]] = []
    inputs = {n for n in graph.graph.nodes if n.op == "placeholder"}
    output_shape = None
    seen: dict[str, int] = {}
    for node in graph.graph.nodes:
        name = str(node.target) if node.op == "call_module" else node.name
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:  # a module called again (a shared activation): a layer of its own
            name = f"{name}#{seen[name]}"
        try:
            if node.op == "call_module":
                sub = modules[node.target]
                _module_node(b, node, sub, name, inputs, unsupported)
            elif node.op == "call_function":
                _function_node(b, node, name, unsupported)
            elif node.op == "call_method":
                if node.target in ("relu", "relu_"):
                    if not _after_norm(node.args[0]):
                        b.relu_grad(name, _elements(node))
                elif node.target in ("add", "add_") and _tensor_args(node) == 2:
                    b.add(name, _elements(node))
                elif node.target == "mean":  # a global average pool written as x.mean(dims)
                    b.pool(name, _elements(node.args[0]), _elements(node), "avg")
                elif node.target not in _FREE_METHODS:
                    unsupported.append((name, f"Tensor.{node.target}"))
            elif node.op == "output":
                arg = node.args[0]
                output_shape = _shape(arg) if isinstance(arg, fx.Node) else None
        except ValueError as exc:
            unsupported.append((name, str(exc)))
    if not any(x.weights is not None for x in b.layers):
        raise ValueError(f"module_work: {type(module).__name__} has no Conv2d or Linear layer the accelerator runs")
    if output_shape is not None and len(output_shape) == 2:
        b.loss(output_shape[1])
    return ModelWork(b.done(), unsupported, batch)


def _after_norm(src) -> bool:
    """A ReLU on a norm's output, its only user: fused into the norm's apply pass (and its gradient into the
    norm's backward), as the built-in models count it."""
    if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
        return False
    return type(src.graph.owning_module.get_submodule(src.target)) in _NORMS


def _followed_by_relu(node) -> bool:
    """Whether a norm's only user is a ReLU (module, function or method): the one :func:`_after_norm` fuses."""
    if len(node.users) != 1:
        return False
    user, = node.users
    if user.op == "call_module":
        return isinstance(user.graph.owning_module.get_submodule(user.target), nn.ReLU)
    return ((user.op == "call_function" and user.target in _RELU_FUNCTIONS)
            or (user.op == "call_method" and user.target in ("relu", "relu_")))


def _tensor_args(node) -> int:
    return sum(isinstance(a, fx.Node) and _shape(a) is not None for a in node.args)


def _module_node(b: WorkBuilder, node, sub: nn.Module, name: str, inputs, unsupported) -> None:
    src = node.args[0] if node.args else None
    in_shape = _shape(src) if isinstance(src, fx.Node) else None
    first = src in inputs
    if isinstance(sub, nn.Conv2d):
        if in_shape is None or len(in_shape) != 4:
            raise ValueError("Conv2d without a 4-D input")
        if in_shape[2] != in_shape[3]:
            raise ValueError(f"Conv2d on a {in_shape[2]}x{in_shape[3]} map: non-square maps are not timed yet")
        if _pair(sub.dilation, "dilation") != 1:
            raise ValueError(f"Conv2d with dilation {sub.dilation}: not timed yet")
        kernel = _pair(sub.kernel_size, "kernel")
        padding = sub.padding
        if isinstance(padding, str):
            padding = 0 if padding == "valid" else (kernel - 1) // 2
        b.conv(name, sub.in_channels, sub.out_channels, in_shape[2], kernel, _pair(sub.stride, "stride"),
               _pair(padding, "padding"), sub.groups, first=first)
    elif isinstance(sub, nn.Linear):
        if in_shape is None:
            raise ValueError("Linear without a tensor input")
        b.linear(name, math.prod(in_shape[:-1]), sub.in_features, sub.out_features, first=first)
    elif type(sub) in _NORMS:
        b.norm(name, _elements(node), _NORMS[type(sub)], relu=_followed_by_relu(node))
    elif isinstance(sub, nn.ReLU):
        if not _after_norm(src):
            b.relu_grad(name, _elements(node))
    elif type(sub) in _ELEMENTWISE:
        b.elementwise(name, _elements(node), _ELEMENTWISE[type(sub)])
    elif isinstance(sub, nn.MaxPool2d):
        b.pool(name, _elements(src), _elements(node), "max")
    elif isinstance(sub, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        b.pool(name, _elements(src), _elements(node), "avg")
    elif not isinstance(sub, _FREE_MODULES):
        unsupported.append((name, type(sub).__name__))


def _function_node(b: WorkBuilder, node, name: str, unsupported) -> None:
    fn = node.target
    if fn in _RELU_FUNCTIONS:
        if not _after_norm(node.args[0]):
            b.relu_grad(name, _elements(node))
    elif fn in _ADD_FUNCTIONS:
        if _tensor_args(node) == 2:
            b.add(name, _elements(node))
        # a tensor plus a constant: folded into its neighbours' passes, not timed on its own
    elif fn in _ELEMENTWISE_FUNCTIONS:
        b.elementwise(name, _elements(node), _ELEMENTWISE_FUNCTIONS[fn])
    elif fn in (F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean):
        b.pool(name, _elements(node.args[0]), _elements(node), "avg")
    elif fn is F.max_pool2d:
        b.pool(name, _elements(node.args[0]), _elements(node), "max")
    elif fn not in _FREE_FUNCTIONS:
        unsupported.append((name, getattr(fn, "__name__", str(fn))))
