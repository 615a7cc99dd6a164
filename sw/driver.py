"""The host's driver of the core: one run sequence over any transport (simulator, Amaranth, card).

Holds :class:`Transport` (what a way of reaching a core must do: read and
write a 32-bit register, read and write memory, let time pass),
:class:`Device` (the register map of ``nmsat.hw.isa.Csr`` driven over a
transport: the ID check against the config's hash, memory allocation and
transfers, program load, start, polling with a cycle limit and a time-out,
the core's error codes raised as :class:`CoreError` subclasses that name
the error and the instruction), and :class:`RunOutcome`, the one result
of a run on any transport.

Not here: the transports themselves (``nmsat.sw.transports``), what the
programs compute (``nmsat.dataflow``).  No torch import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import INSTRUCTION_BYTES, Csr, ErrorCode, Opcode, Status, decode_program

__all__ = ["Transport", "RunOutcome", "DeviceError", "IdMismatch", "DeviceBusy", "DeviceTimeout", "CoreError",
           "ERROR_CLASSES", "Device", "DEFAULT_MAX_CYCLES"]

#: cycles a run may take before :meth:`Device.run` gives up on it (a hanging core fails its run)
DEFAULT_MAX_CYCLES = 2_000_000


@runtime_checkable
class Transport(Protocol):
    """A way of reaching one core.  Registers are 32-bit words at the byte offsets of ``Csr``; memory is the
    core's memory from address 0 to ``memory_size``; ``wait(cycles)`` lets the core run about that many
    clock cycles (a transport that runs a program to its end on START does nothing)."""

    name: str
    memory_size: int

    def read_register(self, offset: int) -> int: ...

    def write_register(self, offset: int, value: int) -> None: ...

    def read_memory(self, addr: int, length: int) -> bytes: ...

    def write_memory(self, addr: int, data: bytes) -> None: ...

    def wait(self, cycles: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunOutcome:
    """What a run (or a sequence of runs on one memory image) leaves, on any transport: the registers'
    status, error code, error PC (in a chained run counting the programs before) and cycles; ``timed_out``
    if the core was still BUSY at the cycle limit; ``memory`` (the image after the run) when read back;
    ``instruction`` names the failing instruction; ``stats`` the simulator's own ``RunResult`` (per-unit
    busy cycles, hazards) where the transport has one."""

    status: Status
    error: ErrorCode
    cycles: int
    error_pc: int = 0
    timed_out: bool = False
    memory: np.ndarray | None = None
    id: int | None = None
    instruction: str | None = None
    stats: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.DONE and not self.timed_out


class DeviceError(RuntimeError):
    """The device cannot do what was asked (wrong core, busy, out of memory, no card)."""


class IdMismatch(DeviceError):
    """The core's ID register does not hold the config's hash: another bitstream or preset."""


class DeviceBusy(DeviceError):
    """A register write that would corrupt a run in flight (the program registers, or START) while BUSY."""


class DeviceTimeout(DeviceError):
    """The core was still BUSY at the cycle limit or the wall-clock time-out; ``outcome`` says when."""

    def __init__(self, message: str, outcome: RunOutcome):
        super().__init__(message)
        self.outcome = outcome


class CoreError(RuntimeError):
    """The core stopped with status ERROR; ``code``, ``pc`` and ``instruction`` say where, ``outcome`` all."""

    code: ErrorCode = ErrorCode.NONE

    def __init__(self, outcome: RunOutcome):
        where = f" at instruction {outcome.error_pc}" + (f" ({outcome.instruction})" if outcome.instruction else "")
        super().__init__(f"core error {outcome.error.name}{where}, after {outcome.cycles} cycles")
        self.outcome, self.pc, self.instruction = outcome, outcome.error_pc, outcome.instruction


def _error_class(code: ErrorCode) -> type[CoreError]:
    name = "".join(part.title() for part in code.name.split("_")) + "Error"
    return type(name, (CoreError,), {"code": code, "__doc__": f"The core stopped with ERROR = {code.name}.",
                                     "__module__": __name__})


#: the exception raised for each error code (``ERROR_CLASSES[ErrorCode.BAD_ARGS]`` is ``BadArgsError``)
ERROR_CLASSES: dict[ErrorCode, type[CoreError]] = {code: _error_class(code) for code in ErrorCode
                                                   if code is not ErrorCode.NONE}
globals().update({cls.__name__: cls for cls in ERROR_CLASSES.values()})
__all__ += [cls.__name__ for cls in ERROR_CLASSES.values()]

_RUNNING_REGISTERS = {Csr.PROGRAM_ADDR_LO, Csr.PROGRAM_ADDR_HI, Csr.PROGRAM_LEN, Csr.LR, Csr.MOMENTUM,
                      Csr.WEIGHT_DECAY}


class Device:
    """One core over a transport.  Checks the ID register against ``cfg.hash32`` on open (``check_id``).

    ``alloc`` hands out burst-aligned regions from a bump allocator (``reset_allocator`` frees them all);
    ``write``/``read`` move bytes or numpy arrays; ``run`` starts a program, polls STATUS (``poll_cycles``
    apart) until DONE or ERROR, up to ``max_cycles`` cycles and ``timeout`` seconds, and raises the
    error's :class:`CoreError` subclass (``check=False`` returns the outcome instead).  Register writes
    that a run in flight would read are refused while BUSY.
    """

    def __init__(self, cfg: SATConfig, transport: Transport, *, check_id: bool = True, poll_cycles: int = 256):
        if not isinstance(transport, Transport):
            raise TypeError(f"{transport!r} is not a Transport (read_register, write_register, read_memory, "
                            f"write_memory, wait, close, name, memory_size)")
        self.cfg, self.transport, self.poll_cycles = cfg, transport, poll_cycles
        self.id = transport.read_register(Csr.ID)
        if check_id and self.id != cfg.hash32:
            transport.close()
            raise IdMismatch(f"{transport.name}: the core's ID is {self.id:#010x}, the config's hash is "
                             f"{cfg.hash32:#010x}: another preset or bitstream")
        self._align = cfg.max_burst_beats * cfg.bus_bytes
        self.reset_allocator()

    # ---------------------------------------------------------------- memory

    @property
    def memory_size(self) -> int:
        return self.transport.memory_size

    def reset_allocator(self, base: int = 0) -> None:
        self._next = base

    def alloc(self, nbytes: int, align: int | None = None) -> int:
        """A region of ``nbytes`` bytes, aligned to a burst (or ``align``)."""
        align = align or self._align
        if nbytes < 1:
            raise ValueError(f"alloc: {nbytes} bytes; need at least 1")
        addr = -(-self._next // align) * align
        if addr + nbytes > self.memory_size:
            raise DeviceError(f"{self.transport.name}: out of device memory: {nbytes} bytes at {addr:#x} pass "
                              f"the end of its {self.memory_size:#x} bytes")
        self._next = addr + nbytes
        return addr

    def _check_range(self, what: str, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.memory_size:
            raise ValueError(f"{what}: {length} bytes at {addr:#x} are outside the device memory "
                             f"(0..{self.memory_size:#x})")

    def write(self, addr: int, data) -> None:
        """Bytes, or a numpy array's raw bytes (little-endian, as the core reads them), to ``addr``."""
        if isinstance(data, np.ndarray):
            little = data.dtype.newbyteorder("<")  # the core reads little-endian words
            raw = np.ascontiguousarray(data, dtype=little).view(np.uint8).tobytes()
        else:
            raw = bytes(data)
        self._check_range("write", addr, len(raw))
        self.transport.write_memory(int(addr), raw)

    def read(self, addr: int, length: int) -> np.ndarray:
        """``length`` bytes from ``addr`` as a uint8 array."""
        self._check_range("read", addr, length)
        return np.frombuffer(self.transport.read_memory(int(addr), int(length)), dtype=np.uint8).copy()

    # ---------------------------------------------------------------- registers

    def status(self) -> Status:
        return Status(self.transport.read_register(Csr.STATUS))

    def write_register(self, register: Csr, value: int) -> None:
        """A host register write; those a run reads are refused while the core is BUSY."""
        register = Csr(register)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{register.name}: {value!r} is not an integer (write fp32 values as their bit pattern)")
        if not 0 <= int(value) < 1 << 32:
            raise ValueError(f"{register.name}: {value!r} is not a 32-bit value")
        if register in _RUNNING_REGISTERS and self.status() is Status.BUSY:
            raise DeviceBusy(f"{self.transport.name}: {register.name} written while the core is BUSY")
        self.transport.write_register(register, int(value))

    def _read64(self, lo: Csr, hi: Csr) -> int:
        """A 64-bit counter read while it runs: high, low, high again until the high word held still."""
        while True:
            high = self.transport.read_register(hi)
            low = self.transport.read_register(lo)
            if self.transport.read_register(hi) == high:
                return low | high << 32

    # ---------------------------------------------------------------- runs

    def start(self, program_addr: int, program_len: int, *, serial: bool = False) -> None:
        if self.status() is Status.BUSY:
            raise DeviceBusy(f"{self.transport.name}: START while the core is BUSY")
        if not 0 <= program_addr < 1 << 64 or not 0 <= program_len < 1 << 32:
            raise ValueError(f"start: program at {program_addr:#x}, {program_len} instructions: out of the "
                             f"registers' range")
        self.write_register(Csr.PROGRAM_ADDR_LO, program_addr & 0xFFFFFFFF)
        self.write_register(Csr.PROGRAM_ADDR_HI, program_addr >> 32)
        self.write_register(Csr.PROGRAM_LEN, program_len)
        self.transport.write_register(Csr.CONTROL, 1 | (2 if serial else 0))

    def wait_done(self, *, max_cycles: int = DEFAULT_MAX_CYCLES, timeout: float | None = None) -> RunOutcome:
        """Poll until the run ends; a run past ``max_cycles`` (or ``timeout`` seconds) comes back
        ``timed_out`` with the cycles counted so far."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status is not Status.BUSY:
                break
            cycles = self._read64(Csr.CYCLES, Csr.CYCLES_HI)
            if cycles >= max_cycles or (deadline is not None and time.monotonic() > deadline):
                return RunOutcome(status, ErrorCode(self.transport.read_register(Csr.ERROR)), cycles,
                                  timed_out=True, id=self.id)
            # polls grow with the run (a quarter of the cycles so far), so a long run is not mostly polling
            interval = max(self.poll_cycles, min(cycles // 4, 64 * self.poll_cycles))
            self.transport.wait(min(interval, max(1, max_cycles - cycles)))
        return RunOutcome(status, ErrorCode(self.transport.read_register(Csr.ERROR)),
                          self._read64(Csr.CYCLES, Csr.CYCLES_HI), self.transport.read_register(Csr.ERROR_PC),
                          id=self.id, stats=getattr(self.transport, "last_stats", None))

    def run(self, program_addr: int, program_len: int, *, serial: bool = False, registers: dict | None = None,
            max_cycles: int = DEFAULT_MAX_CYCLES, timeout: float | None = None, check: bool = True) -> RunOutcome:
        """One run: ``registers`` (``Csr`` → value, the weight update's hyperparameters) written first."""
        for register, value in (registers or {}).items():
            self.write_register(register, value)
        self.start(program_addr, program_len, serial=serial)
        outcome = self.wait_done(max_cycles=max_cycles, timeout=timeout)
        if outcome.status is Status.ERROR:
            outcome.instruction = self._name_instruction(program_addr, program_len, outcome.error_pc)
        if check:
            self.raise_for(outcome)
        return outcome

    def raise_for(self, outcome: RunOutcome) -> None:
        if outcome.timed_out:
            raise DeviceTimeout(f"{self.transport.name}: the core is still BUSY after {outcome.cycles} cycles",
                                outcome)
        if outcome.status is Status.ERROR:
            raise ERROR_CLASSES.get(outcome.error, CoreError)(outcome)

    def run_image(self, memory: np.ndarray, runs, *, serial: bool = False, registers: dict | None = None,
                  max_cycles: int = DEFAULT_MAX_CYCLES, timeout: float | None = None,
                  check: bool = True) -> RunOutcome:
        """A whole memory image written from address 0, its runs ``[(program_addr, program_len), ...]``
        one after another (each starting when the one before is DONE; cycles add up; the first that does
        not end DONE ends the sequence), and the image read back into ``outcome.memory``."""
        memory = np.asarray(memory, dtype=np.uint8)
        if memory.size > self.memory_size:
            raise ValueError(f"run_image: a {memory.size}-byte image does not fit the device's {self.memory_size}")
        self.write(0, memory)
        total, outcome = 0, None
        for addr, length in runs:
            outcome = self.run(int(addr), int(length), serial=serial, registers=registers,
                               max_cycles=max_cycles - total, timeout=timeout, check=False)
            registers = None
            total += outcome.cycles
            if not outcome.ok:
                break
        if outcome is None:
            raise ValueError("run_image: no runs")
        outcome.cycles = total
        outcome.memory = self.read(0, memory.size)
        if check:
            self.raise_for(outcome)
        return outcome

    def _name_instruction(self, program_addr: int, program_len: int, pc: int) -> str | None:
        """The opcode (and program) of instruction ``pc`` of the run, following its chain of FINISHes."""
        if program_addr % self.cfg.bus_bytes:
            return None  # the fetch itself failed: no instruction ran
        try:
            for hop in range(64):
                if not 1 <= program_len <= self.cfg.imem_depth:
                    return None
                if pc < program_len:
                    fields = decode_program(bytes(self.read(program_addr + pc * INSTRUCTION_BYTES,
                                                            INSTRUCTION_BYTES)))
                    where = f" of the program at {program_addr:#x}" if hop else ""
                    code = int(fields["opcode"][0])
                    name = Opcode(code).name if code in {op.value for op in Opcode} else f"opcode {code}"
                    return f"{name}{where}"
                fields = decode_program(bytes(self.read(program_addr, program_len * INSTRUCTION_BYTES)))
                finishes = np.flatnonzero(fields["opcode"] == Opcode.FINISH.value)
                if not finishes.size:
                    return None
                pc -= program_len
                program_addr, program_len = int(fields["next_addr"][finishes[0]]), int(fields["next_len"][finishes[0]])
        except (ValueError, KeyError):
            return None
        return None

    def reset(self) -> None:
        """Bring the core back to its power-on state (after a run that did not finish), where the transport can."""
        reset = getattr(self.transport, "reset", None)
        if reset is None:
            raise DeviceError(f"{self.transport.name}: this transport cannot reset the core")
        reset()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
