"""Cycles of one whole training iteration, dense against BDWP, for four models (timing-only simulation).

    python benchmarks/iteration_table.py [--preset vcu1525] [--batch 32] [--models resnet18 vgg16 resnet50 vit]
                                         [--patterns 1:8 2:8 4:8]

Per model (``nmsat.dataflow.models``; CIFAR shapes for ResNet-18 and VGG-16,
ImageNet 224 × 224 for ResNet-50 and ViT-S/16), ``nmsat.sw.iteration`` charges
the GEMMs (simulated), the batch norms (their walks, simulated), the vector
unit's passes (stream rule) and the pre-generation (update + sparsify,
simulated).  The table gives cycles per
iteration dense and per pattern, the speedup, the speedup of the GEMMs alone,
the ideal bound from MAC counts (FF and BP of the pruned layers × n/m), the
vector passes' share, and the 2:8 speedup with pre-generation, on-chip im2col,
offline scheduling or interleave mapping switched off (one at a time: dense and
BDWP both without it), and with the batch norms charged by the stream rule of
the planned unit instead of their walks.
Writes benchmarks/results/iteration_table_<preset>_b<batch>.md.
"""

import argparse
import os
import time
from pathlib import Path

from nmsat.dataflow.models import build_model
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.iteration import time_iteration


def ideal_bound(layers, n, m):
    dense = sum(layer.macs for layer in layers)
    sparse = sum(g.macs * (n / m if layer.sparse and g.stage in ("FF", "BP") else 1)
                 for layer in layers for g in layer.gemms)
    return dense / sparse


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size (default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16", "resnet50", "vit"])
    parser.add_argument("--patterns", nargs="+", default=["1:8", "2:8", "4:8"])
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    patterns = [tuple(int(x) for x in p.split(":")) for p in args.patterns]
    core = CoreModel(cfg)
    t0 = time.perf_counter()
    head = " | ".join(f"{n}:{m} cycles | speedup (GEMMs only) | bound" for n, m in patterns)
    lines = [f"# One training iteration, dense against BDWP, batch {args.batch}, preset `{cfg.name}` "
             f"({cfg.rows}x{cfg.cols}, {cfg.bus_bytes}-byte port, {cfg.clock_mhz:.0f} MHz)", "",
             f"| model | dense cycles | vector share (dense) | norm walks' share (dense) | {head} | "
             f"2:8 without pre-generation | 2:8 without on-chip im2col | 2:8 without offline scheduling | "
             f"2:8 without interleave mapping | 2:8 with the norms by the stream rule |",
             "|---|---|---|---|" + "---|---|---|" * len(patterns) + "---|---|---|---|---|"]
    summary = {p: [] for p in patterns}
    for name in args.models:
        layers = build_model(name, args.batch)
        dense = time_iteration(cfg, layers, None, core=core)
        cells = []
        for p in patterns:
            sparse = time_iteration(cfg, layers, p, core=core)
            speedup = dense.total / sparse.total
            summary[p].append(speedup)
            cells.append(f"{sparse.total:,} | {speedup:.3f}× ({dense.gemm / sparse.gemm:.3f}×) | "
                         f"{ideal_bound(layers, *p):.3f}×")
        off = time_iteration(cfg, layers, (2, 8), pregeneration=False, core=core)
        dense_off = time_iteration(cfg, layers, None, pregeneration=False, core=core)
        no_walk = time_iteration(cfg, layers, (2, 8), im2col=False, core=core)
        dense_no_walk = time_iteration(cfg, layers, None, im2col=False, core=core)
        no_sched = time_iteration(cfg, layers, (2, 8), offline=False, core=core)
        dense_no_sched = time_iteration(cfg, layers, None, offline=False, core=core)
        no_il = time_iteration(cfg, layers, (2, 8), interleave=False, core=core)
        dense_no_il = time_iteration(cfg, layers, None, interleave=False, core=core)
        with_il = time_iteration(cfg, layers, (2, 8), core=core)
        stream = time_iteration(cfg, layers, (2, 8), norms="stream", core=core)
        dense_stream = time_iteration(cfg, layers, None, norms="stream", core=core)
        lines.append(f"| {name} | {dense.total:,} | {dense.vector / dense.total:.0%} | {dense.norm / dense.total:.0%} | "
                     + " | ".join(cells)
                     + f" | {dense_off.total / off.total:.3f}× (pre-generation {off.pregen:,} cycles serial) | "
                     f"{dense_no_walk.total / no_walk.total:.3f}× ({no_walk.total:,} cycles; dense "
                     f"{dense_no_walk.total:,}) | {dense_no_sched.total / no_sched.total:.3f}× (backward vector "
                     f"passes serial, a stage's GEMMs apart: +{no_sched.total - with_il.total:,} cycles) | "
                     f"{dense_no_il.total / no_il.total:.3f}× (BP and WU apart: +{no_il.total - with_il.total:,} "
                     f"cycles; {sum(x.interleave_saved > 0 for x in with_il.layers)} layers interleaved) | "
                     f"{dense_stream.total / stream.total:.3f}× ({stream.total:,} cycles; dense {dense_stream.total:,}) |")
    lines += ["", "| pattern | suite average speedup |", "|---|---|"]
    for p in patterns:
        lines.append(f"| {p[0]}:{p[1]} | {sum(summary[p]) / len(summary[p]):.3f}× |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", "Batch norms as built (nmsat.dataflow.norm): per norm its channel-sums and apply walks on the array, "
              "forward and backward, timed on the simulator and charged serially, and the RELU_GRAD of a ReLU after "
              "one a vector pass (benchmarks/norm_walks.py); the last "
              "column charges them instead by the stream rule of the planned channel-wise unit (statistics folded into "
              "the conv's STORE, scale/shift into the next LOAD: not built).",
              "Vector passes (layer norms, ReLU gradients, residual adds, pooling, softmax, GELU, loss) by the stream "
              "rule; the ones a VECTOR function runs today: ReLU gradients and residual adds (the layer norms, pooling, "
              "softmax, GELU and the loss are host work charged as the vector passes they would be). Forward passes serial; "
              "with offline scheduling the backward passes run on the vector unit under the WU of the layer above "
              "them (benchmarks/vector_under_wu.py), up to 90% of its cycles (nmsat.sw.iteration.HIDE_SHARE), and "
              "the independent GEMMs of a stage (attention's heads) run as one program (Timer.gemm_batch). "
              "Pre-generation hidden under the GEMMs up to 90% of their cycles, less what those passes took.",
              "On-chip im2col: convolutions' FF, BP and WU run as kernel walks (activations read once per tile; BP by "
              "phases of the flipped kernel; WU over transposed tiles); the 3-channel stems' WU and ViT's 16×16 patch "
              "embedding stay GEMMs on im2col operands (grouped convolutions, none in these models, run as group walks "
              "where faster). Without it every convolution is GEMMs on im2col'd B (read k² times).",
              "Interleave mapping (nmsat.dataflow.interleave): a layer's BP and WU as one stream, their steps "
              "alternating, each in half of every buffer, tried where BP's planned cycles exceed 2× its MAC "
              "bound (nmsat.sw.iteration.INTERLEAVE_BOUND) and kept where the simulator times it faster. Not built: "
              "fetching a dY tile once for both (BP reads it with the batch in the lanes, WU transposed: two LOADs "
              "of the same bytes). The GEMMs and walks are timed as their own programs and the host's launches "
              "between them are not counted.",
              f"Simulator wall time (timing only): {time.perf_counter() - t0:.1f} s; load average {load:.2f}."]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / f"iteration_table_{cfg.name}_b{args.batch}.md"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
