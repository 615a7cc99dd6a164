"""Full-size builds of the core: its Verilog and the Verilator build (the ``verilator`` transport's harness).

    python benchmarks/full_size_build.py [--preset vcu1525] [--no-verilator]

Times ``nmsat.hw.verilog.verilog_source`` (lines, wall time, the process's peak memory) and then
``nmsat.sw.transports.verilator.build_harness`` into a fresh build folder (``NMSAT_BUILD_DIR`` is set to a
temporary one, so a cached build does not count).  Issue 11's target: each ≤ 20 minutes on this 2-core
machine at vcu1525.  Writes benchmarks/results/full_size_build_<preset>.md.
"""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from nmsat.hw.config import SATConfig
from nmsat.hw.verilog import verilog_source


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vcu1525")
    parser.add_argument("--no-verilator", action="store_true")
    args = parser.parse_args()
    cfg = SATConfig.preset(args.preset)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    text = verilog_source(cfg)
    generation = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lines = [f"# Full-size build, preset `{cfg.name}` ({cfg.rows}x{cfg.cols})", "",
             f"Machine: {os.cpu_count()} cores, load average {load:.2f} at the start.", "",
             f"- Verilog (one `nmsat_pe` module, {cfg.rows * cfg.cols} instances): {len(text.splitlines()):,} lines, "
             f"{len(text) / 2**20:.1f} MiB, generated in {generation:.0f} s, peak memory {peak_gib:.1f} GiB"]
    print(lines[-1], flush=True)
    if not args.no_verilator:
        from nmsat.sw.transports.verilator import build_harness

        with tempfile.TemporaryDirectory() as tmp:
            os.environ["NMSAT_BUILD_DIR"] = tmp
            t0 = time.perf_counter()
            build_harness(cfg)
            lines.append(f"- Verilator build of the harness (Verilog generation included): "
                         f"{time.perf_counter() - t0:.0f} s")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"full_size_build_{cfg.name}.md").write_text(text)


if __name__ == "__main__":
    main()
