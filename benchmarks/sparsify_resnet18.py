"""The sparsifier on ResNet-18/CIFAR: cycles per layer to write both compressed forms, and how much hides behind GEMMs.

    python benchmarks/sparsify_resnet18.py [--preset vcu1525] [--batch 32] [--patterns 2:8 1:8 4:8 2:4]

For every layer BDWP makes sparse (all but the first and last), the
SPARSIFY program of its weights (FF and BP forms, ``nmsat.dataflow.sparsify``)
is timed alone.  Then an offline schedule places every SPARSIFY in a GEMM
that runs after its layer's weight update and before its layer's next FF —
the backward pass's BP and WU GEMMs of the layers below, then the next
step's forward GEMMs — filling each host up to ``--fill`` of its cycles,
the SPARSIFYs spread evenly through the host's program (the sparsifier
works on its own memory port); each host is timed with them against
alone: ``hidden = 1 − (cycles the hosts grew) / (the SPARSIFYs' cycles)``.
Timing-only simulation.  Writes benchmarks/results/sparsify_resnet18_<preset>_b<batch>.md.
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
    parser.add_argument("--fill", type=float, default=0.9,
                        help="share of a host GEMM's cycles the schedule fills with SPARSIFYs (default: %(default)s)")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    patterns = [tuple(int(x) for x in p.split(":")) for p in args.patterns]
    core = CoreModel(cfg)
    t0 = time.perf_counter()
    gemms = resnet18_cifar(args.batch)
    by_stage = {(g.layer, g.stage): g for g in gemms}
    order = list(dict.fromkeys(g.layer for g in gemms))  # forward order
    sparse_layers = order[1:-1]  # BDWP keeps the first and last layers dense
    lines = [f"# Sparsifier, ResNet-18/CIFAR, batch {args.batch}, preset `{cfg.name}` ({cfg.rows} lanes, "
             f"{cfg.sparsify_chunk}-element chunks, own {cfg.bus_bytes}-byte port)", "",
             "Per layer, the SPARSIFY program writing both forms, alone:", "",
             "| layer | Cout × K (groups) | SPARSIFYs | " + " | ".join(f"{n}:{m} cycles" for n, m in patterns) + " |",
             "|---|---|---|" + "---|" * len(patterns)]
    work = {p: {} for p in patterns}  # pattern -> layer -> [(words, alone cycles)]
    for layer in sparse_layers:
        g = by_stage[(layer, "FF")]
        cells = []
        for p in patterns:
            sp = layout_sparsify(cfg, g.m * g.count, g.k, *p, groups=g.count).instructions()
            items = [(w, core.time_program([w, encode(Opcode.FINISH)]).cycles) for w in sp]
            work[p][layer] = items
            cells.append(str(core.time_program(sp + [encode(Opcode.FINISH)]).cycles))
        lines.append(f"| {layer} | {g.m * g.count} × {g.k} ({g.count}) | {len(work[patterns[0]][layer])} | "
                     + " | ".join(cells) + " |")
    summary = []
    for p in patterns:
        # hosts: the backward pass, last layer first (BP, then WU), then the next step's forward pass; a layer's
        # SPARSIFYs become ready after its WU and must end before its next FF
        hosts = []
        for layer in reversed(order):
            if layer != order[0]:
                hosts.append((layer, "BP", p if layer in sparse_layers else None, None))
            hosts.append((layer, "WU", None, layer))  # after it, this layer's weights are ready
        hosts += [(layer, "FF", p if layer in sparse_layers else None, None) for layer in order]
        pending, total_alone, total_extra, placed_all = [], 0, 0, True
        for layer, stage, pattern, ready in hosts:
            g = by_stage[(layer, stage)]
            lay = layout_gemm(cfg, g.m, g.n, g.k, pattern=pattern)
            if stage == "FF":  # a layer's forms must be written before its own FF
                if any(owner == layer for owner, _, _ in pending):
                    placed_all = False
                    pending = [x for x in pending if x[0] != layer]
            if len(lay.programs) == 1 and pending:
                words = list(lay.programs[0][1])
                alone_gemm = core.time_program(words).cycles
                budget, take = args.fill * alone_gemm, []
                while pending and pending[0][2] <= budget and len(words) + len(take) < cfg.imem_depth:
                    budget -= pending[0][2]
                    take.append(pending.pop(0))
                if take:
                    combined = core.time_program(interleave(words, [w for _, w, _ in take]))
                    assert combined.ok, combined.error
                    total_alone += sum(c for _, _, c in take)
                    total_extra += combined.cycles - alone_gemm
            if ready in work[p]:
                pending += [(ready, w, c) for w, c in work[p][ready]]
        summary.append((p, total_alone, total_extra, placed_all and not pending))
    lines += ["", f"Scheduled offline: each SPARSIFY interleaved into a GEMM of the backward pass (or the next "
              f"step's forward pass before its own layer's FF), filling at most {args.fill:.0%} of a host's cycles; "
              "hidden = 1 − (cycles the hosts grew) / (the SPARSIFYs' own cycles):", "",
              "| pattern | SPARSIFY cycles | host GEMMs grew by | hidden | every SPARSIFY placed in time |",
              "|---|---|---|---|---|"]
    for p, alone, extra, placed in summary:
        lines.append(f"| {p[0]}:{p[1]} | {alone} | {extra} | {1 - extra / alone:.1%} | {'yes' if placed else 'no'} |")
    lines += ["", f"Simulator wall time (timing only): {time.perf_counter() - t0:.1f} s."]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / f"sparsify_resnet18_{cfg.name}_b{args.batch}.md"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
