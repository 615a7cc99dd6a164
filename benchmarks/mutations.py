"""Mutation run: deliberate breaks of the RTL and the simulator, each checked against the test suite.

    python benchmarks/mutations.py [--only NAME ...] [--list]

Each mutation replaces one piece of source text in a fresh copy of the
repository (a snapshot of the files git tracks or would track, taken when
the run starts), then runs the equivalence, simulator and compiler tests on
that copy with ``nmsat`` imported from it.  The unmutated copy runs first
and must pass.  A mutation is *caught* when a test
fails; a *survivor* is a hole in the suite.  Writes
benchmarks/results/mutations.md.  Each mutation of the RTL rebuilds the
Verilator model (about 30 s) and runs the suite (about a minute).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> (file, text, replacement, what it breaks)
MUTATIONS = {
    "update-lane-v-early": ("hw/core/update.py", "picked = Lm + 2 * La  #", "picked = Lm + 2 * La + 2  #",
                            "the update lanes take v' (and VECTOR's odd sums) two stages late, another beat's"),
    "update-lane-late-write": ("hw/core/update.py", 'computed = delayed("computed", received, LANE_LATENCY, reset=True)',
                               'computed = delayed("computed", received, LANE_LATENCY + 1, reset=True)',
                               "the stream engine writes a chunk one cycle after the stream rule says"),
    "sim-chain-no-gap": ("sim/core.py", "cycles=result.cycles + timing.CHAIN_GAP,", "cycles=result.cycles,",
                         "the simulator's chained programs start without the registered reset's cycle"),
    "first-error-ties-late": ("hw/core/top.py", "m.d.comb += right.eq(any_r & (~any_l | (code_r < code_l)))",
                              "m.d.comb += right.eq(any_r & (~any_l | (code_r <= code_l)))",
                              "of two errors of one code raised together, the later one is reported"),
    "update-no-sign-flip": ("hw/core/update.py",
                            'units["w"].b.eq(units["lr_v"].product ^ 0x80000000)', 'units["w"].b.eq(units["lr_v"].product)',
                            "the weight update adds the step instead of subtracting it"),
    "update-decay-for-momentum": ("hw/core/update.py", 'units["mom_v"].a.eq(self.momentum)', 'units["mom_v"].a.eq(self.decay)',
                                  "the weight update multiplies the momenta by the weight decay"),
    "sim-update-half": ("sim/numerics.py", "d = add_f32(g, mul_f32(f32(decay), w))",
                        "d = add_f32(g, mul_f32(f32(decay), w).astype(np.float16).astype(np.float32))",
                        "the simulator's weight update rounds λ·w to half precision"),
    "sparsify-ties-to-higher": ("hw/core/sparsify.py", "m.d.comb += g.eq(values[i][:31] >= values[j][:31])",
                                "m.d.comb += g.eq(values[i][:31] > values[j][:31])",
                                "the sparsifier breaks ties to the higher index"),
    "sparsify-pads-read": ("hw/core/sparsify.py", "m.d.comb += v.eq(Mux(elem_base + i < args.length, tile[r][i], 0))",
                           "m.d.comb += v.eq(tile[r][i])", "the sparsifier ranks the elements past `length`"),
    "bf16-no-round": ("hw/core/common.py", "rounded = (value + 0x7FFF + value[16])[16:32]",
                      "rounded = value[16:32]", "the sparsifier and bf16 STOREs truncate to bf16 instead of rounding"),
    "sim-sparsify-no-transpose": ("sim/core.py", "values = np.ascontiguousarray(raw).view(np.float32).reshape(span, R).T",
                                  "values = np.ascontiguousarray(raw).view(np.float32).reshape(R, span)",
                                  "the simulator reads the BP form's source as the FF form's"),
    "no-sram-range": ("hw/core/dispatch.py", "sram_bad = (is_load | is_store) & (memargs.sram_addr + Mux(",
                      "sram_bad = (is_load | is_store) & 0 & (memargs.sram_addr + Mux(",
                      "the RTL's SRAM range check on LOAD/STORE"),
    "walk-wrong-column-stride": ("hw/core/compute.py", 'next_tap = cur["tap_base"] + cur["w_stride"]',
                                 'next_tap = cur["tap_base"] + cur["h_stride"]',
                                 "the kernel walk steps to the next kernel column by the row stride"),
    "walk-range-one-tap": ("hw/core/dispatch.py", "(gemm.b_addr + last_tap + gemm.k > cfg.b_depth)",
                           "(gemm.b_addr + gemm.k > cfg.b_depth)", "the RTL checks a walk's B range for its first tap only"),
    "sim-walk-ignored": ("sim/core.py", "b_snap = self.b[(b0 + taps[:, None] + np.arange(k)).reshape(-1)]",
                         "b_snap = self.b[b0:b0 + len(taps) * k].copy()",
                         "the simulator reads a walk's B words as one run"),
    "transpose-column-swap": ("hw/core/load.py", "row.word_select(flush_j, 16) for row in flush_rows",
                              "row.word_select(flush_j ^ 1, 16) for row in flush_rows",
                              "a transposing LOAD writes neighbouring columns swapped"),
    "transpose-no-hold": ("hw/core/load.py", "self.r_hold.eq(flushing & flush_last)", "self.r_hold.eq(0)",
                          "a transposing LOAD takes the next LOAD's beats while it writes its last block"),
    "chain-no-base": ("hw/core/regs.py", "self.error_pc.eq(base + self.error_at)", "self.error_pc.eq(self.error_at)",
                      "a chained run's ERROR_PC forgets the programs before"),
    "chain-no-reset": ("hw/core/top.py", "ResetSignal(\"sync\") | regs.start | ctl.chain)",
                       "ResetSignal(\"sync\") | regs.start)", "a chained program starts without the units' reset"),
    "sim-chain-ignored": ("sim/core.py", "            if fields[\"next_len\"][at]:", "            if 0:",
                          "the simulator ends a run at a FINISH that names a next program"),
    "interleave-no-load-waits": ("dataflow/interleave.py", "step_loads.append([encode(Opcode.LOAD, pop_next=int(i == 0 and t in load_waits),",
                                 "step_loads.append([encode(Opcode.LOAD, pop_next=0,",
                                 "interleaved LOADs do not wait for their buffer half"),
    "sim-transpose-no-tail": ("hw/timing.py", "    return cfg.cols\n", "    return 0\n",
                              "the simulator's transposing LOAD ends at its last beat"),
    "no-dram-end": ("hw/core/dispatch.py", "(last_byte > (1 << cfg.addr_bits)))", "0)",
                    "the RTL's end-of-address-space check on LOAD/STORE"),
    "ignore-stride": ("hw/core/common.py", "next_base = cur_base + cur_stride", "next_base = cur_base + word_bytes",
                      "LOAD/STORE ignore the stride between rows"),
    "store-error-pc": ("hw/core/store.py", "self.error_pc.eq(Mux(awaiting.r_rdy, aw_entry.pc, w_info.pc))",
                       "self.error_pc.eq(aw_entry.pc)", "the PC named for a STORE's bus error"),
    "ignore-rresp": ("hw/core/load.py", "self.bus_error.eq(rx_beat & (self.r_resp != 0))", "self.bus_error.eq(0)",
                     "the RTL's check of LOAD read responses"),
    "work-after-error": ("hw/core/compute.py", "start.eq(self.running & self.queue.valid & free & tokens_ok)",
                         "start.eq(self.alive & self.queue.valid & free & tokens_ok)",
                         "GEMMs go on starting after an error (and during the fetch)"),
    "no-token-wait": ("hw/core/compute.py", "(~head.inst.deps.pop_prev | self.l2c_available) & ",
                      "", "a GEMM does not wait for its LOADs' token"),
    "sparse-index-unmasked": ("hw/core/compute.py",
                              "index = (self.idx_data[16 * r:16 * r + 16].word_select(mac_nibble, 4) & mac_mask[:4])",
                              "index = self.idx_data[16 * r:16 * r + 16].word_select(mac_nibble, 4)",
                              "a SPARSE_GEMM uses all 4 bits of a slot's nibble, not log2(m)"),
    "sparse-group-step": ("hw/core/compute.py", "m.d.sync += [in_group.eq(0), rd_b.eq(rd_b + sp_mask + 1)]",
                          "m.d.sync += [in_group.eq(0), rd_b.eq(rd_b + sp_n)]",
                          "a SPARSE_GEMM steps B by n words per group instead of m"),
    "sparse-no-alignment-check": ("hw/core/dispatch.py", "((sparse.b_addr & (m_value - 1)) != 0)", "0",
                                  "the RTL's check that a SPARSE_GEMM's B address is a multiple of m"),
    "sim-sparse-no-index": ("sim/core.py", "return b0 + (j // n * m)[:, None] + (nibble & (m - 1))",
                                  "return b0 + (j // n * m)[:, None] + (nibble & 0)",
                                  "the simulator ignores the slot indices (every slot the group's first word)"),
    "sim-executes-all": ("sim/core.py", "executed = [i for i in range(stop_pc) if s[i] is not None and s[i] <= cycle]",
                         "executed = [i for i in range(stop_pc) if s[i] is not None]",
                         "the simulator also executes instructions that start after an error"),
    "sim-decerr-late": ("sim/core.py", "cycle = e[i] - beats_of[i] + 1 + beat if", "cycle = e[i] if",
                        "the simulator raises a LOAD's bus error at its last beat"),
    "vector-relu-raw-x": ("hw/core/update.py", "m.d.comb += r.eq(Mux(passes, fx, 0))", "m.d.comb += r.eq(Mux(passes, x, 0))",
                          "RELU_GRAD passes x unflushed (subnormals, NaN payloads)"),
    "vector-bf16-odd-lane": ("hw/core/update.py", "x1, y1 = Cat(Const(0, 16), w_q[16:]), Cat(Const(0, 16), g_q[16:])",
                             "x1, y1 = Cat(Const(0, 16), w_q[:16]), Cat(Const(0, 16), g_q[16:])",
                             "a bf16 VECTOR takes the odd element's x from the even one"),
    "vector-z-at-x": ("hw/core/update.py", "z_addr.eq(vec.x_addr + vec.z_offset * burst)", "z_addr.eq(vec.x_addr)",
                      "a VECTOR writes z over x whatever z_offset says"),
    "stream-one-half": ("hw/core/update.py", "return Cat(index[:lb], half_bit)", "return Cat(index[:lb], Const(0, 1))",
                        "the stream engine's two chunk halves collapse into one"),
    "sim-relu-grad-nan-stops": ("sim/numerics.py", "z = np.where(y <= 0, np.float32(0.0), x)",
                                "z = np.where(~(y > 0), np.float32(0.0), x)",
                                "the simulator's RELU_GRAD stops x where y is NaN"),
    "sim-no-hazards": ("sim/core.py", "if ends[other][lo:hi].max(initial=-1) >= begin:", "if False:",
                       "the simulator's race check"),
}

TESTS = ["tests/equiv", "tests/sim", "tests/dataflow", "tests/hw/test_core_top.py"]


def copy_tree(source: Path, dest: Path) -> None:
    """The files that git tracks or would track (new files included) under ``source``, as they are now."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (source / name).exists():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target)


def run_one(name: str | None, work: Path) -> tuple[str, str, float]:
    """Run the tests on a copy of the snapshot with mutation ``name`` applied (None: the unmutated baseline)."""
    src = work / "nmsat"
    if src.exists():
        shutil.rmtree(src)
    copy_tree(work / "snapshot", src)
    if name is not None:
        path, old, new, _ = MUTATIONS[name]
        text = (src / path).read_text()
        if old not in text:
            return "stale (text not found: update the mutation)", "", 0.0
        (src / path).write_text(text.replace(old, new, 1))
    env = dict(os.environ, PYTHONPATH=str(work))  # `import nmsat` finds the copy first
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--tb=line", *TESTS],
                          cwd=src, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    if proc.returncode == 0:
        return ("passes" if name is None else "SURVIVED"), "", wall
    broken = [e for e in ("NameError", "SyntaxError", "ImportError", "AttributeError", "IndentationError")
              if e in proc.stdout]
    if proc.returncode == 1 and failed and not broken:
        return "caught", failed[0], wall
    # collection errors, a mutation that does not run ...: not a test that caught the break
    return f"error (pytest exit {proc.returncode}{', ' + broken[0] if broken else ''})", \
        proc.stdout[-300:].replace("\n", " "), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(MUTATIONS), help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    if args.list:
        for name, (path, *_, what) in MUTATIONS.items():
            print(f"{name:18} {path:12} {what}")
        return
    names = args.only or list(MUTATIONS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nmsat-mutations-") as tmp:
        copy_tree(ROOT, Path(tmp) / "snapshot")  # the tree as it is now: later edits do not leak into the run
        outcome, detail, wall = run_one(None, Path(tmp))
        print(f"baseline (no mutation): {outcome} ({wall:.0f} s)", flush=True)
        if outcome != "passes":
            sys.exit(f"the unmutated copy does not pass its tests: {outcome} {detail}")
        for name in names:
            print(f"{name}: running ...", flush=True)
            outcome, test, wall = run_one(name, Path(tmp))
            print(f"{name}: {outcome} {test} ({wall:.0f} s)", flush=True)
            rows.append((name, MUTATIONS[name][3], outcome, test))
    caught = sum(outcome == "caught" for _, _, outcome, _ in rows)
    lines = ["# Mutation run", "", f"{caught} of {len(rows)} mutations caught by `pytest {' '.join(TESTS)}`.", "",
             "| mutation | what it breaks | outcome | first failing test |", "|---|---|---|---|"]
    lines += [f"| {n} | {w} | {o} | {t} |" for n, w, o, t in rows]
    text = "\n".join(lines)
    print(text)
    if not args.only:
        out = Path(__file__).parent / "results" / "mutations.md"
        out.write_text(text + "\n")
    sys.exit(0 if caught == len(rows) else 1)


if __name__ == "__main__":
    main()
