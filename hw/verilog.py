"""Verilog of the core: the one place the RTL becomes text (``nmsat verilog``, the benches, the FPGA flow).

Not here: building or running it (:mod:`nmsat.sw.rtl`, :mod:`nmsat.fpga`).
"""

from __future__ import annotations

from .config import SATConfig

__all__ = ["TOPLEVEL", "verilog_source"]

#: the top module's name in every generated file
TOPLEVEL = "nmsat_core"


def verilog_source(cfg: SATConfig) -> str:
    """The core's Verilog for ``cfg`` (top module ``nmsat_core``)."""
    from amaranth.back import verilog

    from .core import Core

    return verilog.convert(Core(cfg), name=TOPLEVEL, emit_src=False)
