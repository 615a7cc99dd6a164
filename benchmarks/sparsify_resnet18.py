"""The sparsifier on ResNet-18/CIFAR: cycles per layer to write both compressed forms, and how much hides behind GEMMs.

    python benchmarks/sparsify_resnet18.py [--preset vcu1525] [--batch 32] [--patterns 2:8 1:8 4:8 2:4]

For every layer BDWP makes sparse (all but the first and last), the
SPARSIFY program of its weights (FF and BP forms, ``nmsat.dataflow.sparsify``)
is timed alone, then interleaved (evenly, in program order) into the dense
weight-update GEMM of the layer below it — the GEMM the backward pass runs
next, while the sparsifier works on its own memory port — and that
program is timed against the GEMM alone:
``hidden = 1 − (combined − GEMM alone) / sparsify alone``.  Timing-only
simulation.  Writes benchmarks/results/sparsify_resnet18_<preset>_b<batch>.md.
"""

import argparse
import time
from pathlib import Path

from utilisation_resnet18 import resnet18_cifar

from nmsat.dataflow.gemm import layout_gemm
from nmsat.dataflow.sparsify import layout_sparsify
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Opcode, encode
from nmsat.sim.core import CoreModel


def interleave(gemm_words: list[int], extra: list[int]) -> list[int]:
    """``extra`` spread evenly through ``gemm_words`` (before its FINISH)."""
    body, finish = list(gemm_words[:-1]), gemm_words[-1]
    out, step = [], max(1, len(body) // (len(extra) + 1))
    pending = list(extra)
    for i, w in enumerate(body):
        if pending and i % step == 0 and i:
            out.append(pending.pop(0))
        out.append(w)
    return out + pending + [finish]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size (default: %(default)s)")
    parser.add_argument("--patterns", nargs="+", default=["2:8", "1:8", "4:8", "2:4"],
                        help="N:M patterns (default: %(default)s)")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    patterns = [tuple(int(x) for x in p.split(":")) for p in args.patterns]
    core = CoreModel(cfg)
    t0 = time.perf_counter()
    gemms = resnet18_cifar(args.batch)
    ff = [g for g in gemms if g.stage == "FF"]
    wu = {g.layer: g for g in gemms if g.stage == "WU"}
    layers = ff[1:-1]  # BDWP keeps the first and last layers dense
    head = " | ".join(f"{n}:{m} cycles | hidden" for n, m in patterns)
    lines = [f"# Sparsifier, ResNet-18/CIFAR, batch {args.batch}, preset `{cfg.name}` ({cfg.rows} lanes, "
             f"{cfg.sparsify_chunk}-element chunks, own {cfg.bus_bytes}-byte port)", "",
             f"| layer | Cout × K (groups) | beside the WU GEMM of | its cycles | {head} |",
             "|---|---|---|---|" + "---|---|" * len(patterns)]
    totals = {p: [0, 0.0] for p in patterns}
    step_gemm = 0
    for below, g in zip(ff, ff[1:-1]):
        host = wu[below.layer]
        lay = layout_gemm(cfg, host.m, host.n, host.k)
        assert len(lay.programs) == 1, "the host GEMM runs as one program"
        host_words = list(lay.programs[0][1])
        alone_gemm = core.time_program(host_words).cycles
        step_gemm += alone_gemm
        cells = []
        for p in patterns:
            sp = layout_sparsify(cfg, g.m * g.count, g.k, *p, groups=g.count).instructions()
            alone = core.time_program(sp + [encode(Opcode.FINISH)]).cycles
            combined = core.time_program(interleave(host_words, sp))
            assert combined.ok, combined.error
            hidden = 1 - (combined.cycles - alone_gemm) / alone
            totals[p][0] += alone
            totals[p][1] += hidden * alone
            cells.append(f"{alone} | {hidden:.0%}")
        lines.append(f"| {g.layer} | {g.m * g.count} × {g.k} ({g.count}) | {below.layer} | {alone_gemm} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| pattern | sparsify cycles, all layers | hidden (cycle-weighted) | of the host GEMMs' cycles |",
              "|---|---|---|---|"]
    for p in patterns:
        alone, hidden = totals[p]
        lines.append(f"| {p[0]}:{p[1]} | {alone} | {hidden / alone:.1%} | {alone / step_gemm:.1%} |")
    lines += ["", f"Simulator wall time (timing only): {time.perf_counter() - t0:.1f} s."]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / f"sparsify_resnet18_{cfg.name}_b{args.batch}.md"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
