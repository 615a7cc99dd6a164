"""The ``amaranth`` transport: the gateware core (``nmsat.hw.core.Core``) in Amaranth's simulator.

Registers go over the core's AXI4-Lite slave as a host's would, one transaction at a time; a memory
model answers on both AXI4 master ports every cycle (the model of ``docs/architecture.md`` §6: addresses
always accepted; read data ``mem_read_latency`` cycles after the address, one beat per cycle, in order; a
write response ``mem_write_latency`` cycles after a burst's last beat; DECERR for a beat past the end of
memory).  Host memory transfers go straight into the model's bytes (the card's DMA does not pass through
the core).  Slow: for the tiny preset and short programs.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from amaranth.sim import Simulator

from ...hw.config import SATConfig
from ...hw.core import Core

__all__ = ["AmaranthTransport"]


class _Port:
    """The memory model on one AXI4 master port (the memory bytes are shared between ports)."""

    DECERR = 3

    def __init__(self, ctx, cfg: SATConfig, axi, mem: np.ndarray, limit: int):
        self.ctx, self.cfg, self.axi, self.mem, self.limit = ctx, cfg, axi, mem, limit
        self.r_beats = deque()  # (cycle, data, last, resp)
        self.r_free = 0
        self.presented = False
        self.aw_bursts = deque()  # [addr, beats left, resp]
        self.b_times = deque()
        for sig in (axi.arready, axi.awready, axi.wready):
            ctx.set(sig, 1)

    def drive(self, cycle: int) -> None:
        """This cycle's responses."""
        ctx, axi = self.ctx, self.axi
        self.presented = bool(self.r_beats) and self.r_beats[0][0] <= cycle  # held while RREADY is low
        if self.presented:
            _, data, last, resp = self.r_beats[0]
            ctx.set(axi.rvalid, 1)
            ctx.set(axi.rdata, data)
            ctx.set(axi.rlast, last)
            ctx.set(axi.rresp, resp)
        else:
            ctx.set(axi.rvalid, 0)
        respond = bool(self.b_times) and self.b_times[0][0] == cycle
        ctx.set(axi.bvalid, int(respond))
        if respond:
            ctx.set(axi.bresp, self.b_times.popleft()[1])

    def sample(self, cycle: int) -> None:
        """This cycle's requests (settled)."""
        ctx, axi, cfg, mem, limit = self.ctx, self.axi, self.cfg, self.mem, self.limit
        bus = cfg.bus_bytes
        if self.presented and ctx.get(axi.rready):
            self.r_beats.popleft()
        if ctx.get(axi.arvalid):
            addr, beats = ctx.get(axi.araddr), ctx.get(axi.arlen) + 1
            first = max(cycle + cfg.mem_read_latency, self.r_free)
            for i in range(beats):
                a = addr + i * bus
                if a + bus <= limit:
                    self.r_beats.append((first + i, int.from_bytes(mem[a:a + bus].tobytes(), "little"), i == beats - 1, 0))
                else:
                    self.r_beats.append((first + i, 0, i == beats - 1, self.DECERR))
            self.r_free = first + beats
        if ctx.get(axi.awvalid):
            self.aw_bursts.append([ctx.get(axi.awaddr), ctx.get(axi.awlen) + 1, 0])
        if ctx.get(axi.wvalid):
            burst = self.aw_bursts[0]
            if burst[0] + bus <= limit:
                mem[burst[0]:burst[0] + bus] = np.frombuffer(ctx.get(axi.wdata).to_bytes(bus, "little"), dtype=np.uint8)
            else:
                burst[2] = self.DECERR
            burst[0] += bus
            burst[1] -= 1
            if bool(ctx.get(axi.wlast)) != (burst[1] == 0):
                raise AssertionError("the core's WLAST does not match its AWLEN")
            if burst[1] == 0:
                self.aw_bursts.popleft()
                self.b_times.append((cycle + cfg.mem_write_latency, burst[2]))


class _Op:
    def __init__(self, fn):
        self.fn, self.done, self.result = fn, False, None


class AmaranthTransport:
    name = "amaranth"

    def __init__(self, cfg: SATConfig, *, memory_size: int = 1 << 16, core: Core | None = None):
        self.cfg, self.memory_size = cfg, int(memory_size)
        self.memory = np.zeros(self.memory_size, dtype=np.uint8)
        self._core = core
        self._start_simulator()

    def _start_simulator(self) -> None:
        self.core = self._core or Core(self.cfg)
        self._ops: deque[_Op] = deque()
        self._error: BaseException | None = None
        sim = Simulator(self.core)
        sim.add_clock(1e-8)
        sim.add_testbench(self._host)
        sim.add_testbench(self._memory_model, background=True)
        self._sim = sim

    async def _memory_model(self, ctx):
        ports = [_Port(ctx, self.cfg, port, self.memory, self.memory_size // self.cfg.bus_bytes * self.cfg.bus_bytes)
                 for port in (self.core.mem, self.core.spmem)]  # one memory, two ports
        cycle = 0
        while True:
            for port in ports:
                port.drive(cycle)
            for port in ports:
                port.sample(cycle)
            await ctx.tick()
            cycle += 1

    async def _host(self, ctx):
        while True:
            if self._ops:
                op = self._ops[0]
                op.result = await op.fn(ctx)
                op.done = True
                self._ops.popleft()
            else:
                await ctx.tick()

    def _do(self, fn):
        op = _Op(fn)
        self._ops.append(op)
        try:
            while not op.done:
                self._sim.advance()
        except BaseException:
            self._start_simulator()  # a broken simulation is not reused
            raise
        return op.result

    def read_register(self, offset: int) -> int:
        csr = self.core.csr

        async def read(ctx):
            ctx.set(csr.araddr, int(offset))
            ctx.set(csr.arvalid, 1)
            ctx.set(csr.rready, 1)
            while not ctx.get(csr.arready):
                await ctx.tick()
            await ctx.tick()
            ctx.set(csr.arvalid, 0)
            while not ctx.get(csr.rvalid):
                await ctx.tick()
            value = ctx.get(csr.rdata)
            await ctx.tick()
            ctx.set(csr.rready, 0)
            return int(value)
        return self._do(read)

    def write_register(self, offset: int, value: int) -> None:
        csr = self.core.csr

        async def write(ctx):
            ctx.set(csr.awaddr, int(offset))
            ctx.set(csr.wdata, int(value))
            ctx.set(csr.wstrb, 0xF)
            ctx.set(csr.awvalid, 1)
            ctx.set(csr.wvalid, 1)
            ctx.set(csr.bready, 1)
            while not ctx.get(csr.awready):
                await ctx.tick()
            await ctx.tick()
            ctx.set(csr.awvalid, 0)
            ctx.set(csr.wvalid, 0)
            while not ctx.get(csr.bvalid):
                await ctx.tick()
            await ctx.tick()
            ctx.set(csr.bready, 0)
        self._do(write)

    def wait(self, cycles: int) -> None:
        async def ticks(ctx):
            for _ in range(int(cycles)):
                await ctx.tick()
        self._do(ticks)

    def read_memory(self, addr: int, length: int) -> bytes:
        return self.memory[addr:addr + length].tobytes()

    def write_memory(self, addr: int, data: bytes) -> None:
        self.memory[addr:addr + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def reset(self) -> None:
        """A fresh core (power-on state) on the same memory: after a run that did not finish."""
        self._start_simulator()

    def close(self) -> None:
        pass
