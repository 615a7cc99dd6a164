"""PyTorch offload of a model's Linear and Conv2d layers (BDWP's and dense ones) to the accelerator.

:func:`offload` swaps each ``nn.Linear`` / ``nn.Conv2d`` (``BDWPLinear`` /
``BDWPConv2d`` with their N:M pattern, the others dense) for a module that
runs its forward pass (FF), input gradient (BP) and weight gradient (WU) as
``torch.library`` custom ops (``nmsat::linear_ff`` ... ``nmsat::conv_wu``,
with fake kernels, so ``torch.compile`` traces them) on a target:

* ``reference``: PyTorch in fp32 with BDWP's masks (the semantics of ``nmsat.sw.bdwp``);
* ``sim``, ``rtl``, ``fpga``: the compiler's GEMMs (``nmsat.dataflow.gemm``:
  BDWP's FF and BP as SPARSE_GEMMs of the pattern, the weight gradient dense)
  run through the driver on the ``sim``, ``verilator`` or ``xdma`` transport.
  Operands are rounded to bf16, products accumulate in fp32 (the core's
  numerics rule).  A convolution is lowered to GEMMs with im2col and col2im
  on the host (K tap-major, channels innermost, as BDWP's groups need), so
  any stride, padding and dilation runs; grouped convolutions stay on the CPU.

The parameters stay the module's own (an optimiser steps them on the
host); biases, SR-STE's decay term and every other layer run in PyTorch,
and :func:`offload` names the layers it leaves on the CPU in one warning.
``Offload.cycles`` holds the core's cycles per layer and pass after a step.

Not here: the training-iteration programs of ``nmsat.sw.cnn_step`` (kernel
walks, weight update on the accelerator), the timing of whole models
(``nmsat.sw.simulate``).
"""

from __future__ import annotations

import itertools
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..dataflow.gemm import compile_gemm, compile_sparse_gemm, read_c
from ..hw.config import SATConfig
from .bdwp import BDWPConv2d, BDWPLinear, bp_mask, conv_weight_as_gemm, ff_mask, gemm_as_conv_weight
from ..sim.core import CoreModel
from .driver import DEFAULT_MAX_CYCLES, Device, DeviceTimeout

__all__ = ["TARGETS", "Offload", "OffloadedLinear", "OffloadedConv2d", "offload"]

#: where the layers can run, and the driver transport behind each accelerator target
TARGETS = ("reference", "sim", "rtl", "fpga")
_TRANSPORTS = {"sim": "sim", "rtl": "verilator", "fpga": "xdma"}

_SESSIONS: dict[str, "Offload"] = {}
_IDS = itertools.count()


@dataclass
class Offload:
    """One offload session: a target, its config and device, the cycles per layer (``{layer: {"FF": ...}}``)."""

    target: str
    cfg: SATConfig
    key: str
    device: Device | None = None
    cycles: dict = field(default_factory=lambda: defaultdict(lambda: {"FF": 0, "BP": 0, "WU": 0}))
    on_cpu: list[str] = field(default_factory=list)
    transport_options: dict = field(default_factory=dict)
    _timer: CoreModel | None = field(default=None, repr=False)

    def close(self) -> None:
        """Release the device and forget the session (its layers then raise a clear error)."""
        if self.device is not None:
            self.device.close()
            self.device = None
        _SESSIONS.pop(self.key, None)

    def reset_cycles(self) -> None:
        self.cycles.clear()

    def table(self) -> str:
        """The cycles of each offloaded layer since the last reset, FF/BP/WU."""
        lines = [f"{'layer':<28} {'FF':>12} {'BP':>12} {'WU':>12}"]
        for name, c in self.cycles.items():
            lines.append(f"{name:<28} {c['FF']:>12,} {c['BP']:>12,} {c['WU']:>12,}")
        total = {s: sum(c[s] for c in self.cycles.values()) for s in ("FF", "BP", "WU")}
        lines.append(f"{'total':<28} {total['FF']:>12,} {total['BP']:>12,} {total['WU']:>12,}")
        return "\n".join(lines)

    # ------------------------------------------------------------ GEMMs on the accelerator

    def _open(self, nbytes: int) -> Device:
        """The device, with a memory of at least ``nbytes`` (regrown by resizing, or reopened)."""
        from .transports import open_transport

        if self.device is None:
            options = dict(self.transport_options)
            if self.target != "fpga":  # the card has its whole memory; the models start small and grow
                options.setdefault("memory_size", max(nbytes, 1 << 20))
            self.device = Device(self.cfg, open_transport(_TRANSPORTS[self.target], self.cfg, **options))
        elif self.device.memory_size < nbytes:
            resize = getattr(self.device.transport, "resize", None)
            if resize is None:
                raise ValueError(f"{self.target}: a {nbytes}-byte image does not fit the device's "
                                 f"{self.device.memory_size} bytes")
            resize(nbytes)
        return self.device

    def gemm(self, layer: str, stage: str, a: np.ndarray, b: np.ndarray, pattern) -> np.ndarray:
        """``C = A · B`` on the device (A pruned N:M along K if ``pattern``), fp32; cycles recorded."""
        prog = (compile_sparse_gemm(self.cfg, a, b, *pattern) if pattern else compile_gemm(self.cfg, a, b))
        device = self._open(prog.memory.size)
        limit = DEFAULT_MAX_CYCLES
        if self.target != "sim":  # the hardware's bound: twice what the simulator says the runs take
            if self._timer is None:
                self._timer = CoreModel(self.cfg)
            limit = 2 * self._timer.time_programs(prog.run_words).cycles + 100_000
        try:
            out = device.run_image(prog.memory, prog.runs, max_cycles=limit)
        except DeviceTimeout:
            if hasattr(device.transport, "reset"):
                device.reset()  # the next layer's run finds the core idle
            raise
        self.cycles[layer][stage] += out.cycles
        return read_c(prog, out.memory[:prog.memory.size])


def _session(key: str) -> Offload:
    try:
        return _SESSIONS[key]
    except KeyError:
        raise ValueError(f"nmsat offload session {key!r} is closed or unknown") from None


def _pattern(n: int, m: int):
    return (n, m) if n < m else None


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


# ---------------------------------------------------------------- linear: Y = X Wᵀ, dX = dY W, dW = dYᵀ X

@torch.library.custom_op("nmsat::linear_ff", mutates_args=())
def linear_ff(x: torch.Tensor, w: torch.Tensor, n: int, m: int, decay: float, session: str,
              layer: str) -> torch.Tensor:
    s = _session(session)
    if s.target == "reference":
        return F.linear(x, w * ff_mask(w, n, m) if n < m else w)
    c = s.gemm(layer, "FF", _f32(w), _f32(x).T, _pattern(n, m))  # [Cout, tokens]
    return torch.from_numpy(np.ascontiguousarray(c.T)).to(x.device, x.dtype)


@linear_ff.register_fake
def _(x, w, n, m, decay, session, layer):
    return x.new_empty((x.shape[0], w.shape[0]))


@torch.library.custom_op("nmsat::linear_bp", mutates_args=())
def linear_bp(dy: torch.Tensor, w: torch.Tensor, n: int, m: int, session: str, layer: str) -> torch.Tensor:
    s = _session(session)
    if s.target == "reference":
        return dy @ (w * bp_mask(w, n, m) if n < m else w)
    c = s.gemm(layer, "BP", _f32(w).T, _f32(dy).T, _pattern(n, m))  # [K, tokens]: Wᵀ pruned along Cout
    return torch.from_numpy(np.ascontiguousarray(c.T)).to(dy.device, dy.dtype)


@linear_bp.register_fake
def _(dy, w, n, m, session, layer):
    return dy.new_empty((dy.shape[0], w.shape[1]))


@torch.library.custom_op("nmsat::linear_wu", mutates_args=())
def linear_wu(dy: torch.Tensor, x: torch.Tensor, session: str, layer: str) -> torch.Tensor:
    s = _session(session)
    if s.target == "reference":
        return dy.t() @ x
    return torch.from_numpy(s.gemm(layer, "WU", _f32(dy).T, _f32(x), None)).to(dy.device, dy.dtype)  # [Cout, K]


@linear_wu.register_fake
def _(dy, x, session, layer):
    return dy.new_empty((dy.shape[1], x.shape[1]))


def _linear_setup(ctx, inputs, output):
    x, w, n, m, decay, session, layer = inputs
    ctx.save_for_backward(x, w)
    ctx.conf = (n, m, decay, session, layer)


def _decay_term(dw, w, n, m, decay):
    """SR-STE's ``λ·(1−Mf)·W`` on the weight gradient (BDWP's rule, on the host)."""
    return dw + decay * (~ff_mask(w, n, m)) * w if decay and n < m else dw


def _linear_backward(ctx, dy):
    x, w = ctx.saved_tensors
    n, m, decay, session, layer = ctx.conf
    dx = torch.ops.nmsat.linear_bp(dy, w, n, m, session, layer) if ctx.needs_input_grad[0] else None
    dw = None
    if ctx.needs_input_grad[1]:
        dw = _decay_term(torch.ops.nmsat.linear_wu(dy, x, session, layer), w, n, m, decay)
    return dx, dw, None, None, None, None, None


linear_ff.register_autograd(_linear_backward, setup_context=_linear_setup)


# ---------------------------------------------------------------- conv2d as GEMMs over im2col columns

def _columns(x: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """``[K, N·L]`` im2col columns, K tap-major with channels innermost (BDWP's order)."""
    n, cin = x.shape[:2]
    cols = F.unfold(x, kernel, dilation, padding, stride)  # [N, Cin·taps, L], channel-major
    taps = kernel[0] * kernel[1]
    return cols.reshape(n, cin, taps, -1).permute(2, 1, 0, 3).reshape(taps * cin, -1)


def _fold(cols: torch.Tensor, shape, kernel, stride, padding, dilation) -> torch.Tensor:
    """col2im of ``[K, N·L]`` columns (BDWP's K order) into ``[N, Cin, H, W]``."""
    n, cin, h, w = shape
    taps = kernel[0] * kernel[1]
    cols = cols.reshape(taps, cin, n, -1).permute(2, 1, 0, 3).reshape(n, cin * taps, -1)
    return F.fold(cols, (h, w), kernel, dilation, padding, stride)


def _out_size(x_shape, kernel, stride, padding, dilation):
    return tuple((x_shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                 for i in range(2))


@torch.library.custom_op("nmsat::conv_ff", mutates_args=())
def conv_ff(x: torch.Tensor, w: torch.Tensor, n: int, m: int, decay: float, stride: list[int], padding: list[int],
            dilation: list[int], session: str, layer: str) -> torch.Tensor:
    s = _session(session)
    if s.target == "reference":
        return F.conv2d(x, w * ff_mask(w, n, m) if n < m else w, None, stride, padding, dilation)
    kernel = tuple(w.shape[2:])
    ho, wo = _out_size(x.shape, kernel, stride, padding, dilation)
    a = _f32(conv_weight_as_gemm(w, 1)[0])  # [Cout, K]
    c = s.gemm(layer, "FF", a, _f32(_columns(x, kernel, stride, padding, dilation)), _pattern(n, m))
    y = torch.from_numpy(c).reshape(w.shape[0], x.shape[0], ho, wo).permute(1, 0, 2, 3)
    return y.contiguous().to(x.device, x.dtype)


@conv_ff.register_fake
def _(x, w, n, m, decay, stride, padding, dilation, session, layer):
    ho, wo = _out_size(x.shape, tuple(w.shape[2:]), stride, padding, dilation)
    return x.new_empty((x.shape[0], w.shape[0], ho, wo))


@torch.library.custom_op("nmsat::conv_bp", mutates_args=())
def conv_bp(dy: torch.Tensor, w: torch.Tensor, x_shape: list[int], n: int, m: int, stride: list[int],
            padding: list[int], dilation: list[int], session: str, layer: str) -> torch.Tensor:
    s = _session(session)
    if s.target == "reference":
        wb = w * bp_mask(w, n, m) if n < m else w
        return torch.nn.grad.conv2d_input(x_shape, wb, dy, stride, padding, dilation)
    kernel = tuple(w.shape[2:])
    a = _f32(conv_weight_as_gemm(w, 1)[0]).T  # [K, Cout], pruned along Cout
    dy_mat = _f32(dy.permute(1, 0, 2, 3).reshape(w.shape[0], -1))  # [Cout, N·L]
    cols = torch.from_numpy(s.gemm(layer, "BP", a, dy_mat, _pattern(n, m)))
    return _fold(cols, x_shape, kernel, stride, padding, dilation).to(dy.device, dy.dtype)


@conv_bp.register_fake
def _(dy, w, x_shape, n, m, stride, padding, dilation, session, layer):
    return dy.new_empty(x_shape)


@torch.library.custom_op("nmsat::conv_wu", mutates_args=())
def conv_wu(dy: torch.Tensor, x: torch.Tensor, w_shape: list[int], stride: list[int], padding: list[int],
            dilation: list[int], session: str, layer: str) -> torch.Tensor:
    s = _session(session)
    if s.target == "reference":
        return torch.nn.grad.conv2d_weight(x, w_shape, dy, stride, padding, dilation)
    kernel = tuple(w_shape[2:])
    dy_mat = _f32(dy.permute(1, 0, 2, 3).reshape(w_shape[0], -1))  # [Cout, N·L]
    cols = _f32(_columns(x, kernel, stride, padding, dilation)).T  # [N·L, K]
    dw = torch.from_numpy(s.gemm(layer, "WU", dy_mat, cols, None))
    return gemm_as_conv_weight(dw.unsqueeze(0), torch.Size(w_shape)).contiguous().to(dy.device, dy.dtype)


@conv_wu.register_fake
def _(dy, x, w_shape, stride, padding, dilation, session, layer):
    return dy.new_empty(w_shape)


def _conv_setup(ctx, inputs, output):
    x, w, n, m, decay, stride, padding, dilation, session, layer = inputs
    ctx.save_for_backward(x, w)
    ctx.conf = (n, m, decay, stride, padding, dilation, session, layer)


def _conv_backward(ctx, dy):
    x, w = ctx.saved_tensors
    n, m, decay, stride, padding, dilation, session, layer = ctx.conf
    dy = dy.contiguous()
    dx = (torch.ops.nmsat.conv_bp(dy, w, list(x.shape), n, m, stride, padding, dilation, session, layer)
          if ctx.needs_input_grad[0] else None)
    dw = None
    if ctx.needs_input_grad[1]:
        dw = _decay_term(torch.ops.nmsat.conv_wu(dy, x, list(w.shape), stride, padding, dilation, session, layer),
                         w, n, m, decay)
    return dx, dw, None, None, None, None, None, None, None, None


conv_ff.register_autograd(_conv_backward, setup_context=_conv_setup)


# ---------------------------------------------------------------- modules

class _Offloaded(nn.Module):
    """Shared by the offloaded layers: the original's parameters, pattern and decay, the session and name."""

    def __init__(self, original: nn.Module, session: Offload, name: str):
        super().__init__()
        self.weight, self.bias = original.weight, original.bias
        self.n, self.m = (original.n, original.m) if isinstance(original, (BDWPLinear, BDWPConv2d)) else (1, 1)
        self.decay = getattr(original, "decay", 0.0)
        self.session, self.layer = session, name

    def extra_repr(self) -> str:
        pattern = f"{self.n}:{self.m}" if self.n < self.m else "dense"
        return f"{self.layer!r}, {pattern}, target={self.session.target}"


class OffloadedLinear(_Offloaded):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.nmsat.linear_ff(x.reshape(-1, shape[-1]), self.weight, self.n, self.m, self.decay,
                                      self.session.key, self.layer)
        y = y.reshape(*shape[:-1], self.weight.shape[0])
        return y if self.bias is None else y + self.bias


class OffloadedConv2d(_Offloaded):
    def __init__(self, original: nn.Conv2d, session: Offload, name: str):
        super().__init__(original, session, name)
        self.stride, self.padding, self.dilation = list(original.stride), list(original.padding), list(original.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.nmsat.conv_ff(x.contiguous(), self.weight, self.n, self.m, self.decay, self.stride,
                                    self.padding, self.dilation, self.session.key, self.layer)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


def _offloadable(module: nn.Module) -> str | None:
    """Why ``module`` cannot be offloaded (None: it can)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"groups={module.groups}"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return f"padding={module.padding!r}, {module.padding_mode}"
        return None
    if isinstance(module, nn.Linear):
        return None
    return "not a Linear or Conv2d"


def offload(model: nn.Module, target: str = "sim", cfg: SATConfig | None = None, **transport_options) -> Offload:
    """Swap ``model``'s Linear and Conv2d layers (in place) for offloaded ones on ``target``; returns the
    session (``.cycles`` per layer after a step, ``.on_cpu`` the layers left to PyTorch, named in a warning)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    cfg = cfg or (SATConfig.tiny() if target in ("sim", "rtl") else SATConfig.vcu1525())
    key = f"offload-{next(_IDS)}"
    session = Offload(target, cfg, key, transport_options=transport_options)
    if target in _TRANSPORTS:
        session._open(1 << 20)  # fail now, not in the first step, when the target is missing (no card, no tool)
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise ValueError("offload: the model is a single layer; put it in a container (nn.Sequential(layer)) "
                         "so that it can be swapped")
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            reason = _offloadable(module)
            if reason is None and getattr(module, "mask_interval", 1) != 1:
                reason = f"mask_interval={module.mask_interval} (offloaded layers take their masks afresh every call)"
            if reason is None:
                for (n, m) in ([(module.n, module.m)] if isinstance(module, (BDWPLinear, BDWPConv2d)) else []):
                    if m not in cfg.sparse_m:
                        reason = f"{n}:{m}: the {cfg.name} core runs M in {cfg.sparse_m}"
            if reason is None:
                cls = OffloadedConv2d if isinstance(module, nn.Conv2d) else OffloadedLinear
                _replace(model, name, cls(module, session, name))
                continue
            session.on_cpu.append(f"{name} ({type(module).__name__}: {reason})")
        elif not list(module.children()) and any(True for _ in module.parameters(recurse=False)) or \
                isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.MaxPool2d, nn.AvgPool2d,
                                    nn.AdaptiveAvgPool2d)):
            session.on_cpu.append(f"{name} ({type(module).__name__})")
    if session.on_cpu:
        warnings.warn(f"nmsat offload to {target}: these layers stay on the CPU: {', '.join(session.on_cpu)}",
                      stacklevel=2)
    _SESSIONS[key] = session
    return session


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
