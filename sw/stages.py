"""One training stage of a ``Linear`` or ``Conv2d`` layer run on the simulator, as torch tensors.

Holds the host-side im2col / col2im that turn a convolution into the GEMMs
of :mod:`nmsat.dataflow.layers` (K ordered kernel-tap-major, channels
innermost: the order of BDWP's masks), :func:`run_gemm` (compile, run on a
:class:`~nmsat.sim.core.CoreModel`, read back) and the per-stage helpers.
Dense only: the N:M sparse mode comes later.

Not here: GEMM shapes and tiling (:mod:`nmsat.dataflow`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..dataflow.gemm import compile_gemm, compile_sparse_gemm, read_c
from ..dataflow.layers import STAGES, conv_output_size
from ..hw.config import SATConfig
from ..sim.core import CoreModel, RunResult

__all__ = ["im2col", "col2im", "run_gemm", "linear_stage", "conv2d_stage"]


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride, padding, dilation, groups: int) -> torch.Tensor:
    """``x[B, C, H, W]`` → ``[g, K, P]`` with K tap-major, channels innermost (per group), P = B·Hout·Wout."""
    b, c, _, _ = x.shape
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [B, C·kh·kw, L], C-major
    kk = kernel[0] * kernel[1]
    cg = c // groups
    cols = cols.reshape(b, groups, cg, kk, -1).permute(1, 3, 2, 0, 4)  # [g, taps, cg, B, L]
    return cols.reshape(groups, kk * cg, -1)


def col2im(cols: torch.Tensor, shape, kernel, stride, padding, dilation) -> torch.Tensor:
    """Inverse scatter-add of :func:`im2col`: ``[g, K, P]`` → ``[B, C, H, W]``."""
    b, c, h, w = shape
    groups = cols.shape[0]
    kk = kernel[0] * kernel[1]
    cg = c // groups
    cols = cols.reshape(groups, kk, cg, b, -1).permute(3, 0, 2, 1, 4).reshape(b, c * kk, -1)
    return F.fold(cols, (h, w), kernel, dilation=dilation, padding=padding, stride=stride)


def run_gemm(cfg: SATConfig, a: np.ndarray, b: np.ndarray, core: CoreModel | None = None, *,
             pattern: tuple[int, int] | None = None) -> tuple[np.ndarray, RunResult]:
    """``A · B`` on the simulator (operands rounded to bf16); returns fp32 ``C`` and the run's result.

    With ``pattern`` ``(n, m)``, A is pruned N:M along its rows (the reduction) and the GEMM is a SPARSE_GEMM.
    """
    a, b = np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)
    prog = compile_gemm(cfg, a, b) if pattern is None else compile_sparse_gemm(cfg, a, b, *pattern)
    memory = prog.memory.copy()
    result = (core or CoreModel(cfg)).run_sequence(memory, prog.runs)
    if not result.ok:
        raise RuntimeError(f"GEMM {a.shape}x{b.shape} stopped with {result.error.name} at instruction {result.error_pc}")
    return read_c(prog, memory).copy(), result


def linear_stage(cfg: SATConfig, stage: str, x: torch.Tensor, weight: torch.Tensor,
                 grad_y: torch.Tensor | None = None, *, pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """One training stage of ``y = x·Wᵀ`` on the simulator: FF → y, BP → dX, WU → dW (no bias).

    ``pattern`` ``(n, m)``: BDWP — FF uses W pruned N:M along K, BP W pruned along Cout (both SPARSE_GEMMs
    with the weight compressed); WU stays dense.
    """
    x2 = x.reshape(-1, x.shape[-1]).float().numpy()
    w = weight.detach().float().numpy()
    if stage == "FF":
        out, _ = run_gemm(cfg, w, x2.T, pattern=pattern)  # [out, tokens]
        return torch.from_numpy(out.T.copy()).reshape(*x.shape[:-1], w.shape[0])
    dy = grad_y.reshape(-1, grad_y.shape[-1]).float().numpy()
    if stage == "BP":
        out, _ = run_gemm(cfg, w.T, dy.T, pattern=pattern)  # [in, tokens]
        return torch.from_numpy(out.T.copy()).reshape(*x.shape)
    if stage == "WU":
        out, _ = run_gemm(cfg, dy.T, x2)  # [out, in]
        return torch.from_numpy(out)
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def conv2d_stage(cfg: SATConfig, stage: str, x: torch.Tensor, weight: torch.Tensor, *, stride=1, padding=0,
                 dilation=1, groups: int = 1, grad_y: torch.Tensor | None = None,
                 pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """One training stage of a convolution on the simulator (FF → y, BP → dX, WU → dW), one GEMM per group.

    ``pattern`` ``(n, m)``: BDWP — FF and BP are SPARSE_GEMMs with the weight pruned N:M along K (tap-major,
    channels innermost, per group) and along Cout (per group); WU stays dense.
    """
    from torch.nn.modules.utils import _pair

    from .bdwp import conv_weight_as_gemm, gemm_as_conv_weight

    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kernel = tuple(weight.shape[2:])
    cols = im2col(x.float(), kernel, stride, padding, dilation, groups)  # [g, K, P]
    wg = conv_weight_as_gemm(weight.detach().float(), groups)  # [g, Cout/g, K]
    b, cout = x.shape[0], weight.shape[0]
    ho = conv_output_size(x.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    wo = conv_output_size(x.shape[3], kernel[1], stride[1], padding[1], dilation[1])
    if stage == "FF":
        outs = [run_gemm(cfg, wg[g].numpy(), cols[g].numpy(), pattern=pattern)[0] for g in range(groups)]  # [Cout/g, P]
        y = torch.from_numpy(np.concatenate(outs, 0))  # [Cout, B·Ho·Wo]
        return y.reshape(cout, b, ho, wo).permute(1, 0, 2, 3).contiguous()
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    dy = grad_y.float().permute(1, 0, 2, 3).reshape(groups, cout // groups, -1)  # [g, Cout/g, P]
    if stage == "BP":
        outs = [run_gemm(cfg, wg[g].T.numpy(), dy[g].numpy(), pattern=pattern)[0] for g in range(groups)]  # [K, P]
        return col2im(torch.from_numpy(np.stack(outs)), tuple(x.shape), kernel, stride, padding, dilation)
    outs = [run_gemm(cfg, dy[g].numpy(), cols[g].T.numpy())[0] for g in range(groups)]  # [Cout/g, K]
    return gemm_as_conv_weight(torch.from_numpy(np.stack(outs)), weight.shape)
