"""Simulated cycles per second of each transport of the driver on the same program (and the cocotb bench).

    python benchmarks/transport_speed.py [--preset tiny] [--m 32 --n 32 --k 256] [--repeat 3] [--no-amaranth]

One GEMM from the compiler, run through ``nmsat.sw.driver.Device`` on each
transport: ``sim`` (the simulator, timing and bit-exact numerics),
``verilator`` (the Verilated core in its C++ harness), ``amaranth`` (the
gateware in Amaranth's simulator), and, for comparison, the cocotb bench
(``nmsat.sw.rtl.run_programs``: Verilator with cocotb's Python bus models,
one simulator start per call).  Every one must give the simulator's cycles
and bytes (checked).  Cycles per second count the core's CYCLES register
over the wall time of the run (image transfer, START, polling and read-back
included; builds are cached and timed apart).  Medians of ``--repeat`` runs.
Writes benchmarks/results/transport_speed_<preset>_<m>x<n>x<k>.md.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

from nmsat.dataflow.gemm import compile_gemm
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.driver import Device
from nmsat.sw.rtl import RtlJob, _build, run_programs
from nmsat.sw.transports import open_transport
from nmsat.sw.transports.verilator import build_harness
from sim_vs_verilator import timed as median_time  # the benchmarks' median-of-runs timer (same folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-amaranth", action="store_true", help="skip the (slow) Amaranth transport")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    rng = np.random.default_rng(0)
    prog = compile_gemm(cfg, rng.standard_normal((args.m, args.k)).astype(np.float32),
                        rng.standard_normal((args.k, args.n)).astype(np.float32))
    expected_memory = prog.memory.copy()
    expected = CoreModel(cfg).run_sequence(expected_memory, prog.runs)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    build_harness(cfg)
    harness_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _build(cfg)
    cocotb_build = time.perf_counter() - t0
    rows = []
    for name in ["sim", "verilator"] + ([] if args.no_amaranth else ["amaranth"]):
        transport = open_transport(name, cfg, memory_size=prog.memory.size)
        device = Device(cfg, transport)
        seconds, out = median_time(lambda: device.run_image(prog.memory, prog.runs), args.repeat)
        assert out.cycles == expected.cycles and np.array_equal(out.memory, expected_memory), name
        rows.append((f"`{name}` transport", seconds, out.cycles))
    seconds, (out,) = median_time(lambda: run_programs(cfg, [RtlJob(prog.memory, *prog.runs[0],
                                                                     more_runs=tuple(prog.runs[1:]))]), args.repeat)
    assert out.cycles == expected.cycles and np.array_equal(out.memory, expected_memory), "cocotb"
    rows.append(("cocotb bench (Verilator + cocotb, one start)", seconds, out.cycles))
    cocotb_rate = expected.cycles / seconds
    lines = [f"# Transport speed, preset `{cfg.name}`, GEMM {args.m}x{args.n}x{args.k} ({expected.cycles:,} cycles)",
             "", f"Machine: {os.cpu_count()} cores, load average {load:.2f} at the start; medians of {args.repeat} runs. "
             f"Builds (cached): C++ harness {harness_build:.1f} s, cocotb bench {cocotb_build:.1f} s.", "",
             "| engine | wall time per run | simulated cycles / s | vs cocotb bench |", "|---|---|---|---|"]
    for label, seconds, cycles in rows:
        rate = cycles / seconds
        lines.append(f"| {label} | {seconds * 1e3:.1f} ms | {rate:,.0f} | {rate / cocotb_rate:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"transport_speed_{cfg.name}_{args.m}x{args.n}x{args.k}.md").write_text(text)


if __name__ == "__main__":
    main()
