"""The ``xdma`` transport: a VCU1525 over PCIe through the Xilinx XDMA driver's character devices.

Registers are 32-bit little-endian words read and written at ``register_base + offset`` of the user
device (``/dev/xdma0_user``: the BAR the shell maps onto the core's AXI4-Lite slave); memory moves by DMA,
host to card through ``/dev/xdma0_h2c_0`` and card to host through ``/dev/xdma0_c2h_0``, the file offset
being the card address (``memory_base + addr``: where the core's address 0 sits in the card's AXI map).
Without a card (or the driver, or the permission) it fails at once with :class:`CardMissing`, naming what
it looked for.  ``io`` is the object whose ``pread``/``pwrite`` reach the files (``os``; a test puts a
simulated card behind regular files).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ...hw.config import SATConfig
from ..driver import DeviceError

__all__ = ["XdmaPaths", "XdmaTransport", "CardMissing", "DMA_CHUNK"]

#: bytes per DMA call (the driver splits larger ones too; this bounds one call's pinned memory)
DMA_CHUNK = 4 << 20


class CardMissing(DeviceError):
    """No card to talk to: the XDMA devices are absent or cannot be opened."""


@dataclass(frozen=True)
class XdmaPaths:
    user: str = "/dev/xdma0_user"
    h2c: str = "/dev/xdma0_h2c_0"
    c2h: str = "/dev/xdma0_c2h_0"

    @classmethod
    def card(cls, index: int = 0, channel: int = 0) -> "XdmaPaths":
        """The devices of card ``index`` (``/dev/xdma<index>_*``) and DMA channel ``channel``."""
        return cls(f"/dev/xdma{index}_user", f"/dev/xdma{index}_h2c_{channel}", f"/dev/xdma{index}_c2h_{channel}")


class XdmaTransport:
    name = "xdma"

    def __init__(self, cfg: SATConfig, *, paths: XdmaPaths = XdmaPaths(), register_base: int = 0,
                 memory_base: int = 0, memory_size: int | None = None, io=os):
        self.cfg, self.paths, self.io = cfg, paths, io
        self.register_base, self.memory_base = register_base, memory_base
        self.memory_size = int(memory_size or 1 << cfg.addr_bits)
        missing = [p for p in (paths.user, paths.h2c, paths.c2h) if not os.path.exists(p)]
        if missing:
            raise CardMissing(f"no VCU1525 card: {', '.join(missing)} not found (is the card in, its bitstream "
                              f"loaded and the Xilinx XDMA driver installed? `ls /dev/xdma*` lists what there is)")
        self._fds = []
        try:
            for path, flags in ((paths.user, os.O_RDWR), (paths.h2c, os.O_WRONLY), (paths.c2h, os.O_RDONLY)):
                self._fds.append(os.open(path, flags))
        except OSError as exc:
            self.close()
            raise CardMissing(f"cannot open {exc.filename}: {exc.strerror} (the XDMA devices need read and write "
                              f"permission: a udev rule or root)") from None
        self._user, self._h2c, self._c2h = self._fds

    def read_register(self, offset: int) -> int:
        data = self.io.pread(self._user, 4, self.register_base + int(offset))
        if len(data) != 4:
            raise DeviceError(f"{self.paths.user}: a register read at {offset:#x} returned {len(data)} bytes")
        return int.from_bytes(data, "little")

    def write_register(self, offset: int, value: int) -> None:
        written = self.io.pwrite(self._user, (int(value) & 0xFFFFFFFF).to_bytes(4, "little"),
                                 self.register_base + int(offset))
        if written != 4:
            raise DeviceError(f"{self.paths.user}: a register write at {offset:#x} wrote {written} bytes")

    def write_memory(self, addr: int, data: bytes) -> None:
        view = memoryview(data)
        for first in range(0, len(view), DMA_CHUNK):
            chunk = view[first:first + DMA_CHUNK]
            written = self.io.pwrite(self._h2c, chunk, self.memory_base + addr + first)
            if written != len(chunk):
                raise DeviceError(f"{self.paths.h2c}: DMA of {len(chunk)} bytes to {addr + first:#x} wrote {written}")

    def read_memory(self, addr: int, length: int) -> bytes:
        parts = []
        for first in range(0, length, DMA_CHUNK):
            n = min(DMA_CHUNK, length - first)
            part = self.io.pread(self._c2h, n, self.memory_base + addr + first)
            if len(part) != n:
                raise DeviceError(f"{self.paths.c2h}: DMA of {n} bytes from {addr + first:#x} read {len(part)}")
            parts.append(part)
        return b"".join(parts)

    def wait(self, cycles: int) -> None:
        time.sleep(cycles / (self.cfg.clock_mhz * 1e6))

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
