"""Wall time of the simulator on a whole ResNet-18/CIFAR training step (batch 32, dense FF/BP/WU GEMMs).

    python benchmarks/sim_resnet18_step.py [--preset vcu1525] [--bit-exact] [--iteration 2:8]

Timing only by default (compile + schedule of every GEMM); with --bit-exact the
operands are random bf16 data, packed into memory images, and the numerics run
too.  ``--iteration N:M`` times instead the whole BDWP iteration of
``nmsat.sw.iteration`` (GEMMs at N:M, vector passes, pre-generation), timing
only, five times on a fresh simulator each (the first includes loading the
compiled worklist), and reports the median.  Target (issue 9): the iteration
in ≤ 1 s timing-only, bit-exact ≤ 30 s on 2 cores.
Writes benchmarks/results/sim_resnet18_step_<preset>[_bitexact|_iteration].md.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from nmsat.dataflow.gemm import compile_gemm, layout_gemm
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel

from utilisation_resnet18 import resnet18_cifar


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525", help="configuration preset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="training batch size (default: %(default)s)")
    parser.add_argument("--bit-exact", action="store_true",
                        help="random operands and bit-exact numerics too (default: timing only)")
    parser.add_argument("--iteration", metavar="N:M", help="time the whole BDWP iteration at this pattern instead")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    if args.iteration:
        return iteration(cfg, args)
    rng = np.random.default_rng(0)
    core = CoreModel(cfg)
    t_compile = t_run = 0.0
    cycles = macs = 0
    for g in resnet18_cifar(args.batch):
        for _ in range(g.count):
            t0 = time.perf_counter()
            if args.bit_exact:
                a = rng.standard_normal((g.m, g.k), dtype=np.float32)
                b = rng.standard_normal((g.k, g.n), dtype=np.float32)
                prog = compile_gemm(cfg, a, b)
                t1 = time.perf_counter()
                result = core.run_sequence(prog.memory, prog.runs)
            else:
                lay = layout_gemm(cfg, g.m, g.n, g.k)
                t1 = time.perf_counter()
                result = core.time_programs(words for _, words in lay.programs)
            t2 = time.perf_counter()
            assert result.ok
            t_compile += t1 - t0
            t_run += t2 - t1
            cycles += result.cycles
            macs += g.m * g.n * g.k
    mode = "bit-exact" if args.bit_exact else "timing only"
    text = (f"# Simulator on one ResNet-18/CIFAR training step (batch {args.batch}), preset `{cfg.name}`, {mode}\n\n"
            f"{macs / 1e9:.2f} GMAC, {cycles} simulated cycles.\n\n"
            f"| part | wall s |\n|---|---|\n| compile (plan, emit{', pack data' if args.bit_exact else ''}) | {t_compile:.2f} |\n"
            f"| simulate | {t_run:.2f} |\n| total | {t_compile + t_run:.2f} |\n\n"
            f"{cycles / t_run / 1e6:.1f} M simulated cycles per second of simulation.\n")
    print(text)
    out = Path(__file__).parent / "results" / f"sim_resnet18_step_{cfg.name}{'_bitexact' if args.bit_exact else ''}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


def iteration(cfg, args):
    import os
    import statistics

    from nmsat.dataflow.models import build_model
    from nmsat.sim.worklist import COMPILED
    from nmsat.sw.iteration import time_iteration

    pattern = tuple(int(x) for x in args.iteration.split(":"))
    layers = build_model("resnet18", args.batch)
    if args.bit_exact:
        return iteration_bit_exact(cfg, args, layers, pattern)
    from nmsat.dataflow.gemm import layout_gemm
    from nmsat.hw.isa import Opcode, encode

    t0 = time.perf_counter()
    CoreModel(cfg).time_program([encode(Opcode.FINISH)])  # loads (or compiles, once per install) the worklist
    warm = time.perf_counter() - t0
    walls, report = [], None
    for _ in range(5):
        layout_gemm.cache_clear()  # every run compiles its GEMMs again
        t0 = time.perf_counter()
        report = time_iteration(cfg, layers, pattern, core=CoreModel(cfg))
        walls.append(time.perf_counter() - t0)
    load = os.getloadavg()[0]
    text = (f"# Simulator on one whole ResNet-18/CIFAR BDWP iteration (batch {args.batch}, {args.iteration}), "
            f"preset `{cfg.name}`, timing only\n\n"
            f"{report.total:,} simulated cycles (GEMMs {report.gemm:,}, batch norms {report.norm:,}, "
            f"vector passes {report.vector:,}, "
            f"pre-generation {report.pregen:,} of which charged {report.pregen_charged:,}).\n\n"
            f"Loading the compiled worklist: {warm:.2f} s, once per process.  "
            f"Wall per run, fresh simulator and compiler caches each (s): {', '.join(f'{w:.2f}' for w in walls)}; median "
            f"**{statistics.median(walls):.2f} s**; worklist compiled: {COMPILED}; load average {load:.2f} "
            f"({os.cpu_count()} cores).\n")
    print(text)
    out = Path(__file__).parent / "results" / f"sim_resnet18_step_{cfg.name}_iteration.md"
    out.write_text(text)


def iteration_bit_exact(cfg, args, layers, pattern):
    """Every program of the iteration on random data with the numerics: each layer's GEMMs (FF and BP sparse
    on the pruned layers, outputs bf16, WU fp32), the batch norms' walks (sums and apply, forward and
    backward), the vector passes a VECTOR function runs (the others have no instruction yet: not counted), and
    each weight layer's pre-generation (WEIGHT_UPDATE + SPARSIFY)."""
    import os

    from nmsat.hw.isa import Opcode, encode

    CoreModel(cfg).time_program([encode(Opcode.FINISH)])  # load the compiled kernels first
    runs = [_bit_exact_run(cfg, layers, pattern) for _ in range(3)]
    wall, compile_s, run_s, cycles, programs = sorted(runs)[1]  # the median run by wall time
    assert len({(r[3], r[4]) for r in runs}) == 1  # the same programs and cycles each time
    load = os.getloadavg()[0]
    text = (f"# Simulator on one whole ResNet-18/CIFAR BDWP iteration (batch {args.batch}, {args.iteration}), "
            f"preset `{cfg.name}`, bit-exact\n\n"
            f"{programs} programs, {cycles:,} simulated cycles (the vector passes no VECTOR function does yet "
            f"are not among them).  Three runs on a fresh simulator each: "
            f"{', '.join(f'{r[0]:.1f}' for r in runs)} s; the median one:\n\n"
            f"| part | wall s |\n|---|---|\n| compile and pack random data | {compile_s:.1f} |\n"
            f"| simulate | {run_s:.1f} |\n| total | **{wall:.1f}** |\n\nLoad average {load:.2f} ({os.cpu_count()} cores).\n")
    print(text)
    (Path(__file__).parent / "results" / f"sim_resnet18_step_{cfg.name}_iteration_bitexact.md").write_text(text)


def _bit_exact_run(cfg, layers, pattern):
    """One bit-exact pass over the iteration's programs: (wall, compile s, simulate s, cycles, programs); the
    convolutions on the mapping the iteration timing chooses (kernel walks or GEMMs)."""
    from nmsat.dataflow.gemm import compile_gemm, compile_sparse_gemm
    from nmsat.dataflow.sparsify import compile_weight_update
    from nmsat.dataflow.vector import compile_vector
    from nmsat.hw.isa import VectorFunc

    from nmsat.dataflow import conv, norm
    from nmsat.hw.numerics import f32_to_bf16_bits
    from nmsat.sw.iteration import Timer

    rng = np.random.default_rng(0)
    core = CoreModel(cfg)
    timer = Timer(cfg, core)
    compile_s = run_s = 0.0
    cycles = programs = 0
    t_all = time.perf_counter()

    def random_bf16(*shape):  # activations and gradients as the GEMMs' data: normal, rounded to bf16
        return f32_to_bf16_bits(rng.standard_normal(shape, dtype=np.float32))

    for layer in layers:
        jobs = []
        for g in layer.gemms:
            p = pattern if layer.sparse and g.stage in ("FF", "BP") else None
            if timer.mapping(layer, g, p) == "walk":  # the kernel walk the iteration timing chose
                geo = layer.conv
                ho = (geo.size + 2 * geo.padding - geo.kernel) // geo.stride + 1
                weight = rng.standard_normal((geo.cout, geo.cin, geo.kernel, geo.kernel), dtype=np.float32)
                if g.stage == "WU":
                    jobs.append(lambda geo=geo, ho=ho: conv.compile_wu(cfg, random_bf16(geo.batch, geo.cout, ho, ho),
                                                                      random_bf16(geo.batch, geo.cin, geo.size, geo.size),
                                                                      geo.kernel, geo.stride, geo.padding))
                    continue
                plans = timer.walk_plans(geo, g.stage, p)
                if g.stage == "FF":
                    walks = [conv.ff_walk(weight, geo.size, geo.size, geo.stride, geo.padding, 1)]
                else:
                    walks = conv.bp_walks(weight, geo.size, geo.size, geo.stride, geo.padding, 1)
                src, dst = plans[0].src, plans[0].dst
                jobs.append(lambda walks=walks, src=src, dst=dst, p=p: conv.compile_walks(
                    cfg, walks, src, random_bf16(src.batch, src.channels, src.h, src.w), dst, p))
                continue
            for _ in range(g.count):
                a = rng.standard_normal((g.m, g.k), dtype=np.float32)
                b = rng.standard_normal((g.k, g.n), dtype=np.float32)
                if layer.sparse and g.stage in ("FF", "BP"):
                    jobs.append(lambda a=a, b=b: compile_sparse_gemm(cfg, a, b, *pattern, out_bf16=True))
                else:
                    jobs.append(lambda a=a, b=b, g=g: compile_gemm(cfg, a, b, out_bf16=g.stage != "WU"))
        if layer.kind == "batchnorm" and layer.shape is not None:  # its four programs, as the iteration times them
            y, d, coef = random_bf16(*layer.shape), random_bf16(*layer.shape), np.ones(layer.shape[1], np.float32)
            jobs += [lambda y=y: norm.compile_channel_sums(cfg, y, y),
                     lambda y=y, coef=coef: norm.compile_channel_affine(cfg, [(y, coef)], coef, relu=True),
                     lambda y=y, d=d: norm.compile_channel_sums(cfg, d, y),
                     lambda y=y, d=d, coef=coef: norm.compile_channel_affine(cfg, [(d, coef), (y, coef)], coef)]
        for p in layer.passes if not (layer.kind == "batchnorm" and layer.shape is not None) else ():
            if p.built:
                func = VectorFunc.ADD if "add" in p.op else VectorFunc.RELU_GRAD
                bits = rng.integers(0, 1 << 16, p.elements, dtype=np.uint16) & np.uint16(0xBFFF)
                jobs.append(lambda bits=bits, func=func: compile_vector(cfg, func, bits, bits[::-1].copy()))
        if layer.weights is not None and layer.sparse:
            cout, k_g, groups = layer.weights
            w = rng.standard_normal((cout, k_g), dtype=np.float32)
            jobs.append(lambda w=w, groups=groups: compile_weight_update(cfg, w, w * 0.1, w, *pattern, lr=0.1,
                                                                         momentum=0.9, groups=groups))
        for job in jobs:
            t0 = time.perf_counter()
            prog = job()
            t1 = time.perf_counter()
            runs = getattr(prog, "runs", None) or [(prog.program_addr, prog.length)]
            for reg, value in getattr(prog, "registers", {}).items():
                core.write_csr(reg, value)
            result = core.run_sequence(prog.memory, runs)
            t2 = time.perf_counter()
            assert result.ok, (layer.name, result.error)
            compile_s += t1 - t0
            run_s += t2 - t1
            cycles += result.cycles
            programs += len(runs)
    return time.perf_counter() - t_all, compile_s, run_s, cycles, programs


if __name__ == "__main__":
    main()
