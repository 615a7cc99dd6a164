"""cocotb test module that runs programs on the Verilated core (loaded by :mod:`nmsat.sw.rtl`, not imported directly).

A bench in the cocotbext-axi manner: one clock, one reset, an ``AxiLiteMaster``
on the ``csr`` port, and on the ``mem`` port and the sparsifier's ``spmem`` port
(one memory behind both) either

* ``fixed`` — :class:`FixedLatencyRam`, the memory model of the config
  (``docs/architecture.md`` §6: every address accepted, first read beat
  ``mem_read_latency`` cycles later then one beat per cycle, write response
  ``mem_write_latency`` cycles after a burst's last beat, DECERR past the
  job's memory), against which the simulator is cycle-exact; or
* ``axiram`` — cocotbext-axi's ``AxiRam``, whose latency is not fixed (its
  read channel can pause between bursts), for functional runs; or
* ``axiram-backpressure`` — the same with every channel paused at random.

Amaranth's port names need ``bus_separator="__"``.  It reads the job manifest
named by ``NMSAT_JOBS``, runs each job as a host would (program address and
length, START, poll STATUS up to the job's cycle limit), and writes the
registers and memory back.
"""

import itertools
import json
import os
import random
from collections import deque

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Csr, Status

POLL_CYCLES = 64


class SharedMemory:
    """The bytes behind one or more :class:`FixedLatencyRam` ports, and the memory's size."""

    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        self.mem = bytearray()
        self.limit = 0
        self.ports: list["FixedLatencyRam"] = []

    def load(self, data: bytes) -> None:
        """Replace the memory by ``data``; its length is the memory's size.  Drops transfers still pending
        (there are none after a run, only after a core that was reset while hanging)."""
        for port in self.ports:
            port.clear()
        self.mem[:] = data
        self.limit = len(data) // self.cfg.bus_bytes * self.cfg.bus_bytes

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.mem[addr:addr + length])


class FixedLatencyRam:
    """An AXI4 slave port onto a :class:`SharedMemory` with the config's fixed latencies (single ID, INCR bursts,
    responses in order).

    The memory has a size; a beat that reaches past it is answered with DECERR: a read beat carries
    zeros, a write beat is dropped and its burst's response is DECERR.
    """

    DECERR = 3

    def __init__(self, bus: AxiBus, clock, cfg: SATConfig, store: SharedMemory):
        self.bus, self.clock, self.cfg, self.store = bus, clock, cfg, store
        store.ports.append(self)
        self._beats = deque()  # (cycle, data, last, resp)
        self._bursts = deque()  # [address, beats left, any beat past the end]
        self._responses = deque()  # (cycle, resp)
        self._r_free = 0  # first cycle the read channel is free
        self.bus.read.ar.arready.value = 1
        self.bus.write.aw.awready.value = 1
        self.bus.write.w.wready.value = 1
        for sig in (self.bus.read.r.rvalid, self.bus.write.b.bvalid):
            sig.value = 0
        cocotb.start_soon(self._run())

    def clear(self) -> None:
        for queue in (self._beats, self._bursts, self._responses):
            queue.clear()
        self._r_free = 0

    async def _run(self):
        ar, aw, w, r, b = self.bus.read.ar, self.bus.write.aw, self.bus.write.w, self.bus.read.r, self.bus.write.b
        bus_bytes = self.cfg.bus_bytes
        beats, bursts, responses, store = self._beats, self._bursts, self._responses, self.store
        cycle = -1
        while True:
            await RisingEdge(self.clock)
            cycle += 1  # the handshakes sampled here happened in `cycle`
            if beats and r.rvalid.value and r.rready.value:  # the beat presented in `cycle` was taken
                beats.popleft()
            if ar.arvalid.value:
                addr, n = int(ar.araddr.value), int(ar.arlen.value) + 1
                first = max(cycle + self.cfg.mem_read_latency, self._r_free)
                for i in range(n):
                    a = addr + i * bus_bytes
                    if a + bus_bytes <= store.limit:
                        beats.append((first + i, int.from_bytes(store.mem[a:a + bus_bytes], "little"), i == n - 1, 0))
                    else:
                        beats.append((first + i, 0, i == n - 1, self.DECERR))
                self._r_free = first + n
            if aw.awvalid.value:
                bursts.append([int(aw.awaddr.value), int(aw.awlen.value) + 1, False])
            if w.wvalid.value:
                burst = bursts[0]
                if burst[0] + bus_bytes <= store.limit:
                    store.mem[burst[0]:burst[0] + bus_bytes] = int(w.wdata.value).to_bytes(bus_bytes, "little")
                else:
                    burst[2] = True
                burst[0] += bus_bytes
                burst[1] -= 1
                assert bool(w.wlast.value) == (burst[1] == 0), "wlast does not match awlen"
                if burst[1] == 0:
                    bursts.popleft()
                    responses.append((cycle + self.cfg.mem_write_latency, self.DECERR if burst[2] else 0))
            # drive the responses of the next cycle
            nxt = cycle + 1
            if beats and beats[0][0] <= nxt:  # a beat not taken (RREADY low) is presented again
                _, data, last, resp = beats[0]
                r.rvalid.value, r.rdata.value, r.rlast.value, r.rresp.value = 1, data, int(last), resp
            else:
                r.rvalid.value = 0
            if responses and responses[0][0] == nxt:
                b.bvalid.value, b.bresp.value = 1, responses.popleft()[1]
            else:
                b.bvalid.value = 0


@cocotb.test()
async def run_jobs(dut):
    manifest = json.loads(open(os.environ["NMSAT_JOBS"]).read())
    cfg = SATConfig.from_json(manifest["config"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())

    async def reset():
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    await reset()
    csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "csr", bus_separator="__"), dut.clk, dut.rst)
    buses = [AxiBus.from_prefix(dut, name, bus_separator="__") for name in ("mem", "spmem")]
    memories = [np.load(job["memory"]) for job in manifest["jobs"]]
    if manifest["memory_model"] == "fixed":
        ram = SharedMemory(cfg)
        for bus in buses:
            FixedLatencyRam(bus, dut.clk, cfg, ram)
        size = None
    else:
        size = max(len(m) for m in memories)
        ram = AxiRam(buses[0], dut.clk, dut.rst, size=size)
        rams = [ram, AxiRam(buses[1], dut.clk, dut.rst, size=size, mem=ram.mem)]  # one memory, two ports
        if manifest["memory_model"] == "axiram-backpressure":
            # every channel paused at random, as cocotbext-axi's own benches do
            rng = random.Random(1)
            for port in rams:
                for channel in (port.read_if.ar_channel, port.read_if.r_channel, port.write_if.aw_channel,
                                port.write_if.w_channel, port.write_if.b_channel):
                    channel.set_pause_generator(itertools.cycle([rng.random() < 0.4 for _ in range(97)]))
    for job, memory in zip(manifest["jobs"], memories):
        if size is None:
            ram.load(memory.tobytes())
        else:
            ram.write(0, memory.tobytes() + bytes(size - len(memory)))
        core_id = await csr.read_dword(int(Csr.ID))
        result = {"id": core_id, "timed_out": False, "cycles": 0}
        for program_addr, program_len in job["runs"]:  # a GEMM cut into several programs runs them in turn
            await csr.write_dword(int(Csr.PROGRAM_ADDR_LO), program_addr & 0xFFFFFFFF)
            await csr.write_dword(int(Csr.PROGRAM_ADDR_HI), program_addr >> 32)
            await csr.write_dword(int(Csr.PROGRAM_LEN), program_len)
            for reg, value in job.get("registers", []):
                await csr.write_dword(reg, value)
            await csr.write_dword(int(Csr.CONTROL), 1 | (2 if job["serial"] else 0))
            waited = 0
            while True:  # poll, with a cycle limit: a hanging core ends the job, not the bench
                await ClockCycles(dut.clk, POLL_CYCLES)
                waited += POLL_CYCLES
                status = Status(await csr.read_dword(int(Csr.STATUS)))
                if status in (Status.DONE, Status.ERROR):
                    break
                if waited >= job["max_cycles"]:
                    result["timed_out"] = True
                    break
            result.update(status=status.value, error=await csr.read_dword(int(Csr.ERROR)),
                          error_pc=await csr.read_dword(int(Csr.ERROR_PC)))
            result["cycles"] += await csr.read_dword(int(Csr.CYCLES)) | (await csr.read_dword(int(Csr.CYCLES_HI))) << 32
            if status is not Status.DONE:
                break
        np.save(job["memory_out"], np.frombuffer(ram.read(0, len(memory)), dtype=np.uint8))
        with open(job["result"], "w") as f:
            json.dump(result, f)
        if result["timed_out"]:  # START is ignored while busy: reset the core for the next job
            await reset()
