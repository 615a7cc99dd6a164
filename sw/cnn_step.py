"""One BDWP training iteration of a small residual CNN with its convolutions, linear layer, residual add, ReLU
gradients and weight updates on the accelerator, as a sequence of programs.

The network (:class:`SmallCNN`, the torch reference; batch norms without affine parameters)::

    h1 = relu(bn1(conv1(x)))                       conv1 8→8 3×3, dense (BDWP's first layer)
    h2 = relu(bn2(conv2(h1)) + h1)                 conv2 8→8 3×3, BDWP n:m
    h3 = relu(conv3(h2))                           conv3 8→16 3×3 stride 2, BDWP n:m
    logits = fc(avgpool(h3))                       fc 16→classes, dense (BDWP's last layer)
    loss = cross_entropy(logits, labels)

On the accelerator (:func:`cnn_iteration`, one program per piece of work, run by a ``runner``):
convolutions' FF, BP and WU as kernel walks (``nmsat.dataflow.conv``; ReLU fused into conv3's STOREs; WU
over transposed tiles), the batch norms forward and backward (``nmsat.dataflow.norm``: fp32 batch statistics
as a 1×1 WU walk, the normalisation as a 1×1 FF walk with the following ReLU in its STOREs, bn2's walk adding
the residual too), the fc layer's three GEMMs, the fork's gradient sum as VECTOR ADD, the ReLU gradients as
VECTOR RELU_GRAD, and per layer WEIGHT_UPDATE then the SPARSIFYs of its next forms
(``nmsat.dataflow.sparsify.compile_weight_update``).

The sparse layers' FF and BP walks read the forms the sparsifier writes from the master weights in the
same program (``compile_sparsified_walk``, ``compile_sparsified_bp_walk``: BP's A a LOAD per tap from the
records of the flipped taps).  On the host (named, not charged here; ``nmsat.sw.iteration`` charges them by
the stream rule): the batch norms' O(C) per-channel coefficients between their two walks (fp32, the rule of
``nmsat.dataflow.norm``), the softmax cross-entropy and its gradient, and moving tensors between programs
(each program has its own memory image; the norms' inputs stacked with constant-one channels).  The dense
first layer's FF walk reads the m:m form the sparsifier writes (every value kept, in order); the average pool
and its gradient are the FF and BP walks of a convolution whose taps take each channel to itself with weight
bf16(1/P).  Activations between programs are bf16, as the STOREs leave them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch.nn.functional as F
from torch import nn

from ..dataflow import conv, norm
from ..dataflow.gemm import compile_gemm, read_c
from ..dataflow.sparsify import compile_weight_update, read_master
from ..dataflow.vector import compile_vector, read_array
from ..hw.config import SATConfig
from ..hw.isa import VectorFunc
from ..hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits
from ..sim.core import CoreModel
from .bdwp import BDWPConv2d

__all__ = ["SmallCNN", "NAMES", "Job", "sim_runner", "cnn_iteration", "CnnState", "IterationResult"]

#: the layers with weights, in forward order
NAMES = ("conv1", "conv2", "conv3", "fc")


class SmallCNN(nn.Module):
    """The torch reference of :func:`cnn_iteration` (see the module docstring)."""

    def __init__(self, n: int = 2, m: int = 8, channels: int = 8, classes: int = 4):
        super().__init__()
        c = channels
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c, affine=False)
        self.conv2 = BDWPConv2d(c, c, 3, padding=1, bias=False, n=n, m=m)
        self.bn2 = nn.BatchNorm2d(c, affine=False)
        self.conv3 = BDWPConv2d(c, 2 * c, 3, stride=2, padding=1, bias=False, n=n, m=m)
        self.fc = nn.Linear(2 * c, classes, bias=False)

    def forward(self, x):
        h1 = F.relu(self.bn1(self.conv1(x)))
        h2 = F.relu(self.bn2(self.conv2(h1)) + h1)
        h3 = F.relu(self.conv3(h2))
        return self.fc(h3.mean(dim=(2, 3)))


@dataclass
class Job:
    """One program on its own memory image: runs ``(program_addr, length)`` in order, registers written first."""

    name: str
    memory: np.ndarray
    runs: list[tuple[int, int]]
    registers: dict = field(default_factory=dict)


def sim_runner(cfg: SATConfig, jobs: list | None = None) -> Callable[[Job], np.ndarray]:
    """A runner on the simulator: returns the memory after the job; records ``(job, its input image, the
    result)`` in ``jobs`` if given (to replay them through the RTL)."""
    core = CoreModel(cfg)

    def run(job: Job) -> np.ndarray:
        for reg, value in job.registers.items():
            core.write_csr(reg, value)
        memory = job.memory.copy()
        result = core.run_sequence(memory, job.runs)
        if not (result.ok and result.race_free):
            raise RuntimeError(f"{job.name}: {result.status.name} {result.error.name} {result.hazards[:2]}")
        if jobs is not None:
            jobs.append((job, memory, result))
        return memory
    return run


@dataclass
class CnnState:
    """fp32 master weights and momenta of the four layers (conv weights ``[Cout, Cin, 3, 3]``, fc ``[classes, C]``)."""

    weights: dict[str, np.ndarray]
    momenta: dict[str, np.ndarray]


@dataclass
class IterationResult:
    loss: float
    state: CnnState
    grads: dict[str, np.ndarray]


def _bits(x: np.ndarray) -> np.ndarray:
    return f32_to_bf16_bits(np.asarray(x, np.float32))


def _f32(bits: np.ndarray) -> np.ndarray:
    return bf16_bits_to_f32(bits)


def _as_gemm(weight: np.ndarray) -> np.ndarray:
    """Conv weight ``[Cout, Cin, kh, kw]`` → ``[Cout, K]`` in BDWP's K order (tap-major, channels innermost)."""
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1))


def _from_gemm(w: np.ndarray, shape) -> np.ndarray:
    cout, cin, kh, kw = shape
    return np.ascontiguousarray(w.reshape(cout, kh, kw, cin).transpose(0, 3, 1, 2))


def cnn_iteration(cfg: SATConfig, state: CnnState, x: np.ndarray, labels: np.ndarray, run: Callable[[Job], np.ndarray],
                  *, n: int = 2, m: int = 8, lr: float, momentum: float, weight_decay: float,
                  trace: dict | None = None) -> IterationResult:
    """One training iteration of :class:`SmallCNN` (weights in ``state``) on a batch ``x [N, C, H, W]``;
    ``trace`` collects the intermediate tensors by name (fp32)."""
    w = state.weights
    batch, c, size, _ = x.shape
    pattern = (n, m)

    def walk(name, walks, src, bits, dst, pat, relu=False):
        prog = conv.compile_walks(cfg, walks, src, bits, dst, pat, relu=relu)
        memory = run(Job(name, prog.memory, list(prog.runs)))
        return prog.read_output(memory)

    def ff(name, weight, bits, stride, pat, relu=False):
        # the sparsifier writes the FF form from the master weights and the walk reads it; a dense layer's
        # form is the m:m one (every value kept, in order: the dense walk's products in the dense walk's order)
        prog = conv.compile_sparsified_walk(cfg, weight, bits, *(pat or (m, m)), stride=stride, padding=1, relu=relu)
        memory = run(Job(f"{name} FF", prog.memory, list(prog.runs)))
        return prog.read_output(memory)

    def bp(name, weight, dy_bits, size_in, stride, pat):
        if pat is not None:  # the sparsifier writes the BP form from the master weights, the walks read it
            prog = conv.compile_sparsified_bp_walk(cfg, weight, dy_bits, *pat, size_in, stride=stride, padding=1)
            memory = run(Job(f"{name} BP", prog.memory, list(prog.runs)))
            return prog.read_output(memory)
        ho = dy_bits.shape[-1]
        return walk(f"{name} BP", conv.bp_walks(weight, size_in, size_in, stride, 1, 1),
                    conv.ActLayout(batch, weight.shape[0], ho, ho, conv.bp_pad(3, stride, 1, 1), c), dy_bits,
                    conv.ActLayout(batch, weight.shape[1], size_in, size_in, 0, cfg.rows), pat)

    def gemm(name, a, b, out_bf16=False):
        prog = compile_gemm(cfg, a, b, out_bf16=out_bf16)
        memory = run(Job(name, prog.memory, list(prog.runs)))
        return read_c(prog, memory)

    def vector(name, func, x_bits, y_bits):
        prog = compile_vector(cfg, func, x_bits, y_bits)
        memory = run(Job(name, prog.memory, [(prog.program_addr, prog.length)]))
        return read_array(prog, memory).reshape(x_bits.shape)

    def pool_kernel(channels, size):
        """Global average pooling as a convolution: tap weights bf16(1/P) from each channel to itself."""
        kernel = np.zeros((channels, channels, size, size), np.float32)
        kernel[np.arange(channels), np.arange(channels)] = _f32(_bits(np.float32(1.0 / (size * size))))
        return kernel

    def avgpool(name, bits):
        """The mean over each channel's pixels, as one walk: Σ x·bf16(1/P) in fp32, stored bf16."""
        channels, size = bits.shape[1], bits.shape[-1]
        kernel = pool_kernel(channels, size)
        plan, = conv.plan_conv(cfg, batch, channels, channels, size, size, weight=kernel)
        return walk(name, [plan.walk], plan.src, bits, plan.dst, None)[:, :, 0, 0]

    def avgpool_grad(name, dpooled_bits, size):
        """Its gradient, the BP walk of that convolution: each pixel gets dY·bf16(1/P)."""
        channels = dpooled_bits.shape[1]
        kernel = pool_kernel(channels, size)
        plans = conv.plan_conv(cfg, batch, channels, channels, size, size, direction="BP", weight=kernel)
        return walk(name, [p.walk for p in plans], plans[0].src, dpooled_bits[:, :, None, None], plans[0].dst, None)

    def batch_norm(name, y_bits, residual=None):
        """relu(bn(y) [+ residual]): the batch statistics, then the normalisation, ReLU in its STOREs."""
        sums = norm.compile_channel_sums(cfg, y_bits, y_bits)
        memory = run(Job(f"{name} stats", sums.memory, list(sums.runs)))
        coef = norm.bn_coefficients(*sums.read(memory), batch * y_bits.shape[2] * y_bits.shape[3])
        terms = [(y_bits, coef.rstd)] + ([(residual, None)] if residual is not None else [])
        prog = norm.compile_channel_affine(cfg, terms, coef.shift, relu=True)
        memory = run(Job(f"{name} apply", prog.memory, list(prog.runs)))
        return prog.read(memory), coef

    def batch_norm_grad(name, dout_bits, y_bits, coef):
        """The input gradient of bn (``y`` its input): the gradient's sums, then ``a·dout + b·y + c``."""
        sums = norm.compile_channel_sums(cfg, dout_bits, y_bits)
        memory = run(Job(f"{name} grad stats", sums.memory, list(sums.runs)))
        a, b, c = norm.bn_grad_coefficients(coef, *sums.read(memory))
        prog = norm.compile_channel_affine(cfg, [(dout_bits, a), (y_bits, b)], c)
        memory = run(Job(f"{name} grad apply", prog.memory, list(prog.runs)))
        return prog.read(memory)

    def conv_wu(name, dy_bits, x_bits, stride):
        """dW from transposed tiles of dY and X (a WU walk), fp32 ``[Cout, K]`` in BDWP's K order."""
        prog = conv.compile_wu(cfg, dy_bits, x_bits, 3, stride, 1)
        memory = run(Job(f"{name} WU", prog.memory, list(prog.runs)))
        return prog.read_grad(memory)

    # ---- forward
    x_bits = _bits(x)
    y1 = ff("conv1", w["conv1"], x_bits, 1, None)
    h1, bn1 = batch_norm("bn1", y1)
    y2 = ff("conv2", w["conv2"], h1, 1, pattern)
    h2, bn2 = batch_norm("bn2", y2, residual=h1)  # the residual add in the same walk
    h3 = ff("conv3", w["conv3"], h2, 2, pattern, relu=True)  # ReLU in the STOREs
    pooled = _f32(avgpool("avgpool", h3))  # [N, 2c]
    logits = gemm("fc FF", w["fc"], pooled.T)  # [classes, N]
    z = logits - logits.max(axis=0, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=0, keepdims=True)
    loss = float(-np.log(p[labels, np.arange(batch)]).mean())
    dlogits = p.copy()
    dlogits[labels, np.arange(batch)] -= 1.0
    dlogits = (dlogits / batch).astype(np.float32)
    # ---- backward
    grads = {"fc": gemm("fc WU", dlogits, pooled)}
    dpooled = gemm("fc BP", w["fc"].T, dlogits)  # [2c, N]
    dh3 = avgpool_grad("avgpool grad", _bits(dpooled.T), h3.shape[-1])
    dy3 = vector("conv3 relu grad", VectorFunc.RELU_GRAD, dh3, h3)
    grads["conv3"] = conv_wu("conv3", dy3, h2, 2)
    dh2 = bp("conv3", w["conv3"], dy3, size, 2, pattern)
    ds2 = vector("block relu grad", VectorFunc.RELU_GRAD, dh2, h2)
    dy2 = batch_norm_grad("bn2", ds2, y2, bn2)
    grads["conv2"] = conv_wu("conv2", dy2, h1, 1)
    dh1_conv = bp("conv2", w["conv2"], dy2, size, 1, pattern)
    dh1 = vector("fork grad add", VectorFunc.ADD, dh1_conv, ds2)
    dr1 = vector("conv1 relu grad", VectorFunc.RELU_GRAD, dh1, h1)
    dy1 = batch_norm_grad("bn1", dr1, y1, bn1)
    grads["conv1"] = conv_wu("conv1", dy1, x_bits, 1)
    if trace is not None:
        trace.update({k: _f32(v) if v.dtype == np.uint16 else v for k, v in dict(
            y1=y1, h1=h1, y2=y2, h2=h2, h3=h3, logits=logits, dh3=dh3, dy3=dy3, dh2=dh2, ds2=ds2, dy2=dy2,
            dh1=dh1, dy1=dy1).items()})
    # ---- updates (and the next forms) on the accelerator
    new_w, new_v = {}, {}
    for name, gw in grads.items():
        shape = w[name].shape
        flat = (lambda a: _as_gemm(a)) if len(shape) == 4 else (lambda a: a)
        layer_n, layer_m = (n, m) if name in ("conv2", "conv3") else (m, m)
        prog = compile_weight_update(cfg, flat(w[name]), flat(state.momenta[name]), gw, layer_n, layer_m, lr=lr,
                                     momentum=momentum, weight_decay=weight_decay)
        memory = run(Job(f"{name} update", prog.memory, [(prog.program_addr, prog.length)], prog.registers))
        weights, moms = read_master(prog.layout, memory), read_master(prog.layout, memory, prog.v_addr)
        unflat = (lambda a: _from_gemm(a, shape)) if len(shape) == 4 else (lambda a: a)
        new_w[name], new_v[name] = unflat(weights), unflat(moms)
        grads[name] = unflat(gw)
    return IterationResult(loss, CnnState(new_w, new_v), grads)
