"""How much vector-unit work hides under a convolution's WU walk when both are in one program (offline scheduling).

    python benchmarks/vector_under_wu.py [--preset vcu1525] [--batch 32]

For every 3×3 convolution of ResNet-18/CIFAR (``nmsat.dataflow.models``), one program holds the layer's WU
walk (``nmsat.dataflow.conv.wu_programs``) and, spread through it, VECTOR instructions over as many bf16
elements as the layer's output has, three passes of two reads and a write each (the BN backward's input
gradient, the ReLU gradient, the fork's add: the shape of the backward vector work between this layer's BP
and the next's); the vector unit runs on its own port.  Reported: WU alone, the vector work alone, both
in one program, and the share of the vector work hidden.  Writes
benchmarks/results/vector_under_wu_<preset>_b<batch>.md.
"""

import argparse
import os
import time
from pathlib import Path

from nmsat.dataflow import conv
from nmsat.dataflow.models import build_model
from nmsat.dataflow.vector import array_bytes, vector_instructions
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Opcode, VectorFunc, encode
from nmsat.sim.core import CoreModel


def under_wu(cfg, core, geometry, passes=3):
    g = geometry
    plan = conv.plan_conv_wu(cfg, g.batch, g.cin, g.cout, g.size, g.kernel, g.stride, g.padding)
    base = 1 << (cfg.addr_bits - 2)
    wu = conv.wu_programs(cfg, plan, dy_addr=0, x_addr=base // 2, g_addr=base, limit=None,
                          g_row_bytes=-(-plan.taps * g.cin * 4 // 4096) * 4096)[0][:-1]
    ho = (g.size + 2 * g.padding - g.kernel) // g.stride + 1
    elements = g.batch * g.cout * ho * ho
    size = array_bytes(cfg, elements, True)
    v0 = base + base // 2
    vec = []
    for p in range(passes):
        vec += vector_instructions(cfg, VectorFunc.ADD, v0, v0 + size, v0 + 2 * size + p * size, elements, bf16=True)
    every = max(1, len(wu) // (len(vec) + 1))
    both, vi = [], 0
    for i, word in enumerate(wu):
        both.append(word)
        if i % every == every - 1 and vi < len(vec):
            both.append(vec[vi])
            vi += 1
    both += vec[vi:]
    finish = [encode(Opcode.FINISH)]
    t_wu = core.time_program(wu + finish).cycles
    t_vec = core.time_program(vec + finish).cycles
    t_both = core.time_program(both + finish).cycles
    return t_wu, t_vec, t_both


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    core = CoreModel(cfg)
    t0 = time.perf_counter()
    lines = [f"# Vector work under a WU walk, ResNet-18/CIFAR 3×3 convolutions, batch {args.batch}, preset `{cfg.name}`",
             "", "| layer | WU alone | vector alone | both in one program | vector hidden |", "|---|---|---|---|---|"]
    hidden_total = vec_total = 0
    for layer in build_model("resnet18", args.batch):
        g = layer.conv
        if g is None or g.kernel != 3 or not conv.wu_walkable(cfg, g.cin, g.kernel):
            continue
        t_wu, t_vec, t_both = under_wu(cfg, core, g)
        hidden = t_wu + t_vec - t_both
        hidden_total += hidden
        vec_total += t_vec
        lines.append(f"| {layer.name} | {t_wu:,} | {t_vec:,} | {t_both:,} | {hidden / t_vec:.1%} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Vector work hidden over all layers: {hidden_total / vec_total:.1%}.",
              f"Wall time {time.perf_counter() - t0:.1f} s; load average {load:.2f}."]
    text = "\n".join(lines)
    print(text)
    (Path(__file__).parent / "results" / f"vector_under_wu_{cfg.name}_b{args.batch}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
