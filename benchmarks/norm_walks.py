"""What batch norm costs as it is built (``nmsat.dataflow.norm``: walks on the array) against the stream rule
of the planned channel-wise unit, per norm of a model, and the iteration's speedup under each.

    python benchmarks/norm_walks.py [--preset vcu1525] [--batch 32] [--model resnet18]

Per batch norm of the model (``nmsat.dataflow.models``; its shape that of the convolution before it): the
cycles of its programs timed on the simulator (``nmsat.sw.iteration.Timer.norm``) — forward the channel sums
(1×1 WU walks, a tile of channels each) and the apply (1×1 FF walks over a tile's [y; y; ones]), backward the
gradient's sums and the apply over [dout; dout; y; y; ones] — against the stream rule's four passes
(``nmsat.sw.iteration.pass_cycles``); then the model's dense and 2:8 iteration with the norms as walks
(``norms="walks"``, the iteration table's charge) and by the stream rule (``norms="stream"``).
Writes benchmarks/results/norm_walks_<model>_<preset>_b<batch>.md.
"""

import argparse
import os
import time
from pathlib import Path

from nmsat.dataflow.models import build_model
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.iteration import Timer, charged_passes, pass_cycles, time_iteration


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size (default: %(default)s)")
    parser.add_argument("--model", default="resnet18", help="a model with batch norms (default: %(default)s)")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    core = CoreModel(cfg)
    timer = Timer(cfg, core)
    t0 = time.perf_counter()
    layers = build_model(args.model, args.batch)
    rows, walks_total, stream_total = [], 0, 0
    for layer in layers:
        if layer.kind != "batchnorm" or layer.shape is None:
            continue
        ff, bp = timer.norm(layer.shape)
        stream = sum(pass_cycles(cfg, p) for p in charged_passes(layer, False))
        walks_total, stream_total = walks_total + ff + bp, stream_total + stream
        _, c, h, w = layer.shape
        rows.append(f"| {layer.name} | {c} × {h}×{w} | {ff:,} | {bp:,} | {stream:,} | {(ff + bp) / stream:.1f}× |")
    reports = {(norms, p): time_iteration(cfg, layers, p, core=core, norms=norms)
               for norms in ("walks", "stream") for p in (None, (2, 8))}
    wall = time.perf_counter() - t0
    lines = [f"# Batch norm as walks against the stream rule: {args.model}, batch {args.batch}, preset `{cfg.name}` "
             f"({cfg.rows}x{cfg.cols}, {cfg.bus_bytes}-byte port)", "",
             "| norm | channels × pixels | walks forward (sums + apply) | walks backward | stream rule (4 passes) | "
             "walks / stream |", "|---|---|---|---|---|---|", *rows, "",
             f"All norms: walks {walks_total:,} cycles, stream rule {stream_total:,} ({walks_total / stream_total:.2f}×).",
             "", "| norms | dense cycles | norms' share (dense) | 2:8 cycles | 2:8 speedup |", "|---|---|---|---|---|"]
    for norms, label in (("walks", "walks on the array (built; the table's charge)"),
                         ("stream", "stream rule of the planned unit (backward ones under the WUs)")):
        dense, sparse = reports[(norms, None)], reports[(norms, (2, 8))]
        share = dense.norm if norms == "walks" else stream_total
        lines.append(f"| {label} | {dense.total:,} | {share / dense.total:.0%} | {sparse.total:,} | "
                     f"{dense.total / sparse.total:.3f}× |")
    lines += ["", f"Simulator wall time (timing only): {wall:.1f} s; load average {os.getloadavg()[0]:.2f}."]
    out = Path(__file__).parent / "results" / f"norm_walks_{args.model}_{cfg.name}_b{args.batch}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
