"""The ``verilator`` transport: the core's Verilog under Verilator as an emulated device.

A small C++ harness (``verilator_harness.cpp``) holds the Verilated model,
the memory model of ``docs/architecture.md`` §6 on both AXI4 master ports
and the AXI4-Lite register transactions; it is built once per config into a
shared library (Verilator's hierarchical mode, the PE one block: :func:`hier_pe`; cached by a digest
of the Verilog, the harness and the tool,
under ``~/.cache/nmsat`` or ``NMSAT_BUILD_DIR``) and loaded with ctypes, so
Python is called per register access or wait, not per cycle.  Memory is the
harness's own, seen from Python as a numpy array.

Not here: the cocotb bench (``nmsat.sw.rtl``, for bus-protocol tests with
cocotbext-axi).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import weakref
from pathlib import Path

import numpy as np

from ...hw.config import SATConfig
from ...hw.core.compute import PE_MODULE
from ...hw.verilog import TOPLEVEL, generator_digest, verilog_source
from ..driver import DeviceError
from ..rtl import ToolMissing, _environment, _locked, build_dir_root, verilator_binary

__all__ = ["VerilatorTransport", "build_harness"]

HARNESS = Path(__file__).with_name("verilator_harness.cpp")
LIBRARY = "libnmsat_device.so"


def hier_pe(source: str) -> str:
    """The core's Verilog with its PE module marked as a Verilator hierarchical block: verilated and compiled
    once, not once per instance (the 32 × 32 array's C++ would otherwise hold 1,024 copies)."""
    marked, count = re.subn(rf"(module {PE_MODULE}\([^;]*\);)", r"\1\n  /*verilator hier_block*/", source, count=1)
    if not count:
        raise DeviceError(f"the core's Verilog has no module {PE_MODULE}")
    return marked


def build_harness(cfg: SATConfig) -> Path:
    """The harness library for ``cfg``, built if missing (locked: concurrent callers share one build).  Keyed
    by what the Verilog is made from (:func:`~nmsat.hw.verilog.generator_digest`), the harness and the
    tool, so a cached library is found without making the Verilog."""
    tool = verilator_binary()
    harness = HARNESS.read_text()
    digest = hashlib.sha256((generator_digest(cfg) + harness + str(tool.resolve()) + str(cfg.bus_bytes))
                            .encode()).hexdigest()[:16]
    folder = build_dir_root() / f"device-{cfg.name}-{digest}"
    library = folder / LIBRARY
    with _locked(build_dir_root() / f"device-{cfg.name}-{digest}.lock"):
        if library.exists():
            return library
        folder.mkdir(parents=True, exist_ok=True)
        source = hier_pe(verilog_source(cfg))
        vfile = folder / f"{TOPLEVEL}.v"
        vfile.write_text(source)
        command = [str(tool), "--cc", str(vfile), "--top-module", TOPLEVEL, "--hierarchical", "--exe", str(HARNESS),
                   "--build",
                   "-Mdir", str(folder / "obj"), "-j", str(os.cpu_count() or 2), "-Wno-fatal", "-O3", "--x-assign", "0", "--x-initial", "0",
                   "-CFLAGS", f"-fPIC -O2 -DBUS_BYTES={cfg.bus_bytes}", "-LDFLAGS", "-shared", "-o", LIBRARY]
        try:
            out = subprocess.run(command, env=_environment(), capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise ToolMissing(f"cannot run {exc.filename}: Verilator, a C++ compiler and make are needed") from None
        (folder / "build.log").write_text(out.stdout + out.stderr)
        built = folder / "obj" / LIBRARY
        if out.returncode or not built.exists():
            raise DeviceError(f"the Verilator harness did not build (log: {folder / 'build.log'}):\n"
                              f"{(out.stdout + out.stderr)[-2000:]}")
        os.replace(built, library)
    return library


class VerilatorTransport:
    name = "verilator"

    def __init__(self, cfg: SATConfig, *, memory_size: int = 1 << 20):
        self.cfg, self.memory_size = cfg, int(memory_size)
        lib = ctypes.CDLL(str(build_harness(cfg)))
        lib.nm_create.restype = ctypes.c_void_p
        lib.nm_create.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64]
        lib.nm_destroy.argtypes = [ctypes.c_void_p]
        lib.nm_memory.restype = ctypes.POINTER(ctypes.c_uint8)
        lib.nm_memory.argtypes = [ctypes.c_void_p]
        lib.nm_cycle.restype = ctypes.c_uint64
        lib.nm_cycle.argtypes = [ctypes.c_void_p]
        lib.nm_resize.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        lib.nm_wait.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        lib.nm_reg_write.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
        lib.nm_reg_read.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
        if lib.nm_bus_bytes() != cfg.bus_bytes:
            raise DeviceError(f"the harness library was built for a {lib.nm_bus_bytes()}-byte bus, not {cfg.bus_bytes}")
        self._lib = lib
        self._handle = None
        self._open()

    def _open(self) -> None:
        self._handle = self._lib.nm_create(self.memory_size, self.cfg.mem_read_latency, self.cfg.mem_write_latency)
        # destroyed when the transport is collected or, at the latest, at exit (atexit, before the interpreter
        # tears down: a model destroyed during finalisation, from __del__, crashed or hung the process)
        self._finalizer = weakref.finalize(self, self._lib.nm_destroy, self._handle)
        self.memory = np.ctypeslib.as_array(self._lib.nm_memory(self._handle), shape=(self.memory_size,))

    def resize(self, memory_size: int) -> None:
        """Swap in a zeroed memory of ``memory_size`` bytes (beats past it get DECERR), keeping the core and its
        buffers: a batch of jobs of different sizes on one core, as on a device."""
        self.memory_size = int(memory_size)
        self._lib.nm_resize(self._handle, self.memory_size)
        self.memory = np.ctypeslib.as_array(self._lib.nm_memory(self._handle), shape=(self.memory_size,))

    @property
    def cycle(self) -> int:
        """Clock cycles simulated since the device was opened (register transactions included)."""
        return int(self._lib.nm_cycle(self._handle))

    def read_register(self, offset: int) -> int:
        value = ctypes.c_uint32()
        if self._lib.nm_reg_read(self._handle, int(offset), ctypes.byref(value)):
            raise DeviceError(f"verilator: the register read at {offset:#x} got no response")
        return value.value

    def write_register(self, offset: int, value: int) -> None:
        if self._lib.nm_reg_write(self._handle, int(offset), int(value) & 0xFFFFFFFF):
            raise DeviceError(f"verilator: the register write at {offset:#x} got no response")

    def wait(self, cycles: int) -> None:
        self._lib.nm_wait(self._handle, int(cycles))

    def read_memory(self, addr: int, length: int) -> bytes:
        return self.memory[addr:addr + length].tobytes()

    def write_memory(self, addr: int, data: bytes) -> None:
        self.memory[addr:addr + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def reset(self) -> None:
        """A fresh core (power-on state and reset) with the same memory contents."""
        saved = self.memory.copy()
        self.close()
        self._open()
        self.memory[:] = saved

    def close(self) -> None:
        if self._handle is not None:
            self.memory = None
            self._finalizer()
            self._handle = None
