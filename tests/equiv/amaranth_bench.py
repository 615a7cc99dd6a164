"""Runs the gateware core in Amaranth's simulator against the config's memory model.

The memory model is the one of ``docs/architecture.md`` §6 (addresses always
accepted; read data ``mem_read_latency`` cycles after the address, one beat
per cycle, in order; a write response ``mem_write_latency`` cycles after a
burst's last beat; DECERR for a beat past the end of ``memory``).  A run that
is still busy after ``max_cycles`` ends with ``timed_out``.  Registers are written and read over AXI4-Lite as a host
would.  Returns what the simulator's ``RunResult`` holds, for comparison.
"""

from collections import deque
from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from nmsat.hw.config import SATConfig
from nmsat.hw.core import Core
from nmsat.hw.isa import Csr, ErrorCode, Status


@dataclass
class GatewareRun:
    status: Status
    error: ErrorCode
    cycles: int
    error_pc: int
    memory: np.ndarray
    timed_out: bool = False


class _Port:
    """The memory model on one AXI4 master port of the core (the memory bytes are shared between ports)."""

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
        ctx.set(axi.bvalid, 1 if self.b_times and self.b_times[0][0] == cycle else 0)
        if self.b_times and self.b_times[0][0] == cycle:
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
            assert bool(ctx.get(axi.wlast)) == (burst[1] == 0), "wlast does not match awlen"
            if burst[1] == 0:
                self.aw_bursts.popleft()
                self.b_times.append((cycle + cfg.mem_write_latency, burst[2]))

    def idle(self) -> None:
        self.ctx.set(self.axi.rvalid, 0)
        self.ctx.set(self.axi.bvalid, 0)


def run_core_amaranth(cfg: SATConfig, memory: np.ndarray, program_addr: int, program_len: int, *,
                      serial: bool = False, max_cycles: int = 200_000, core: Core | None = None,
                      registers: dict | None = None) -> GatewareRun:
    """``registers``: written before START (``Csr`` → value), as a host does for WEIGHT_UPDATE."""
    core = core or Core(cfg)
    mem = memory.copy()
    bus = cfg.bus_bytes
    limit = mem.size // bus * bus  # a beat reaching past this gets DECERR
    out = {"timed_out": True}

    async def testbench(ctx):
        csr = core.csr

        async def csr_write(reg, value):
            ctx.set(csr.awaddr, int(reg))
            ctx.set(csr.wdata, value)
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

        async def csr_read(reg):
            ctx.set(csr.araddr, int(reg))
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
            return value

        out["id"] = await csr_read(Csr.ID)
        await csr_write(Csr.PROGRAM_ADDR_LO, program_addr & 0xFFFFFFFF)
        await csr_write(Csr.PROGRAM_ADDR_HI, program_addr >> 32)
        await csr_write(Csr.PROGRAM_LEN, program_len)
        for reg, value in (registers or {}).items():
            await csr_write(reg, value)
        # START: the handshake cycle is cycle -1 of the run
        ctx.set(csr.awaddr, int(Csr.CONTROL))
        ctx.set(csr.wdata, 1 | (2 if serial else 0))
        ctx.set(csr.awvalid, 1)
        ctx.set(csr.wvalid, 1)
        ctx.set(csr.bready, 1)
        assert ctx.get(csr.awready)
        await ctx.tick()
        ctx.set(csr.awvalid, 0)
        ctx.set(csr.wvalid, 0)

        ports = [_Port(ctx, cfg, port, mem, limit) for port in (core.mem, core.spmem)]  # one memory, two ports
        cycle = 0
        while cycle < max_cycles:
            for port in ports:
                port.drive(cycle)
            for port in ports:
                port.sample(cycle)
            await ctx.tick()
            cycle += 1
            if ctx.get(core.status) in (Status.DONE, Status.ERROR):
                out["timed_out"] = False
                break
        for port in ports:
            port.idle()
        out["status"] = Status(await csr_read(Csr.STATUS))
        out["error"] = ErrorCode(await csr_read(Csr.ERROR))
        out["cycles"] = await csr_read(Csr.CYCLES)
        out["error_pc"] = await csr_read(Csr.ERROR_PC)

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert out["id"] == cfg.hash32
    return GatewareRun(out["status"], out["error"], out["cycles"], out["error_pc"], mem, out["timed_out"])

