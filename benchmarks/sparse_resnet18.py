"""Sparse FF and BP GEMMs of ResNet-18/CIFAR against dense, per layer, timing-only simulation.

    python benchmarks/sparse_resnet18.py [--preset vcu1525] [--batch 32] [--patterns 1:8 2:8 4:8 2:4] [--fp32-out]

BDWP makes FF (``Y = W·X``, W pruned along K) and BP (``dX = Wᵀ·dY``, W pruned
along Cout) N:M sparse; both are SPARSE_GEMMs with the weight as the
compressed A operand.  WU stays dense.  For every FF and BP GEMM the table
gives dense cycles and, per pattern, the speedup and its share of the ideal
m/n.  The summary counts GEMMs of at least 100 MMAC (target: every one at
≥ 90% of m/n) and the whole step with WU dense and, as ``sparsify`` does,
the first and last layers dense.  Writes
benchmarks/results/sparse_resnet18_<preset>_b<batch>.md.
"""

import argparse
import statistics
import time
from pathlib import Path

from utilisation_resnet18 import resnet18_cifar

from nmsat.dataflow.gemm import layout_gemm
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel


def cycles(core, cfg, g, pattern=None, out_bf16=False):
    lay = layout_gemm(cfg, g.m, g.n, g.k, pattern=pattern, out_bf16=out_bf16)
    result = core.time_programs(words for _, words in lay.programs)
    assert result.ok, (g, pattern, result.error)
    return result.cycles * g.count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size (default: %(default)s)")
    parser.add_argument("--patterns", nargs="+", default=["1:8", "2:8", "4:8", "2:4"],
                        help="N:M patterns (default: %(default)s)")
    parser.add_argument("--fp32-out", action="store_true",
                        help="store FF and BP outputs as fp32 (default: bf16, as the next layer reads them; dW is "
                             "always fp32, for the weight update)")
    args = parser.parse_args()
    out16 = not args.fp32_out
    cfg = SATConfig.preset(args.preset)
    patterns = [tuple(int(x) for x in p.split(":")) for p in args.patterns]
    core = CoreModel(cfg)
    t0 = time.perf_counter()
    gemms = resnet18_cifar(args.batch)
    first, last = gemms[0].layer, gemms[-1].layer
    rows, share = [], {p: [] for p in patterns}
    step = {None: 0, **{p: 0 for p in patterns}}
    for g in gemms:
        bf16 = out16 and g.stage != "WU"
        dense = cycles(core, cfg, g, out_bf16=bf16)
        step[None] += dense
        sparse_stage = g.stage in ("FF", "BP") and g.layer not in (first, last)
        cells = []
        for p in patterns:
            if g.stage == "WU" or g.layer in (first, last):
                step[p] += dense
            if g.stage == "WU":
                cells.append("dense")
                continue
            c = cycles(core, cfg, g, p, out_bf16=bf16)
            ideal = p[1] / p[0]
            ratio = dense / c
            if sparse_stage:
                step[p] += c
                if g.macs >= 100e6:
                    share[p].append(ratio / ideal)
            cells.append(f"{ratio:.2f}× ({ratio / ideal:.0%})")
        rows.append((g, dense, cells, sparse_stage))
    wall = time.perf_counter() - t0
    head = " | ".join(f"{n}:{m} speedup (of {m / n:g}×)" for n, m in patterns)
    lines = [f"# Sparse FF/BP GEMMs, ResNet-18/CIFAR, batch {args.batch}, preset `{cfg.name}` "
             f"({cfg.rows}x{cfg.cols}, {cfg.bus_bytes}-byte bus), FF/BP outputs stored as "
             f"{'bf16' if out16 else 'fp32'}", "",
             f"| layer | stage | M | N | K | MMAC | dense cycles | {head} |",
             "|---|---|---|---|---|---|---|" + "---|" * len(patterns)]
    for g, dense, cells, sparse_stage in rows:
        mark = "" if sparse_stage or g.stage == "WU" else " (dense in BDWP)"
        lines.append(f"| {g.layer}{mark} | {g.stage} | {g.m} | {g.n} | {g.k} | {g.macs / 1e6:.0f} | {dense} | "
                     + " | ".join(cells) + " |")
    lines += ["", "GEMMs of at least 100 MMAC that BDWP makes sparse (FF and BP, first and last layers dense):", "",
              "| pattern | GEMMs | minimum of ideal | median of ideal | at ≥ 90% of ideal | whole step speedup | ideal step (MACs) |",
              "|---|---|---|---|---|---|---|"]
    for p in patterns:
        n, m = p
        s = share[p]
        lines.append(f"| {n}:{m} | {len(s)} | {min(s):.0%} | {statistics.median(s):.0%} | "
                     f"{sum(x >= 0.9 for x in s)} of {len(s)} | {step[None] / step[p]:.3f}× | "
                     f"{ideal_step(gemms, first, last, n / m):.3f}× |")
    lines += ["", f"Dense step: {step[None]} cycles. Simulator wall time (timing only, compile included): {wall:.1f} s."]
    text = "\n".join(lines)
    print(text)
    suffix = "" if out16 else "_fp32out"
    out = Path(__file__).parent / "results" / f"sparse_resnet18_{cfg.name}_b{args.batch}{suffix}.md"
    out.write_text(text + "\n")


def ideal_step(gemms, first, last, density):
    """Dense over BDWP MACs of the step: FF and BP of the sparse layers scaled by n/m."""
    dense = sum(g.macs for g in gemms)
    sparse = sum(g.macs * (density if g.stage in ("FF", "BP") and g.layer not in (first, last) else 1) for g in gemms)
    return dense / sparse


if __name__ == "__main__":
    main()
