"""Simulator speed against the RTL under Verilator, on the same program, as simulated cycles per second.

    python benchmarks/sim_vs_verilator.py [--preset tiny] [--m 64 --n 64 --k 256]

The program is the compiler's GEMM of the given shape.  Simulator: `CoreModel.run`
(timing and bit-exact numerics) and `time_program` (timing only).  RTL: the
Verilated core in the cocotb bench with the fixed-latency memory model (the
Verilator build is cached and timed separately; the run includes cocotb's
Python bus model, which steps every cycle).  Both must agree on the cycle
count and the bytes; the script checks it.  Writes
benchmarks/results/sim_vs_verilator_<preset>.md.
"""

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np

from nmsat.dataflow.gemm import compile_gemm
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.rtl import RtlJob, _build, run_programs


def timed(fn, repeat):
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="configuration preset (default: %(default)s)")
    parser.add_argument("--m", type=int, default=32, help="GEMM rows M (default: %(default)s)")
    parser.add_argument("--n", type=int, default=32, help="GEMM columns N (default: %(default)s)")
    parser.add_argument("--k", type=int, default=256, help="GEMM reduction K (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine; medians reported (default: %(default)s)")
    parser.add_argument("--array", help="override the preset's array as RxC (buffers and bus kept), e.g. 8x8")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    if args.array:
        rows, cols = (int(x) for x in args.array.lower().split("x"))
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{rows}x{cols}", rows=rows, cols=cols)
    rng = np.random.default_rng(0)
    prog = compile_gemm(cfg, rng.standard_normal((args.m, args.k)).astype(np.float32),
                        rng.standard_normal((args.k, args.n)).astype(np.float32))

    def sim_full():
        mem = prog.memory.copy()
        return CoreModel(cfg).run(mem, prog.program_addr, prog.length), mem

    t_sim, (result, sim_mem) = timed(sim_full, args.repeat)
    t_timing, _ = timed(lambda: CoreModel(cfg).time_program(prog.words), args.repeat)
    t0 = time.perf_counter()
    _build(cfg)
    t_build = time.perf_counter() - t0
    t_rtl, rtl = timed(lambda: run_programs(cfg, [RtlJob(prog.memory, prog.program_addr, prog.length)])[0],
                       args.repeat)
    assert rtl.cycles == result.cycles and np.array_equal(rtl.memory, sim_mem), "RTL and simulator disagree"
    cycles = result.cycles
    lines = [f"# Simulator vs Verilator, preset `{cfg.name}`, GEMM {args.m}x{args.n}x{args.k}",
             "", f"{cycles} cycles, {prog.length} instructions; medians of {args.repeat} runs.", "",
             "| engine | wall s | simulated cycles/s | vs Verilator |", "|---|---|---|---|"]
    for name, t in (("Verilator + cocotb (RTL)", t_rtl), ("nmsat.sim, bit-exact", t_sim),
                    ("nmsat.sim, timing only", t_timing)):
        lines.append(f"| {name} | {t:.3f} | {cycles / t:,.0f} | {t_rtl / t:,.1f}× |")
    lines += ["", f"Verilator build (cached after the first): {t_build:.1f} s."]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / f"sim_vs_verilator_{cfg.name}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
