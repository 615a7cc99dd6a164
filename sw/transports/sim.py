"""The ``sim`` transport: the cycle-exact simulator behind the core's register map.

A START runs the program to its end at once (``nmsat.sim.core.CoreModel.run``, chained programs
included); STATUS, ERROR, CYCLES and ERROR_PC then read what the run left, and ``last_stats`` holds the
simulator's own result (busy cycles per unit, hazards).  Memory is a numpy array: beats past its end get
DECERR, as on the memory model.
"""

from __future__ import annotations

import numpy as np

from ...hw.config import SATConfig
from ...hw.isa import Csr, ErrorCode, Status
from ...sim.core import CoreModel

__all__ = ["SimTransport", "DEFAULT_MEMORY_SIZE"]

#: device memory when none is given (clipped to the config's address space)
DEFAULT_MEMORY_SIZE = 64 << 20

_HOST_REGISTERS = (Csr.PROGRAM_ADDR_LO, Csr.PROGRAM_ADDR_HI, Csr.PROGRAM_LEN, Csr.LR, Csr.MOMENTUM, Csr.WEIGHT_DECAY)


class SimTransport:
    name = "sim"

    def __init__(self, cfg: SATConfig, *, memory_size: int | None = None, core: CoreModel | None = None,
                 numerics: bool = True, check_hazards: bool = True):
        self.cfg = cfg
        self.memory_size = int(memory_size or min(DEFAULT_MEMORY_SIZE, 1 << cfg.addr_bits))
        self.memory = np.zeros(self.memory_size, dtype=np.uint8)
        self.core = core or CoreModel(cfg)
        self.numerics, self.check_hazards = numerics, check_hazards
        self._host = {reg: 0 for reg in _HOST_REGISTERS}
        self._state = {Csr.STATUS: Status.IDLE.value, Csr.ERROR: ErrorCode.NONE.value, Csr.ERROR_PC: 0}
        self._cycles = 0
        self.last_stats = None

    def read_register(self, offset: int) -> int:
        offset = int(offset)
        if offset == Csr.ID:
            return self.cfg.hash32
        if offset in (Csr.CYCLES, Csr.CYCLES_HI):
            return (self._cycles >> (32 if offset == Csr.CYCLES_HI else 0)) & 0xFFFFFFFF
        if offset in self._state:
            return self._state[offset]
        return self._host.get(offset, 0)  # unmapped offsets read 0, as on the core

    def write_register(self, offset: int, value: int) -> None:
        offset, value = int(offset), int(value) & 0xFFFFFFFF
        if offset == Csr.CONTROL:
            if value & 1 and self._state[Csr.STATUS] != Status.BUSY.value:
                self._start(serial=bool(value & 2))
        elif offset in self._host:
            self._host[offset] = value
            if offset in (Csr.LR, Csr.MOMENTUM, Csr.WEIGHT_DECAY):
                self.core.write_csr(Csr(offset), value)
        # writes to read-only or unmapped offsets are ignored, as on the core

    def _start(self, serial: bool) -> None:
        addr = self._host[Csr.PROGRAM_ADDR_LO] | self._host[Csr.PROGRAM_ADDR_HI] << 32
        result = self.core.run(self.memory, addr, self._host[Csr.PROGRAM_LEN], serial=serial,
                               numerics=self.numerics, check_hazards=self.check_hazards)
        self._state = {Csr.STATUS: result.status.value, Csr.ERROR: result.error.value, Csr.ERROR_PC: result.error_pc}
        self._cycles = result.cycles
        self.last_stats = result

    def resize(self, memory_size: int) -> None:
        """A zeroed memory of ``memory_size`` bytes (beats past it get DECERR); registers and core state kept."""
        self.memory_size = int(memory_size)
        self.memory = np.zeros(self.memory_size, dtype=np.uint8)

    def read_memory(self, addr: int, length: int) -> bytes:
        return self.memory[addr:addr + length].tobytes()

    def write_memory(self, addr: int, data: bytes) -> None:
        self.memory[addr:addr + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def wait(self, cycles: int) -> None:
        pass  # a run ends within START

    def close(self) -> None:
        pass
