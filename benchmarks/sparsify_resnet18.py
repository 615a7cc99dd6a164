"""Pre-generation on ResNet-18/CIFAR: per layer, the weight update and the sparsifier's two forms, and how much hides.

    python benchmarks/sparsify_resnet18.py [--preset vcu1525] [--batch 32] [--patterns 2:8 1:8 4:8 2:4]

For every layer BDWP makes sparse (all but the first and last), its
WEIGHT_UPDATE and the SPARSIFY program of its weights (FF and BP forms,
``nmsat.dataflow.sparsify``) are timed alone.  Then an offline schedule
places them, update first, in GEMMs
that run after its layer's WU GEMM and before its layer's next FF —
the backward pass's BP and WU GEMMs of the layers below, then the next
step's forward GEMMs — filling each host up to ``--fill`` of its cycles,
each placed in the host's program where the host has run as long as the
placed instructions before it take (the vector unit works on its own
memory port); each host is timed with them against alone:
``hidden = 1 − (cycles the hosts grew) / (the placed instructions' cycles)``.
Timing-only simulation.  Writes benchmarks/results/sparsify_resnet18_<preset>_b<batch>.md.
"""

import argparse
import time
from pathlib import Path

from utilisation_resnet18 import resnet18_cifar

from nmsat.dataflow.gemm import layout_gemm
from nmsat.dataflow.sparsify import layout_sparsify, update_instructions
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Opcode, encode
from nmsat.sim.core import CoreModel


def interleave(gemm_words: list[int], extra: list[tuple[int, int]], host_cycles: int) -> list[int]:
    """``extra`` ``(word, cycles)`` placed through ``gemm_words`` (before its FINISH) at the point the host has
    run as long as the extra instructions before it take: the vector unit is kept busy from the start and
    its instructions never wait long in their queue."""
    body, finish = list(gemm_words[:-1]), gemm_words[-1]
    out, at, elapsed = [], 0, 0
    for word, cycles in extra:
        place = min(len(body), int(len(body) * elapsed / host_cycles))
        out += body[at:place]
        out.append(word)
        at, elapsed = place, elapsed + cycles
    return out + body[at:] + [finish]


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
             "Per layer, its WEIGHT_UPDATE and the SPARSIFY program writing both forms, alone:", "",
             "| layer | Cout × K (groups) | SPARSIFYs | " + " | ".join(f"{n}:{m} update | sparsify cycles" for n, m in patterns)
             + " |", "|---|---|---|" + "---|---|" * len(patterns)]
    work = {p: {} for p in patterns}  # pattern -> layer -> [(words, alone cycles)]
    for layer in sparse_layers:
        g = by_stage[(layer, "FF")]
        cells = []
        for p in patterns:
            lay = layout_sparsify(cfg, g.m * g.count, g.k, *p, groups=g.count)
            sp = lay.instructions()
            # the weight update first (a layer's gradients are ready after its WU GEMM), then its SPARSIFYs
            update = update_instructions(lay, lay.end, lay.end + lay.master_bytes)
            items = [(w, core.time_program([w, encode(Opcode.FINISH)]).cycles) for w in update + sp]
            work[p][layer] = items
            cells.append(f"{items[0][1]} | {core.time_program(sp + [encode(Opcode.FINISH)]).cycles}")
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
                    combined = core.time_program(interleave(words, [(w, c) for _, w, c in take], alone_gemm))
                    assert combined.ok, combined.error
                    total_alone += sum(c for _, _, c in take)
                    total_extra += combined.cycles - alone_gemm
            if ready in work[p]:
                pending += [(ready, w, c) for w, c in work[p][ready]]
        summary.append((p, total_alone, total_extra, placed_all and not pending))
    lines += ["", f"Scheduled offline: each layer's WEIGHT_UPDATE and SPARSIFYs, in that order, interleaved into "
              f"GEMMs of the backward pass after its WU (or of the next step's forward pass before its own FF), "
              f"filling at most {args.fill:.0%} of a host's cycles; hidden = 1 − (cycles the hosts grew) / "
              "(the instructions' own cycles):", "",
              "| pattern | update + sparsify cycles | host GEMMs grew by | hidden | every one placed in time |",
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
