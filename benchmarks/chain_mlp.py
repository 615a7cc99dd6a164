"""GEMMs in one program against one program each: what offline scheduling across layers buys (timing only).

    python benchmarks/chain_mlp.py [--preset vcu1525]

A two-layer ReLU MLP's forward and backward (``nmsat.dataflow.chain.compile_relu_mlp``:
H = relu(W1·X), Y = W2·H, dH = W2ᵀ·dY, G = RELU_GRAD(dH, H), dX = W1ᵀ·G) as one
program, against the same four GEMMs and the VECTOR each as its own
program(s), run one after another (the host's time between programs not
counted, so the difference is the core's drain and refill between them).
Shapes: ViT-S/16's MLP at batch 32 (384 → 1536 → 384 over 6,304 tokens), a
256-wide MLP over 2,048 samples, and ResNet-18's classifier-sized layers.
Writes benchmarks/results/chain_mlp_<preset>.md.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

from nmsat.dataflow.chain import compile_relu_mlp
from nmsat.dataflow.gemm import layout_gemm
from nmsat.dataflow.vector import array_bytes, vector_instructions
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Opcode, VectorFunc, encode
from nmsat.sim.core import CoreModel

SHAPES = {"ViT-S/16 MLP, batch 32": (1536, 384, 384, 6304), "256-wide MLP, 2,048 samples": (256, 256, 256, 2048),
          "512 → 512 → 10, 512 samples": (512, 512, 10, 512)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    core = CoreModel(cfg)
    t0 = time.perf_counter()
    lines = [f"# GEMMs chained in one program against one program each, preset `{cfg.name}`", "",
             "| shape (M1, K1, M2, N) | instructions | one program: cycles | separate programs: cycles (programs) | gain |",
             "|---|---|---|---|---|"]
    for name, (m1, k1, m2, n) in SHAPES.items():
        zeros = [np.zeros(s, np.float32) for s in ((m1, k1), (m2, m1), (k1, n), (m2, n))]
        prog = compile_relu_mlp(cfg, *zeros)
        chain = core.time_program(prog.words)
        assert chain.ok, chain.error
        gemms = [layout_gemm(cfg, m1, n, k1, out_bf16=True, relu=True), layout_gemm(cfg, m2, n, m1),
                 layout_gemm(cfg, m1, n, m2, out_bf16=True), layout_gemm(cfg, k1, n, m1)]
        elements = -(-m1 // cfg.rows) * cfg.rows * -(-n // cfg.cols) * cfg.cols
        size = array_bytes(cfg, elements, True)
        vector = [vector_instructions(cfg, VectorFunc.RELU_GRAD, 0, size, 2 * size, elements, bf16=True)
                  + [encode(Opcode.FINISH)]]
        programs = [list(words) for g in gemms for _, words in g.programs] + vector
        separate = core.time_programs(programs)
        assert separate.ok, separate.error
        lines.append(f"| {name} ({m1}, {k1}, {m2}, {n}) | {len(prog.words):,} | {chain.cycles:,} | "
                     f"{separate.cycles:,} ({len(programs)}) | {separate.cycles / chain.cycles - 1:+.2%} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Simulator wall time (timing only): {time.perf_counter() - t0:.1f} s; load average {load:.2f}."]
    text = "\n".join(lines)
    print(text)
    (Path(__file__).parent / "results" / f"chain_mlp_{cfg.name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
