"""The optimum group size: compute against data movement as a function of G, per grouped layer of a model,
in cycles (simulated, and the roofline of the programs' counts) and in estimated energy.

    python benchmarks/optimum_group_size.py [--preset vcu1525] [--batch 8] [--model mobilenet_v1]
                                            [--sizes 1 2 4 ...]

For each grouped 3×3 of the model (``nmsat.dataflow.models``: MobileNet-V1's depthwise layers, ResNeXt-50's
grouped ones) and each group size G dividing its channels, the layer alone (FF, BP and WU, dense, as
``nmsat.sw.iteration`` maps it: packed groups where the planners estimate that faster) is timed on the
simulator, and the programs it timed are counted (``nmsat.sw.energy``: MAC slots, buffer words, DRAM
bytes) and priced (Horowitz, ISSCC 2014).  Per (layer, G): the useful MACs (∝ G), the simulated cycles, the
utilisation, the roofline ``max(MAC slots / PEs, DRAM bytes read or written / port bytes per cycle)`` and the energy per
useful MAC.  The recommended G of a layer is the largest whose roofline stays within 10% of G = 1's (the
data movement still hides the extra MACs: E2GC's balance point, arithmetic intensity ≈ 9G/2 against the
machine's), checked against the simulated cycles at that G.
Writes benchmarks/results/optimum_group_size_<model>_<preset>_b<batch>.md.
"""

import argparse
import os
import time
from pathlib import Path

from nmsat.dataflow.models import WorkBuilder, build_model
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.energy import count_programs, energy_pj, Counts
from nmsat.sw.iteration import Timer, time_iteration

#: the recommended G keeps the roofline within this factor of G = 1's
SLACK = 1.10


def layer_at(cfg, core, geometry, group_size):
    """(simulated cycles, useful MACs, counts, energy by class) of one grouped conv at ``group_size``."""
    g = geometry
    b = WorkBuilder(g.batch)
    b.conv("layer", g.cin, g.cout, g.size, g.kernel, g.stride, g.padding, groups=g.cin // group_size)
    layer, = b.layers
    timer = Timer(cfg, core, record=True)
    report = time_iteration(cfg, [layer], None, pregeneration=False, interleave=False, core=core, timer=timer)
    counts = Counts()
    for key in timer.calls:  # every piece timed, memo hits included (offline scheduling: each timed once)
        for words in timer.programs[key]:
            counts += count_programs(cfg, [words])
    x = report.layers[0]
    return x.gemm, layer.macs, counts, energy_pj(cfg, counts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="training batch size (default: %(default)s)")
    parser.add_argument("--model", default="mobilenet_v1", choices=["mobilenet_v1", "resnext50"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1 << i for i in range(11)],
                        help="group sizes to try, those dividing a layer's channels (default: powers of two to 1024)")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    core = CoreModel(cfg)
    t0 = time.perf_counter()
    keywords = {"group_size": 1} if args.model == "mobilenet_v1" else {"groups": 32}
    layers = [x for x in build_model(args.model, args.batch, **keywords) if x.conv is not None and x.conv.groups > 1]
    pes = cfg.rows * cfg.cols
    lines = [f"# The optimum group size: {args.model} grouped layers, batch {args.batch}, preset `{cfg.name}` "
             f"({cfg.rows}x{cfg.cols}, {cfg.bus_bytes}-byte port), dense FF + BP + WU", "",
             "| layer | channels × size, stride | G | MACs | simulated cycles | utilisation | roofline (bound) | "
             "simulated / roofline | energy µJ (MAC / SRAM / DRAM) | pJ per MAC |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    summary, memo = [], {}
    for layer in layers:
        g = layer.conv
        key = (g.cin, g.size, g.stride)
        if key not in memo:
            rows = []
            for size in [s for s in args.sizes if g.cin % s == 0]:
                cycles, macs, counts, energy = layer_at(cfg, core, g, size)
                mac_bound = counts.mac_slots / pes
                port_bound = max(counts.dram_read, counts.dram_written) / cfg.bus_bytes  # AXI reads and writes apart
                roof = max(mac_bound, port_bound)
                rows.append(dict(G=size, macs=macs, cycles=cycles, roof=roof, bound="MACs" if mac_bound >= port_bound
                                 else "port", energy=energy, total=sum(energy.values())))
            memo[key] = rows
        rows = memo[key]
        base = rows[0]
        pick = max((r for r in rows if r["roof"] <= SLACK * base["roof"]), key=lambda r: r["G"])
        sim_pick = max((r for r in rows if r["cycles"] <= SLACK * base["cycles"]), key=lambda r: r["G"])
        summary.append((layer.name, g, pick, sim_pick, base))
        for r in rows:
            e = r["energy"]
            sram = sum(v for k, v in e.items() if k.startswith("sram"))
            mark = " ◀" if r is pick else ""
            lines.append(f"| {layer.name} | {g.cin} × {g.size}², s{g.stride} | {r['G']}{mark} | {r['macs']:,} | "
                         f"{r['cycles']:,} | {r['macs'] / (r['cycles'] * pes):.1%} | {r['roof']:,.0f} ({r['bound']}) | "
                         f"{r['cycles'] / r['roof']:.2f} | {r['total'] / 1e6:,.1f} ({e['mac'] / 1e6:,.1f} / "
                         f"{sram / 1e6:,.1f} / {e['dram'] / 1e6:,.1f}) | {r['total'] / r['macs']:.1f} |")
    lines += ["", "| layer | recommended G (roofline) | its cycles / G=1's (simulated) | largest G within 10% "
              "(simulated) | pJ per MAC at G=1 → recommended |", "|---|---|---|---|---|"]
    for name, g, pick, sim_pick, base in summary:
        lines.append(f"| {name} | {pick['G']} | {pick['cycles'] / base['cycles']:.2f} | {sim_pick['G']} | "
                     f"{base['total'] / base['macs']:.1f} → {pick['total'] / pick['macs']:.1f} |")
    wall = time.perf_counter() - t0
    lines += ["", f"Energies: Horowitz, ISSCC 2014 (45 nm): MAC 2.0 pJ (bf16 multiply 1.1 + fp32 add 0.9), "
              f"SRAM per 64-bit access 10 / 20 / 100 pJ at 8 KB / 32 KB / 1 MB (log-linear between, by buffer size, "
              f"scaled by word width), DRAM 1.3 nJ per 64 bits. Counts from the programs the timer ran "
              f"(nmsat.sw.energy); a relative model of a 45 nm ASIC, not the FPGA's power.",
              f"Simulator wall time (timing only): {wall:.1f} s; load average {os.getloadavg()[0]:.2f}."]
    out = Path(__file__).parent / "results" / f"optimum_group_size_{args.model}_{cfg.name}_b{args.batch}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
