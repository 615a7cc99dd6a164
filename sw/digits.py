"""Dense against BDWP training of a small CNN on scikit-learn's ``load_digits``.

The data set (1,797 8×8 grey images of handwritten digits, 10 classes) ships
inside scikit-learn, so the experiment runs offline.  Holds the model, the
fixed train/test split, one training run, and the sweep over patterns and
seeds that ``nmsat train-digits`` prints.  Not a general trainer.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .bdwp import check_nm, sparsify
from .cost import count_training_macs

__all__ = ["DigitsCNN", "load_split", "train_once", "parse_pattern", "PatternResult", "sweep", "TargetTraining",
           "train_through"]


class DigitsCNN(nn.Module):
    """conv 1→32, conv 32→64, pool, conv 64→64, pool, fc 256→128, fc 128→10, with BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 2 * 2, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # 8×8 → 4×4
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)  # 4×4 → 2×2
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def load_split(test_fraction: float = 0.3, split_seed: int = 0):
    """The fixed stratified split, as float32 tensors ``(x_train, y_train, x_test, y_test)``, x in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=split_seed, stratify=y)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


def parse_pattern(text: str) -> tuple[int, int] | None:
    """``"dense"`` → None, ``"2:8"`` → (2, 8); anything else is a ``ValueError``."""
    if text.strip().lower() == "dense":
        return None
    try:
        n_text, m_text = text.split(":")
        n, m = int(n_text), int(m_text)
    except ValueError:
        raise ValueError(f"pattern must be 'dense' or 'N:M' with integers, got {text!r}") from None
    check_nm(n, m)
    return n, m


def train_once(pattern: tuple[int, int] | None, seed: int, data, *, epochs: int = 30, batch_size: int = 64,
               lr: float = 2e-3, decay: float = 0.0, on_epoch: Callable[[], None] | None = None,
               model_factory: Callable[[], nn.Module] = DigitsCNN) -> float:
    """Train one model (``model_factory()``, :class:`DigitsCNN` by default) from ``seed`` and return its test
    accuracy in percent."""
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = model_factory()
    if pattern is not None:
        sparsify(model, *pattern, decay=decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if on_epoch:
            on_epoch()
    model.eval()
    with torch.no_grad():
        return 100.0 * (model(x_te).argmax(1) == y_te).float().mean().item()


@dataclass(frozen=True)
class PatternResult:
    pattern: str
    accuracies: tuple[float, ...]
    ideal_speedup: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def sweep(patterns: Sequence[str], seeds: Sequence[int], *, epochs: int = 30, decay: float = 0.0,
          progress: bool = True) -> list[PatternResult]:
    """Train every pattern from every seed on the same split; returns one result per pattern."""
    parsed = [(p, parse_pattern(p)) for p in patterns]
    data = load_split()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(parsed) * len(seeds) * epochs, unit="epoch", desc="train-digits")
    results = []
    try:
        for text, pattern in parsed:
            accs = []
            for seed in seeds:
                if bar:
                    bar.set_postfix_str(f"{text} seed {seed}")
                accs.append(train_once(pattern, seed, data, epochs=epochs, decay=decay,
                                       on_epoch=bar.update if bar else None))
            model = DigitsCNN()
            if pattern is not None:
                sparsify(model, *pattern)
            speedup = count_training_macs(model, data[0][:64]).ideal_speedup
            results.append(PatternResult(text, tuple(accs), speedup))
    finally:
        if bar:
            bar.close()
    return results


def format_results(results: Sequence[PatternResult], seeds: Sequence[int]) -> str:
    """Markdown table: accuracy mean ± std over seeds, gap to dense, ideal speedup of the step."""
    dense = next((r for r in results if r.pattern == "dense"), None)
    lines = [f"| pattern | test accuracy % (mean ± std, {len(seeds)} seeds) | Δ vs dense (points) | ideal training speedup |",
             "|---|---|---|---|"]
    for r in results:
        gap = f"{r.mean - dense.mean:+.2f}" if dense else "n/a"
        lines.append(f"| {r.pattern} | {r.mean:.2f} ± {r.std:.2f} | {gap} | {r.ideal_speedup:.3f}× |")
    return "\n".join(lines)


@dataclass
class TargetTraining:
    """What :func:`train_through` did: steps, the test accuracy, the core's cycles of training and of the test
    pass (``{layer: {"FF", "BP", "WU"}}`` summed), the config, and the host's wall time."""

    target: str
    pattern: tuple[int, int] | None
    preset: str
    clock_mhz: float
    steps: int
    batch_size: int
    accuracy: float
    losses: list[float]
    train_cycles: dict[str, int]
    test_cycles: int
    wall_seconds: float

    @property
    def train_total(self) -> int:
        return sum(self.train_cycles.values())

    @property
    def simulated_seconds(self) -> float:
        return self.train_total / (self.clock_mhz * 1e6)


def train_through(target: str, pattern: tuple[int, int] | None, *, cfg=None, epochs: int = 1,
                  max_steps: int | None = None, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                  on_step: Callable[[float], None] | None = None, data=None) -> TargetTraining:
    """Train the digits CNN (BDWP at ``pattern``, or dense) with its Linear and Conv2d layers offloaded to
    ``target`` (``nmsat.sw.backend``): AdamW and cosine decay as :func:`train_once`, ``epochs`` epochs or
    ``max_steps`` steps; then the test accuracy through the same target."""
    import time
    import warnings

    from .backend import offload

    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = data or load_split()
    torch.manual_seed(seed)
    model = DigitsCNN()
    if pattern is not None:
        sparsify(model, *pattern)
    with warnings.catch_warnings():  # batch norm stays on the CPU: the CLI says so once
        warnings.simplefilter("ignore")
        session = offload(model, target, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), batch_size):
            if max_steps is not None and len(losses) >= max_steps:
                break
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if on_step:
                on_step(losses[-1])
        sched.step()
    train_cycles = {s: sum(c[s] for c in session.cycles.values()) for s in ("FF", "BP", "WU")}
    session.reset_cycles()
    model.eval()
    with torch.no_grad():
        accuracy = 100.0 * (model(x_te).argmax(1) == y_te).float().mean().item()
    test_cycles = sum(sum(c.values()) for c in session.cycles.values())
    return TargetTraining(target, pattern, session.cfg.name, session.cfg.clock_mhz, len(losses), batch_size, accuracy,
                          losses, train_cycles, test_cycles, time.perf_counter() - t0)
