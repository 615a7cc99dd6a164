"""The Vivado project of a board's bitstream, written with edalize, and the run when Vivado is installed.

:func:`write_project` writes into a folder the core's Verilog (``nmsat.hw.verilog``), the board's shell
(``nmsat.fpga.vcu1525.shell``: top level, IP Tcl, XDC, run hooks) and edalize's Vivado flow (project
Tcl and Makefile: synthesis, placement, routing, the bitstream; the hooks add utilisation and timing
reports and the .mcs for the card's flash).  :func:`build` does that and, with Vivado on PATH, runs it;
builds are cached by a digest of the config, every generated file and the toolchain, so an unchanged
build is not redone.  Without Vivado it stops after the project and says so (:data:`NO_VIVADO`).

Not here: the Yosys estimate (:mod:`nmsat.fpga.estimate`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..hw.config import SATConfig
from ..hw.verilog import TOPLEVEL, verilog_source

__all__ = ["BOARDS", "NO_VIVADO", "Project", "BuildResult", "write_project", "build"]

#: boards with a shell
BOARDS = ("vcu1525",)
#: the exit status of ``nmsat fpga build`` when the project is written but Vivado is not on PATH
NO_VIVADO = 3
_STAMP = "nmsat-build.json"


@dataclass(frozen=True)
class Project:
    folder: Path
    name: str
    files: tuple[str, ...]
    digest: str


@dataclass(frozen=True)
class BuildResult:
    project: Project
    ran_vivado: bool
    cached: bool
    bitstream: Path | None
    message: str


def _board(board: str):
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}: the shells are {', '.join(BOARDS)}")
    from .vcu1525 import board as pins, shell

    return pins, shell


def _edalize_version() -> str:
    try:
        from importlib.metadata import version

        return version("edalize")
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        return "none"


def _vivado_version(vivado: str | None) -> str:
    if vivado is None:
        return "none"
    out = subprocess.run([vivado, "-version"], capture_output=True, text=True, timeout=300)
    return (out.stdout.splitlines() or ["unknown"])[0]


def write_project(cfg: SATConfig, folder: Path | str, board: str = "vcu1525", *, core_verilog: str | None = None) -> Project:
    """Every file of the board's Vivado project for a core of ``cfg``, into ``folder`` (created)."""
    pins, shell = _board(board)
    from edalize.flows.vivado import Vivado as VivadoFlow

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"nmsat_{board}"
    texts = {f"{TOPLEVEL}.v": core_verilog if core_verilog is not None else verilog_source(cfg),
             f"{shell.TOP}.v": shell.shell_verilog(cfg), "ip.tcl": shell.ip_tcl(cfg), f"{board}.xdc": shell.constraints(),
             **shell.hooks_tcl()}
    for file, text in texts.items():
        (folder / file).write_text(text)
    edam = {"name": name, "toplevel": shell.TOP,
            "files": [{"name": f"{TOPLEVEL}.v", "file_type": "verilogSource"},
                      {"name": f"{shell.TOP}.v", "file_type": "verilogSource"},
                      {"name": f"{board}.xdc", "file_type": "xdc"},
                      {"name": "ip.tcl", "file_type": "tclSource"},
                      {"name": "hooks.tcl", "file_type": "tclSource"}],
             "flow_options": {"part": pins.PART}}
    VivadoFlow(edam, str(folder)).configure()
    digest = hashlib.sha256(json.dumps({"config": cfg.to_json(), "board": board, "edalize": _edalize_version(),
                                        "files": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in texts.items()}},
                                       sort_keys=True).encode()).hexdigest()[:16]
    files = tuple(sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != _STAMP))
    return Project(folder, name, files, digest)


def build(cfg: SATConfig, folder: Path | str, board: str = "vcu1525", *, vivado: str | None = None,
          core_verilog: str | None = None) -> BuildResult:
    """Write the project, then run Vivado (``vivado``, default: the one on PATH) unless a build of the same
    digest (config, files, edalize and Vivado versions) already left its bitstream there."""
    vivado = vivado or shutil.which("vivado")
    project = write_project(cfg, folder, board, core_verilog=core_verilog)
    if vivado is None:
        return BuildResult(project, False, False, None,
                           f"Vivado is not on PATH: the project is written to {project.folder} "
                           f"(run `make` there where Vivado is installed, or rerun this with Vivado on PATH)")
    digest = hashlib.sha256((project.digest + _vivado_version(vivado)).encode()).hexdigest()[:16]
    stamp = project.folder / _STAMP
    bitstream = project.folder / f"{project.name}.bit"
    if stamp.exists() and json.loads(stamp.read_text()).get("digest") == digest and bitstream.exists():
        return BuildResult(project, False, True, bitstream, f"up to date: {bitstream} (digest {digest})")
    out = subprocess.run(["make", "-C", str(project.folder)], capture_output=True, text=True)
    (project.folder / "vivado-build.log").write_text(out.stdout + out.stderr)
    if out.returncode or not bitstream.exists():
        raise RuntimeError(f"the Vivado build failed (log: {project.folder / 'vivado-build.log'}):\n"
                           f"{(out.stdout + out.stderr)[-2000:]}")
    stamp.write_text(json.dumps({"digest": digest}))
    return BuildResult(project, True, False, bitstream, f"bitstream: {bitstream}")
