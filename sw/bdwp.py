"""BDWP: bidirectional N:M weight pruning for training, in PyTorch.

What this module holds:

* :func:`nm_mask` -- the N:M magnitude mask with the tie and padding rules the
  hardware sparsifier reproduces bit for bit;
* :func:`ff_mask` / :func:`bp_mask` -- the two masks BDWP applies to one layer's
  weight, in the GEMM view ``W[Cout, K]`` (per conv group);
* :class:`BDWPLinear` and :class:`BDWPConv2d` -- drop-in replacements for
  ``nn.Linear`` / ``nn.Conv2d`` whose forward pass uses ``W`` pruned N:M along
  K, whose backward pass uses ``W`` pruned N:M along Cout for the input
  gradient, and whose weight gradient is dense (straight-through to the fp32
  master weights, optionally with SR-STE's decay);
* :func:`sparsify` -- swaps a model's layers for the BDWP ones.

What it does not hold: the MAC cost counter (:mod:`nmsat.sw.cost`) and anything
about the accelerator.

Ranking rule (one rule for software and hardware): an element's key is its bit
pattern with the sign bit cleared, read as an unsigned integer.  For finite
values this is exactly ``|w|``; it also ranks ``NaN`` above ``inf`` above every
finite value, and ``-0`` equal to ``+0``.  Equal keys go to the lower index.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "check_nm",
    "nm_mask",
    "conv_weight_as_gemm",
    "gemm_as_conv_weight",
    "ff_mask",
    "bp_mask",
    "BDWPLinear",
    "BDWPConv2d",
    "sparsify",
]


def check_nm(n: int, m: int) -> None:
    """Raise ``ValueError`` unless ``n`` and ``m`` describe a valid N:M pattern."""
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"N:M sparsity: {name} must be an int, got {value!r}")
    if m < 1:
        raise ValueError(f"N:M sparsity: m must be >= 1, got m={m}")
    if not 1 <= n <= m:
        raise ValueError(f"N:M sparsity: n must satisfy 1 <= n <= m, got n={n}, m={m}")


_MAGNITUDE_VIEW = {
    torch.float64: (torch.int64, 0x7FFF_FFFF_FFFF_FFFF),
    torch.float32: (torch.int32, 0x7FFF_FFFF),
    torch.bfloat16: (torch.int16, 0x7FFF),
    torch.float16: (torch.int16, 0x7FFF),
}


def _magnitude_key(x: torch.Tensor) -> torch.Tensor:
    """The ranking key: the bit pattern with the sign cleared (see module docs)."""
    if x.dtype not in _MAGNITUDE_VIEW:
        raise ValueError(f"nm_mask: unsupported dtype {x.dtype}; use a floating-point tensor")
    int_dtype, magnitude_bits = _MAGNITUDE_VIEW[x.dtype]
    # With the sign cleared the signed integer is non-negative, so signed
    # comparison orders keys like unsigned ones.
    return x.contiguous().view(int_dtype) & magnitude_bits


#: up to this m the rank comes from an m×m comparator network (the hardware's way); above it from a stable sort
_COMPARATOR_M = 16


def nm_mask(weight: torch.Tensor, n: int, m: int, dim: int = -1) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude elements of every ``m`` consecutive ones along ``dim``.

    Parameters
    ----------
    weight : floating-point tensor of any shape.
    n, m : the pattern, ``1 <= n <= m``.
    dim : the dimension along which groups of ``m`` run.

    Returns
    -------
    A ``torch.bool`` tensor of ``weight``'s shape.

    Ties go to the lower index.  If the length along ``dim`` is not a multiple
    of ``m``, the last group is padded with zeros that are never kept (a pad
    ranks below a real element of equal magnitude because it has a higher
    index), so a short last group of ``r`` elements keeps ``min(n, r)``.
    """
    check_nm(n, m)
    if weight.dim() == 0:
        raise ValueError("nm_mask: weight must have at least one dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -weight.dim() <= dim < weight.dim():
        raise IndexError(f"nm_mask: dimension out of range (expected to be in range of "
                         f"[{-weight.dim()}, {weight.dim() - 1}], but got {dim!r})")
    dim = dim % weight.dim()
    length = weight.shape[dim]
    key = _magnitude_key(weight.detach()).movedim(dim, -1)
    groups = math.ceil(length / m)
    pad = groups * m - length
    if pad:
        key = F.pad(key, (0, pad), value=0)
    key = key.reshape(*key.shape[:-1], groups, m)
    # rank[i] = #{j : key[j] > key[i]} + #{j < i : key[j] == key[i]}; keep rank < n.
    if m <= _COMPARATOR_M:
        # A comparator network, like the hardware sorter: O(m^2) per group.
        ki = key.unsqueeze(-1)  # [..., g, m, 1]  element i
        kj = key.unsqueeze(-2)  # [..., g, 1, m]  element j
        lower = torch.ones(m, m, dtype=torch.bool, device=weight.device).tril(-1)  # j < i
        beats = (kj > ki) | ((kj == ki) & lower)
        rank = beats.sum(dim=-1)
    else:
        # The same rank from a stable descending sort (equal keys keep their order): O(m log m), O(m) memory.
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(m, device=weight.device).expand_as(order))
    keep = (rank < n).reshape(*key.shape[:-2], groups * m)
    if pad:
        keep = keep[..., :length]
    return keep.movedim(-1, dim).contiguous()


# --------------------------------------------------------------------------- GEMM views


def conv_weight_as_gemm(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``[Cout, Cin/g, kh, kw]`` -> ``[g, Cout/g, kh*kw*Cin/g]``.

    K is ordered kernel-tap-major with input channels innermost (the NHWC
    order), within each conv group.
    """
    cout, cin_g, kh, kw = weight.shape
    return weight.reshape(groups, cout // groups, cin_g, kh, kw).permute(0, 1, 3, 4, 2).reshape(
        groups, cout // groups, kh * kw * cin_g
    )


def gemm_as_conv_weight(gemm: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`conv_weight_as_gemm` for a weight of ``shape``."""
    cout, cin_g, kh, kw = shape
    groups = gemm.shape[0]
    return gemm.reshape(groups, cout // groups, kh, kw, cin_g).permute(0, 1, 4, 2, 3).reshape(shape)


def _gemm_view(weight: torch.Tensor, groups: int) -> torch.Tensor:
    if weight.dim() == 2:
        return weight.unsqueeze(0)
    if weight.dim() == 4:
        return conv_weight_as_gemm(weight, groups)
    raise ValueError(f"BDWP masks need a linear [Cout, K] or conv [Cout, Cin/g, kh, kw] weight, got shape {tuple(weight.shape)}")


def _from_gemm_view(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() == 2:
        return mask.squeeze(0)
    return gemm_as_conv_weight(mask, weight.shape)


def ff_mask(weight: torch.Tensor, n: int, m: int, groups: int = 1) -> torch.Tensor:
    """Forward-pass mask: N:M along K (the reduction dim of ``Y = W X``), per conv group."""
    return _from_gemm_view(nm_mask(_gemm_view(weight, groups), n, m, dim=2), weight)


def bp_mask(weight: torch.Tensor, n: int, m: int, groups: int = 1) -> torch.Tensor:
    """Backward-pass mask: N:M along Cout (the reduction dim of ``dX = W^T dY``), per conv group."""
    return _from_gemm_view(nm_mask(_gemm_view(weight, groups), n, m, dim=1), weight)


# --------------------------------------------------------------------------- layers


class _BDWPMixin:
    """Mask bookkeeping shared by the BDWP layers (not a layer by itself)."""

    weight: nn.Parameter
    groups: int

    def _init_bdwp(self, n: int, m: int, decay: float, mask_interval: int) -> None:
        check_nm(n, m)
        if not (isinstance(decay, (int, float)) and not isinstance(decay, bool)) or decay < 0 or not math.isfinite(decay):
            raise ValueError(f"BDWP: decay must be a finite float >= 0, got {decay!r}")
        if isinstance(mask_interval, bool) or not isinstance(mask_interval, int) or mask_interval < 1:
            raise ValueError(f"BDWP: mask_interval must be an int >= 1, got {mask_interval!r}")
        self.n, self.m, self.decay, self.mask_interval = n, m, float(decay), mask_interval
        self._steps_since_mask = 0
        self._mask_weight_version = -1
        # Masks are derived state: not in the state dict, so the layer stays a drop-in.
        self.register_buffer("mask_ff", None, persistent=False)
        self.register_buffer("mask_bp", None, persistent=False)

    def refresh_masks(self) -> None:
        """Recompute both masks from the current weights."""
        with torch.no_grad():
            self.mask_ff = ff_mask(self.weight, self.n, self.m, self.groups)
            self.mask_bp = bp_mask(self.weight, self.n, self.m, self.groups)
        self._steps_since_mask = 0
        self._mask_weight_version = self.weight._version

    def _masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks for this call: recomputed when the weights changed since the last ones were made
        (in training mode only once ``mask_interval`` steps have passed; in eval mode always)."""
        stale = self.mask_ff is None or self.mask_ff.shape != self.weight.shape or self.mask_ff.device != self.weight.device
        changed = self.weight._version != self._mask_weight_version
        due = not self.training or self._steps_since_mask >= self.mask_interval
        if stale or (changed and due):
            self.refresh_masks()
        if self.training:
            self._steps_since_mask += 1
        return self.mask_ff, self.mask_bp

    def extra_repr(self) -> str:  # shown by print(model)
        return f"{super().extra_repr()}, n={self.n}, m={self.m}, decay={self.decay}"


class _BDWPLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mask_ff, mask_bp, decay):
        ctx.save_for_backward(x, weight, mask_ff, mask_bp)
        ctx.decay = decay
        ctx.has_bias = bias is not None
        return F.linear(x, weight * mask_ff, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mask_ff, mask_bp = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ (weight * mask_bp)  # BP: dX = dY · (W ⊙ Mb)
        if ctx.needs_input_grad[1]:
            gy = grad_y.reshape(-1, grad_y.shape[-1])
            grad_w = gy.t() @ x.reshape(-1, x.shape[-1])  # WU: dense dW = dYᵀ · X
            if ctx.decay:
                grad_w = grad_w + ctx.decay * (~mask_ff) * weight
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class BDWPLinear(_BDWPMixin, nn.Linear):
    """``nn.Linear`` trained with BDWP (same parameters, same state dict).

    ``n``, ``m``: the pattern; ``decay``: SR-STE's λ on the weights the forward
    mask prunes (0 disables it; the SR-STE code uses 2e-4); ``mask_interval``:
    recompute the masks every that many training steps (1 = every step).
    """

    groups = 1  # a linear layer is one GEMM

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, n: int = 2, m: int = 8,
                 decay: float = 0.0, mask_interval: int = 1, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_bdwp(n, m, decay, mask_interval)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask_ff, mask_bp = self._masks()
        return _BDWPLinearFunction.apply(x, self.weight, self.bias, mask_ff, mask_bp, self.decay)


def _same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) of padding='same' (extra goes right/bottom, as PyTorch does)."""
    pads = []
    for k, d in zip(reversed(kernel), reversed(dilation)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class _BDWPConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mask_ff, mask_bp, decay, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight, mask_ff, mask_bp)
        ctx.conf = (decay, stride, padding, dilation, groups, bias is not None)
        return F.conv2d(x, weight * mask_ff, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mask_ff, mask_bp = ctx.saved_tensors
        decay, stride, padding, dilation, groups, has_bias = ctx.conf
        # One call: dX from the BP-masked weight, dW dense from X and dY.
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_y.contiguous(), x, weight * mask_bp, [weight.shape[0]] if has_bias else None,
            list(stride), list(padding), list(dilation), False, [0, 0], groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]],
        )
        if grad_w is not None and decay:
            grad_w = grad_w + decay * (~mask_ff) * weight
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


class BDWPConv2d(_BDWPMixin, nn.Conv2d):
    """``nn.Conv2d`` trained with BDWP (same parameters, same state dict).

    K of the forward mask is ordered kernel-tap-major with input channels
    innermost, per conv group (:func:`conv_weight_as_gemm`); the backward mask
    runs along the output channels of each group.  ``n``, ``m``, ``decay`` and
    ``mask_interval`` as in :class:`BDWPLinear`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, n: int = 2, m: int = 8,
                 decay: float = 0.0, mask_interval: int = 1, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._init_bdwp(n, m, decay, mask_interval)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask_ff, mask_bp = self._masks()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        elif self.padding == "same":
            x = F.pad(x, _same_padding(self.kernel_size, self.dilation))
            padding = (0, 0)
        elif self.padding == "valid":
            padding = (0, 0)
        else:
            padding = self.padding
        return _BDWPConv2dFunction.apply(x, self.weight, self.bias, mask_ff, mask_bp, self.decay,
                                         self.stride, padding, self.dilation, self.groups)


# --------------------------------------------------------------------------- model surgery

DEFAULT_KEEP_DENSE = ("first", "last")


def _bdwp_from(module: nn.Module, n: int, m: int, decay: float, mask_interval: int) -> nn.Module:
    kwargs = dict(n=n, m=m, decay=decay, mask_interval=mask_interval,
                  device=module.weight.device, dtype=module.weight.dtype)
    if isinstance(module, nn.Linear):
        new = BDWPLinear(module.in_features, module.out_features, module.bias is not None, **kwargs)
    else:
        new = BDWPConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                         module.padding, module.dilation, module.groups, module.bias is not None,
                         module.padding_mode, **kwargs)
    new.load_state_dict(module.state_dict())
    new.train(module.training)
    return new


def sparsify(model: nn.Module, n: int = 2, m: int = 8, *, decay: float = 0.0, mask_interval: int = 1,
             keep_dense: Iterable[str] = DEFAULT_KEEP_DENSE,
             exclude: Callable[[str, nn.Module], bool] | None = None) -> nn.Module:
    """Replace the ``nn.Linear`` / ``nn.Conv2d`` layers of ``model`` by BDWP ones, in place.

    Weights and biases are kept.  Which layers stay dense:

    * ``keep_dense`` names, among ``"first"`` and ``"last"`` or qualified
      module names, the layers left dense.  ``"first"`` and ``"last"`` are the
      first and last eligible layers in registration order (``named_modules``),
      which for the usual models is execution order.  The default keeps both
      dense, as the N:M literature does: the first layer reads raw input with a
      small K (3·k·k for RGB) where pruning costs accuracy and saves almost no
      work, and the last is the small classifier whose error directly moves
      the logits.
    * ``exclude(name, module)``, if given, returns True for further layers to
      keep dense.

    Layers that are already BDWP are left alone.  Returns ``model``.
    """
    check_nm(n, m)
    keep_dense = set(keep_dense)
    eligible = [(name, mod) for name, mod in model.named_modules()
                if isinstance(mod, (nn.Linear, nn.Conv2d)) and not isinstance(mod, _BDWPMixin)]
    names = [name for name, _ in eligible]
    unknown = keep_dense - {"first", "last"} - set(names)
    if unknown:
        raise ValueError(f"sparsify: keep_dense names no Linear/Conv2d layer of the model: {sorted(unknown)}")
    dense = {name for name in keep_dense if name not in ("first", "last")}
    if names and "first" in keep_dense:
        dense.add(names[0])
    if names and "last" in keep_dense:
        dense.add(names[-1])
    converted = 0
    for name, mod in eligible:
        if name in dense or (exclude is not None and exclude(name, mod)):
            continue
        new = _bdwp_from(mod, n, m, decay, mask_interval)
        if name == "":
            raise ValueError("sparsify: the model is itself a single layer; wrap it in a container")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        converted += 1
    if not converted:
        already = sum(isinstance(mod, _BDWPMixin) for mod in model.modules())
        warnings.warn(f"sparsify: no layer was made {n}:{m} sparse: the model has {len(eligible)} dense "
                      f"Linear/Conv2d layer(s){f' (and {already} BDWP ones already)' if already else ''} and "
                      f"keep_dense={sorted(keep_dense)} keeps the first and last dense; pass keep_dense=() "
                      f"to make every layer sparse", stacklevel=2)
    return model
