"""The AXI4-Lite register file and the run control (status, error, cycle counter) of the core.

:class:`Registers` decodes the map of ``nmsat.hw.isa.Csr`` (one transaction
at a time); :class:`RunControl` holds the run's state machine (IDLE, BUSY,
DONE, ERROR), the latched error and its PC, and the cycle counter.  Both
live in the ``sync`` domain: START resets every other unit, not these.

Not here: the units that do the work.
"""

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..axi import axi4_lite_signature
from ..config import SATConfig
from ..isa import Csr, ErrorCode, Status
from .common import PC_BITS

__all__ = ["Registers", "RunControl"]


class Registers(wiring.Component):
    """AXI4-Lite slave: CONTROL (start pulse, serial switch), program address and length, the weight
    update's LR, MOMENTUM and WEIGHT_DECAY; read-only
    ID (the config's hash), STATUS, ERROR, CYCLES and ERROR_PC from :class:`RunControl`."""

    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        super().__init__({
            "bus": In(axi4_lite_signature(8)),
            "start": Out(1),  # one-cycle pulse: CONTROL written with bit 0 while not busy
            "serial": Out(1),
            "program_addr": Out(64),
            "program_len": Out(32),
            "status": In(Status),
            "error": In(ErrorCode),
            "cycles": In(64),
            "error_pc": In(32),
            "lr": Out(32), "momentum": Out(32), "decay": Out(32),  # WEIGHT_UPDATE's hyperparameters (fp32 bits)
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        m.d.comb += [bus.bresp.eq(0), bus.rresp.eq(0)]
        # writes: take AW and W together
        take_write = bus.awvalid & bus.wvalid & ~bus.bvalid
        m.d.comb += [bus.awready.eq(take_write), bus.wready.eq(take_write)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        with m.If(take_write):
            m.d.sync += bus.bvalid.eq(1)
            with m.Switch(bus.awaddr[2:]):
                with m.Case(Csr.CONTROL >> 2):
                    m.d.comb += self.start.eq(bus.wdata[0] & (self.status != Status.BUSY))
                    with m.If(self.status != Status.BUSY):
                        m.d.sync += self.serial.eq(bus.wdata[1])
                with m.Case(Csr.PROGRAM_ADDR_LO >> 2):
                    m.d.sync += self.program_addr[:32].eq(bus.wdata)
                with m.Case(Csr.PROGRAM_ADDR_HI >> 2):
                    m.d.sync += self.program_addr[32:].eq(bus.wdata)
                with m.Case(Csr.PROGRAM_LEN >> 2):
                    m.d.sync += self.program_len.eq(bus.wdata)
                for reg, sig in ((Csr.LR, self.lr), (Csr.MOMENTUM, self.momentum), (Csr.WEIGHT_DECAY, self.decay)):
                    with m.Case(reg >> 2):
                        m.d.sync += sig.eq(bus.wdata)
        # reads
        take_read = bus.arvalid & ~bus.rvalid
        m.d.comb += bus.arready.eq(take_read)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(take_read):
            m.d.sync += bus.rvalid.eq(1)
            value = Signal(32)
            with m.Switch(bus.araddr[2:]):
                for reg, expr in ((Csr.ID, Const(self.cfg.hash32, 32)), (Csr.STATUS, self.status.as_value()),
                                  (Csr.ERROR, self.error.as_value()), (Csr.PROGRAM_ADDR_LO, self.program_addr[:32]),
                                  (Csr.PROGRAM_ADDR_HI, self.program_addr[32:]), (Csr.PROGRAM_LEN, self.program_len),
                                  (Csr.CYCLES, self.cycles[:32]), (Csr.CYCLES_HI, self.cycles[32:]),
                                  (Csr.ERROR_PC, self.error_pc), (Csr.LR, self.lr), (Csr.MOMENTUM, self.momentum),
                                  (Csr.WEIGHT_DECAY, self.decay)):
                    with m.Case(reg >> 2):
                        m.d.comb += value.eq(expr)
            m.d.sync += bus.rdata.eq(value)
        return m


class RunControl(wiring.Component):
    """The run's state: START makes it BUSY; the first error latches code and PC and stops new work
    (``stopping``), and STATUS turns ERROR once nothing is busy; FINISH makes it DONE, or with a next
    program (``next_len``) pulses ``chain`` the cycle after (the units reset as at START) and the run goes on with that
    program (``program_addr`` / ``program_len``: the host's registers, then the chained ones).  CYCLES counts
    from START to the retiring or error cycle; ERROR_PC adds the lengths of the programs before."""

    def __init__(self):
        super().__init__({
            "start": In(1),
            "host_addr": In(64), "host_len": In(32),  # the host's PROGRAM_ADDR / PROGRAM_LEN
            "next_addr": In(40), "next_len": In(21),  # the retiring FINISH's next program
            "program_addr": Out(64), "program_len": Out(32),  # the program being run
            "chain": Out(1),  # a FINISH with a next program retired the cycle before: reset the units, fetch it
            "fetch_active": In(1),  # the fetch phase of the run
            "error_raised": In(1), "error_code": In(ErrorCode), "error_at": In(PC_BITS),
            "finish": In(1),  # FINISH retires this cycle
            "busy": In(1),  # some unit still has work on the bus or in flight
            "status": Out(Status),
            "error": Out(ErrorCode),
            "error_pc": Out(32),
            "cycles": Out(64),
            "fetching": Out(1),
            "running": Out(1),  # instructions may be dispatched and started
            "alive": Out(1),  # work already started goes on (also after an error, until the bus is quiet)
        })

    def elaborate(self, platform):
        m = Module()
        stopping = Signal()  # an error was raised: nothing new starts; STATUS turns ERROR once quiet
        busy_state = self.status == Status.BUSY
        chained = Signal()  # the program is a chained one, not the host's
        seg_addr, seg_len, base = Signal(40), Signal(21), Signal(32)
        # the error's PC in its program, latched; ERROR_PC adds the programs before (base) on the read side, off
        # the error's path (base stays put once stopping: a chain needs a FINISH that retires without an error)
        error_at = Signal(PC_BITS)
        m.d.comb += self.error_pc.eq(Mux(stopping, base + error_at, 0))
        # a FINISH with a next program retires in cycle c: the next program is latched then, and the reset
        # of the units comes from a register in c + 1 (``chain``; nothing is dispatched meanwhile), so the
        # next program's cycle 0 is c + 2 (``nmsat.hw.timing.CHAIN_GAP``)
        chaining = Signal()
        m.d.comb += [self.program_addr.eq(Mux(chained, seg_addr, self.host_addr)),
                     self.program_len.eq(Mux(chained, seg_len, self.host_len)),
                     chaining.eq(busy_state & ~stopping & ~self.error_raised & self.finish & (self.next_len != 0))]
        m.d.sync += self.chain.eq(chaining)
        with m.If(chaining):
            m.d.sync += [chained.eq(1), seg_addr.eq(self.next_addr), seg_len.eq(self.next_len),
                         base.eq(base + self.program_len)]
        m.d.comb += [self.fetching.eq(busy_state & self.fetch_active), self.alive.eq(busy_state),
                     self.running.eq(busy_state & ~self.fetch_active & ~stopping & ~self.chain)]
        with m.If(busy_state & ~stopping):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.If(self.start):
            m.d.sync += [self.status.eq(Status.BUSY), self.cycles.eq(0), self.error.eq(ErrorCode.NONE),
                         error_at.eq(0), stopping.eq(0), chained.eq(0), base.eq(0)]
        with m.If(busy_state & ~stopping & self.error_raised):
            m.d.sync += [stopping.eq(1), self.error.eq(self.error_code), error_at.eq(self.error_at)]
        with m.Elif(busy_state & self.finish & (self.next_len == 0)):
            m.d.sync += self.status.eq(Status.DONE)
        # after an error, STATUS turns ERROR once every transfer already on the bus has finished
        with m.If(busy_state & stopping & ~self.busy & ~self.fetch_active):
            m.d.sync += self.status.eq(Status.ERROR)
        return m
