"""The ways of reaching a core, each behind ``nmsat.sw.driver.Transport``.

* ``sim`` (:class:`SimTransport`): the cycle-exact simulator (``nmsat.sim``);
* ``amaranth`` (:class:`AmaranthTransport`): the gateware in Amaranth's simulator, with the memory model
  of ``docs/architecture.md`` §6 on its two AXI4 ports;
* ``verilator`` (:class:`VerilatorTransport`): the core's Verilog under Verilator, driven from a C++ harness
  (memory model and bus transactions in C++, loaded with ctypes);
* ``xdma`` (:class:`XdmaTransport`): a VCU1525 over PCIe through the Xilinx XDMA character devices.

:func:`open_device` opens a :class:`nmsat.sw.driver.Device` on one by name.  Each module imports what it
needs only when used (Amaranth only for ``amaranth``).
"""

from __future__ import annotations

from ...hw.config import SATConfig
from ..driver import Device

__all__ = ["TRANSPORTS", "open_transport", "open_device"]

#: the transport names :func:`open_transport` takes
TRANSPORTS = ("sim", "amaranth", "verilator", "xdma")


def open_transport(name: str, cfg: SATConfig, **options):
    """A transport by name; ``options`` go to its constructor (``memory_size``, ``paths``, ...)."""
    if name == "sim":
        from .sim import SimTransport
        return SimTransport(cfg, **options)
    if name == "amaranth":
        from .amaranth import AmaranthTransport
        return AmaranthTransport(cfg, **options)
    if name == "verilator":
        from .verilator import VerilatorTransport
        return VerilatorTransport(cfg, **options)
    if name == "xdma":
        from .xdma import XdmaTransport
        return XdmaTransport(cfg, **options)
    raise ValueError(f"unknown transport {name!r}: choose one of {', '.join(TRANSPORTS)}")


def open_device(name: str, cfg: SATConfig, **options) -> Device:
    return Device(cfg, open_transport(name, cfg, **options))
