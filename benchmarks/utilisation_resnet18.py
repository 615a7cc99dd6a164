"""Dense PE utilisation per layer of ResNet-18/CIFAR (batch 32), FF/BP/WU GEMMs, timing-only simulation.

Utilisation = useful MACs (M·N·K of the layer, no padding) / (cycles · rows · cols).
Also reports the simulator's speed in simulated cycles per wall second.
Writes benchmarks/results/utilisation_resnet18_<preset>.md.  Run:

    python benchmarks/utilisation_resnet18.py [--preset vcu1525] [--batch 32]
"""

import argparse
import statistics
import time
from pathlib import Path

from nmsat.dataflow.gemm import layout_gemm
from nmsat.dataflow.layers import conv2d_gemms, linear_gemms
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel


def resnet18_cifar(batch):
    layers = [conv2d_gemms("conv1", batch, 3, 64, 32, 32, 3, padding=1)]
    cin, size = 64, 32
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if (stage > 1 and block == 0) else 1
            out = size // stride
            layers.append(conv2d_gemms(f"layer{stage}.{block}.conv1", batch, cin, cout, size, size, 3, stride, 1))
            layers.append(conv2d_gemms(f"layer{stage}.{block}.conv2", batch, cout, cout, out, out, 3, 1, 1))
            if stride == 2:
                layers.append(conv2d_gemms(f"layer{stage}.{block}.downsample", batch, cin, cout, size, size, 1, 2, 0))
            cin, size = cout, out
    layers.append(linear_gemms("fc", batch, 512, 10))
    return [g for layer in layers for g in layer]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size (default: %(default)s)")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    core = CoreModel(cfg)
    rows, total_macs, total_cycles, wall = [], 0, 0, 0.0
    for g in resnet18_cifar(args.batch):
        t0 = time.perf_counter()
        lay = layout_gemm(cfg, g.m, g.n, g.k)
        result = core.time_programs(words for _, words in lay.programs)
        dt = time.perf_counter() - t0
        assert result.ok, (g, result.error)
        cycles = result.cycles * g.count
        util = g.macs / (cycles * cfg.rows * cfg.cols)
        rows.append((g, lay, result, cycles, util, dt))
        total_macs += g.macs
        total_cycles += cycles
        wall += dt
    lines = [f"# Dense utilisation, ResNet-18/CIFAR, batch {args.batch}, preset `{cfg.name}` "
             f"({cfg.rows}x{cfg.cols}, {cfg.bus_bytes}-byte bus, Lr={cfg.mem_read_latency})", "",
             "| layer | stage | M | N | K | block mb×nb, kc×steps | instructions | cycles | utilisation |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g, lay, result, cycles, util, dt in rows:
        p = lay.plan
        lines.append(f"| {g.layer} | {g.stage} | {g.m} | {g.n} | {g.k} | {p.mb}×{p.nb}, {p.kc}×{p.steps} | "
                     f"{lay.instructions} | {cycles} | {util:.1%} |")
    large = [u for g, _, _, _, u, _ in rows if g.macs >= 100e6]
    lines += ["", f"Whole step: {total_macs / 1e9:.2f} GMAC in {total_cycles} cycles: "
              f"utilisation {total_macs / (total_cycles * cfg.rows * cfg.cols):.1%}; "
              f"{total_cycles / cfg.clock_mhz / 1e3:.1f} ms at {cfg.clock_mhz:.0f} MHz.",
              f"Large GEMMs (≥ 100 MMAC, {len(large)} of {len(rows)}): median utilisation "
              f"{statistics.median(large):.1%}, minimum {min(large):.1%}.",
              f"Simulator (timing only, compile included): {wall:.2f} s wall for {total_cycles} simulated cycles = "
              f"{total_cycles / wall / 1e6:.1f} M simulated cycles/s."]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / f"utilisation_resnet18_{cfg.name}_b{args.batch}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
