"""One digits training step (batch 64, BDWP 2:8) through each target of the backend: wall time and core cycles.

    python benchmarks/train_step_targets.py [--steps 2] [--no-rtl]

The digits CNN (``nmsat.sw.digits``) with its Linear and Conv2d layers offloaded
(``nmsat.sw.backend``): ``reference`` (PyTorch), ``sim`` at the vcu1525 and tiny
presets, ``rtl`` (the Verilated tiny core through the C++ harness).  sim and rtl
at tiny must agree in cycles and in the losses (checked).  Medians over ``--steps``
steps after one warm-up step.  Writes benchmarks/results/train_step_targets.md.
"""

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from nmsat.hw.config import SATConfig
from nmsat.sw.backend import offload
from nmsat.sw.bdwp import sparsify
from nmsat.sw.digits import DigitsCNN, load_split


def run(target, cfg, steps, data):
    x, y = data[0], data[1]
    torch.manual_seed(0)
    model = sparsify(DigitsCNN(), 2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = offload(model, target, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    times, losses, cycles = [], [], []
    for i in range(steps + 1):
        session.reset_cycles()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x[64 * i:64 * i + 64]), y[64 * i:64 * i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        cycles.append(sum(sum(c.values()) for c in session.cycles.values()))
    return statistics.median(times[1:]), losses, cycles


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-rtl", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_split()
    load = os.getloadavg()[0]
    rows, results = [], {}
    cases = [("reference", SATConfig.vcu1525()), ("sim", SATConfig.vcu1525()), ("sim", SATConfig.tiny())]
    if not args.no_rtl:
        cases.append(("rtl", SATConfig.tiny()))
    for target, cfg in cases:
        seconds, losses, cycles = run(target, cfg, args.steps, data)
        results[(target, cfg.name)] = (losses, cycles)
        rows.append((target, cfg.name, seconds, cycles[-1]))
    if ("rtl", "tiny") in results:
        assert results[("rtl", "tiny")] == results[("sim", "tiny")], "rtl and sim differ"
    lines = ["# One digits training step (batch 64, BDWP 2:8) through each target", "",
             f"Machine: {os.cpu_count()} cores, load average {load:.2f} at the start; median of {args.steps} steps "
             "after a warm-up step (one torch thread).", "",
             "| target | preset | wall time per step | core cycles per step | simulated cycles / s |", "|---|---|---|---|---|"]
    for target, preset, seconds, cycles in rows:
        rate = f"{cycles / seconds:,.0f}" if cycles else ""
        lines.append(f"| {target} | {preset} | {seconds:.2f} s | {cycles:,} | {rate} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "train_step_targets.md").write_text(text)


if __name__ == "__main__":
    main()
