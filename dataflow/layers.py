"""The GEMMs of a ``Linear`` or ``Conv2d`` training step: FF ``Y = W·X``, BP ``dX = Wᵀ·dY``, WU ``dW = dY·Xᵀ``.

Shapes only (numpy-free arithmetic): K is ordered kernel-tap-major,
channels innermost (the order of BDWP's masks), one GEMM per conv group
(packing small groups is planned, see ``docs/architecture.md``).

Not here: tiling (:mod:`nmsat.dataflow.gemm`), or running the GEMMs on data
(:mod:`nmsat.sw.stages`, the host side: im2col, the simulator, torch).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STAGES", "GemmShape", "linear_gemms", "conv2d_gemms", "conv_output_size"]

STAGES = ("FF", "BP", "WU")


@dataclass(frozen=True)
class GemmShape:
    """One GEMM ``[m, k] · [k, n]`` of a layer's training step (``count`` identical ones, e.g. conv groups)."""

    layer: str
    stage: str
    m: int
    n: int
    k: int
    count: int = 1

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k * self.count


def linear_gemms(name: str, tokens: int, in_features: int, out_features: int) -> list[GemmShape]:
    """FF, BP, WU of a linear layer over ``tokens`` rows of input."""
    return [GemmShape(name, "FF", out_features, tokens, in_features),
            GemmShape(name, "BP", in_features, tokens, out_features),
            GemmShape(name, "WU", out_features, in_features, tokens)]


def conv_output_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Output length of a convolution along one axis (torch's formula)."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def conv2d_gemms(name: str, batch: int, cin: int, cout: int, h: int, w: int, kernel: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1) -> list[GemmShape]:
    """FF, BP, WU of a convolution, per group: K = (cin/g)·k², P = batch·Hout·Wout."""
    if cin % groups or cout % groups:
        raise ValueError(f"conv {name}: groups={groups} must divide cin={cin} and cout={cout}")
    ho, wo = conv_output_size(h, kernel, stride, padding, dilation), conv_output_size(w, kernel, stride, padding, dilation)
    k = cin // groups * kernel * kernel
    p = batch * ho * wo
    cg = cout // groups
    return [GemmShape(name, "FF", cg, p, k, groups), GemmShape(name, "BP", k, p, cg, groups),
            GemmShape(name, "WU", cg, k, p, groups)]
