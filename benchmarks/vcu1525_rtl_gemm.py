"""A GEMM and a 2:8 sparse GEMM at the vcu1525 preset on the Verilated core against the simulator.

    python benchmarks/vcu1525_rtl_gemm.py

Builds the ``verilator`` transport's harness for vcu1525 (hierarchical: minutes; cached afterwards), runs
both programs through ``nmsat.sw.driver.Device`` and compares status, cycles and every byte of memory
with ``CoreModel`` (issue 11: the full-size core verified, a benchmark rather than a default test).
Prints one line per program.
"""

import time

import numpy as np

from nmsat.dataflow.gemm import compile_gemm, compile_sparse_gemm
from nmsat.hw.config import SATConfig
from nmsat.sim.core import CoreModel
from nmsat.sw.driver import Device
from nmsat.sw.transports.verilator import VerilatorTransport, build_harness


def main():
    cfg = SATConfig.vcu1525()
    t0 = time.time()
    build_harness(cfg)
    print(f"harness build (or cache): {time.time() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(1)
    cases = [("gemm 64x64x256", compile_gemm(cfg, rng.standard_normal((64, 256)).astype(np.float32),
                                             rng.standard_normal((256, 64)).astype(np.float32))),
             ("2:8 sparse gemm 64x64x512", compile_sparse_gemm(cfg, rng.standard_normal((64, 512)).astype(np.float32),
                                                               rng.standard_normal((512, 64)).astype(np.float32), 2, 8))]
    for name, prog in cases:
        memory = prog.memory.copy()
        expected = CoreModel(cfg).run_sequence(memory, prog.runs)
        device = Device(cfg, VerilatorTransport(cfg, memory_size=prog.memory.size))
        t0 = time.time()
        out = device.run_image(prog.memory, prog.runs, check=False)
        seconds = time.time() - t0
        same = (out.status, out.error, out.cycles) == (expected.status, expected.error, expected.cycles) and \
            np.array_equal(out.memory, memory)
        print(f"{name}: {out.status.name}, {out.cycles} cycles (simulator {expected.cycles}), memory "
              f"{'equal' if np.array_equal(out.memory, memory) else 'DIFFERS'}: {'same' if same else 'NOT THE SAME'}; "
              f"{seconds:.1f} s, {out.cycles / seconds:,.0f} cycles/s", flush=True)


if __name__ == "__main__":
    main()
