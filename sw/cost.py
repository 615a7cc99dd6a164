"""MAC cost of one training step, dense against BDWP, per layer and per model.

Holds :func:`count_training_macs`, which runs one forward pass of a model with
hooks on its ``Linear``/``Conv2d`` layers and counts the multiply-accumulates
of the three GEMMs of training (FF, BP, WU) twice: as a dense accelerator would
do them, and as BDWP does them (FF and BP over the kept weights only, WU dense).
The ratio is the ideal speedup of BDWP (2.0× at 2:8 when every layer is
sparse).  It counts work, not cycles: cycles are the simulator's business.

BP is counted only for layers whose input needs a gradient (the first layer of
a network reads the data, so no accelerator computes its dX).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .bdwp import _BDWPMixin, ff_mask, bp_mask

__all__ = ["LayerCost", "CostReport", "count_training_macs"]


@dataclass(frozen=True)
class LayerCost:
    """MACs of one layer for one training step (dense and BDWP)."""

    name: str
    kind: str  # "linear" or "conv2d"
    pattern: str  # "dense" or "n:m"
    dense_ff: int
    dense_bp: int
    dense_wu: int
    bdwp_ff: int
    bdwp_bp: int
    bdwp_wu: int

    @property
    def dense_total(self) -> int:
        return self.dense_ff + self.dense_bp + self.dense_wu

    @property
    def bdwp_total(self) -> int:
        return self.bdwp_ff + self.bdwp_bp + self.bdwp_wu


@dataclass(frozen=True)
class CostReport:
    """Per-layer costs and the model totals."""

    layers: tuple[LayerCost, ...]

    @property
    def dense_total(self) -> int:
        return sum(layer.dense_total for layer in self.layers)

    @property
    def bdwp_total(self) -> int:
        return sum(layer.bdwp_total for layer in self.layers)

    @property
    def ideal_speedup(self) -> float:
        """Dense MACs over BDWP MACs: the speedup of a machine that skips every pruned MAC."""
        return self.dense_total / self.bdwp_total if self.bdwp_total else 1.0

    def table(self) -> str:
        """A plain-text table: one row per layer, then the totals."""
        head = f"{'layer':<24}{'kind':<8}{'pattern':<8}{'dense FF':>12}{'dense BP':>12}{'dense WU':>12}" \
               f"{'BDWP FF':>12}{'BDWP BP':>12}{'BDWP WU':>12}{'speedup':>9}"
        rows = [head]
        for c in self.layers:
            rows.append(f"{c.name:<24}{c.kind:<8}{c.pattern:<8}{c.dense_ff:>12}{c.dense_bp:>12}{c.dense_wu:>12}"
                        f"{c.bdwp_ff:>12}{c.bdwp_bp:>12}{c.bdwp_wu:>12}{c.dense_total / c.bdwp_total:>8.3f}x")
        rows.append(f"{'total':<40}{self.dense_total:>36}{self.bdwp_total:>36}{self.ideal_speedup:>8.3f}x")
        return "\n".join(rows)


def _layer_cost(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerCost:
    if isinstance(module, nn.Conv2d):
        kind, groups = "conv2d", module.groups
        positions = y.shape[0] * y.shape[2] * y.shape[3]  # B · Hout · Wout
    else:
        kind, groups = "linear", 1
        positions = y.numel() // y.shape[-1]  # every leading dim
    dense = positions * module.weight.numel()  # Σ over groups of Cout_g · K_g, per output position
    needs_bp = x.requires_grad
    if isinstance(module, _BDWPMixin):
        n, m = module.n, module.m
        pattern = f"{n}:{m}"
        kept_ff = int(ff_mask(module.weight, n, m, groups).sum())
        kept_bp = int(bp_mask(module.weight, n, m, groups).sum())
        sparse_ff, sparse_bp = positions * kept_ff, positions * kept_bp
    else:
        pattern = "dense"
        sparse_ff = sparse_bp = dense
    return LayerCost(name, kind, pattern, dense, dense if needs_bp else 0, dense,
                     sparse_ff, sparse_bp if needs_bp else 0, dense)


def count_training_macs(model: nn.Module, example_input: torch.Tensor) -> CostReport:
    """Count FF/BP/WU MACs of one training step on ``example_input`` (its batch size counts)."""
    costs: list[LayerCost] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            def hook(mod, inputs, output, name=name):
                costs.append(_layer_cost(name, mod, inputs[0], output))
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()  # no side effects: BatchNorm statistics and mask schedules stay as they were
    try:
        with torch.enable_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not costs:
        raise ValueError("count_training_macs: the model ran no nn.Linear or nn.Conv2d layer")
    return CostReport(tuple(costs))
