"""The dense core in Amaranth: registers, fetch, dispatcher, token counters, LOAD / GEMM / STORE units.

:class:`Core` is the gateware twin of :class:`nmsat.sim.core.CoreModel`; it
implements the timing rules of ``docs/architecture.md`` §6 cycle for cycle
(the tests in ``tests/equiv`` hold the two to it).  One AXI4-Lite slave
(``csr``) and one AXI4 master (``mem``).  The timing rules assume the memory
model of the config (``arready``, ``awready``, ``wready`` high); any other
AXI slave that back-pressures those channels gets the same results, later.
The core keeps ``rready`` and ``bready`` high.

Not here: the floating-point units (:mod:`nmsat.hw.fp`), the instruction
layouts (:mod:`nmsat.hw.isa`) or the FPGA shell (:mod:`nmsat.fpga`).
"""

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Elaboratable, Module, Mux, ResetSignal, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .axi import axi4_lite_signature, axi4_signature, next_burst
from .config import SATConfig
from .fp import Bf16Mac, Fp32Adder
from .isa import INSTRUCTION_BITS, Buffer, Csr, ErrorCode, Instruction, Opcode, Status

__all__ = ["Core", "PC_BITS"]

PC_BITS = 21  # instruction index, up to 2^20 instructions (imem_depth <= 2^20)


def _clog2(x: int) -> int:
    return max(1, (x - 1).bit_length())


class _Registers(Elaboratable):
    """AXI4-Lite register file of the map in ``nmsat.hw.isa.Csr`` (one transaction at a time)."""

    def __init__(self, bus, cfg: SATConfig, status):
        self.bus = bus
        self.cfg = cfg
        self.start = Signal()  # one-cycle pulse: CONTROL written with bit 0 while not busy
        self.serial = Signal()
        self.program_addr = Signal(64)
        self.program_len = Signal(32)
        self.status = status
        self.error = Signal(ErrorCode)
        self.cycles = Signal(64)
        self.error_pc = Signal(PC_BITS)

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
            offset = bus.awaddr[2:]
            with m.Switch(offset):
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
                                  (Csr.ERROR_PC, self.error_pc)):
                    with m.Case(reg >> 2):
                        m.d.comb += value.eq(expr)
            m.d.sync += bus.rdata.eq(value)
        return m


class _Entry(data.Struct):
    """A queue entry: the instruction and its index in the program."""

    inst: Instruction
    pc: PC_BITS


class _Token(Elaboratable):
    """One dependency-token counter: +1 on push, −1 on pop, overflow past ``limit`` is an error."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = Signal(range(limit + 2))
        self.push = Signal()
        self.pop = Signal()
        self.available = Signal()
        self.overflow = Signal()

    def elaborate(self, platform):
        m = Module()
        nxt = Signal(range(self.limit + 3))
        m.d.comb += [nxt.eq(self.count + self.push - self.pop), self.available.eq(self.count != 0),
                     self.overflow.eq(nxt > self.limit)]
        m.d.sync += self.count.eq(nxt)
        return m


class _BurstWalker(Elaboratable):
    """Walks a 2-D transfer burst by burst (the cut of ``nmsat.sim.timing.bursts``).

    ``load`` (with the transfer on ``addr``/``rows``/``stride``/``word_beats``)
    starts a transfer and ``step`` in the same or a later cycle emits a burst
    (``burst_addr``, ``burst_beats``, ``last``).  Combinational outputs.
    """

    def __init__(self, cfg: SATConfig, name: str):
        self.cfg, self.name = cfg, name
        ab = cfg.addr_bits + 1
        self.load = Signal()
        self.step = Signal()
        self.addr = Signal(40)
        self.rows = Signal(16)
        self.stride = Signal(32)
        self.word_beats = Signal(8)
        self.active = Signal()  # a transfer is loaded and has bursts left (registered)
        self.burst_addr = Signal(ab)
        self.burst_beats = Signal(range(cfg.max_burst_beats + 1))
        self.last = Signal()
        # state
        self._addr = Signal(ab)
        self._base = Signal(ab)
        self._run_left = Signal(32)
        self._runs_left = Signal(17)
        self._stride = Signal(32)
        self._word_beats = Signal(8)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        cur_addr, cur_base = Signal.like(self._addr), Signal.like(self._base)
        cur_run_left, cur_runs_left = Signal.like(self._run_left), Signal.like(self._runs_left)
        cur_stride, cur_word_beats = Signal.like(self._stride), Signal.like(self._word_beats)
        contiguous = Signal()
        word_bytes = Signal(16)
        m.d.comb += [word_bytes.eq(self.word_beats * cfg.bus_bytes),
                     contiguous.eq(self.stride == word_bytes)]
        with m.If(self.load):
            m.d.comb += [cur_addr.eq(self.addr), cur_base.eq(self.addr), cur_stride.eq(self.stride),
                         cur_word_beats.eq(self.word_beats)]
            with m.If(contiguous):
                m.d.comb += [cur_run_left.eq(self.rows * self.word_beats), cur_runs_left.eq(1)]
            with m.Else():
                m.d.comb += [cur_run_left.eq(self.word_beats), cur_runs_left.eq(self.rows)]
        with m.Else():
            m.d.comb += [cur_addr.eq(self._addr), cur_base.eq(self._base), cur_run_left.eq(self._run_left),
                         cur_runs_left.eq(self._runs_left), cur_stride.eq(self._stride),
                         cur_word_beats.eq(self._word_beats)]
        beats = next_burst(m, self.name, cur_addr, cur_run_left, cfg.bus_bytes, cfg.max_burst_beats)
        m.d.comb += [self.burst_addr.eq(cur_addr), self.burst_beats.eq(beats),
                     self.last.eq((beats == cur_run_left) & (cur_runs_left == 1))]
        with m.If(self.load):
            m.d.sync += [self._addr.eq(cur_addr), self._base.eq(cur_base), self._run_left.eq(cur_run_left),
                         self._runs_left.eq(cur_runs_left), self._stride.eq(cur_stride),
                         self._word_beats.eq(cur_word_beats), self.active.eq(1)]
        with m.If(self.step):
            with m.If(beats == cur_run_left):
                next_base = cur_base + cur_stride
                m.d.sync += [self._runs_left.eq(cur_runs_left - 1), self._base.eq(next_base),
                             self._addr.eq(next_base), self._run_left.eq(cur_word_beats)]
                with m.If(cur_runs_left == 1):
                    m.d.sync += self.active.eq(0)
            with m.Else():
                m.d.sync += [self._addr.eq(cur_addr + beats * cfg.bus_bytes), self._run_left.eq(cur_run_left - beats)]
        return m


class Core(wiring.Component):
    """The accelerator core for one :class:`SATConfig`.

    Ports: ``csr`` (AXI4-Lite slave, 8-bit addresses) and ``mem`` (AXI4 master,
    ``cfg.bus_bytes`` wide, ``cfg.addr_bits`` addresses).
    """

    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        super().__init__({"csr": In(axi4_lite_signature(8)), "mem": Out(axi4_signature(cfg.addr_bits, cfg.bus_bytes))})
        #: the STATUS register (benches may watch it without a bus read)
        self.status = Signal(Status, name="status")

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C, bus = cfg.rows, cfg.cols, cfg.bus_bytes
        bus_bits = bus * 8
        mem = self.mem

        m.submodules.regs = regs = _Registers(self.csr, cfg, self.status)
        m.d.comb += [mem.arburst.eq(1), mem.awburst.eq(1), mem.arsize.eq(_clog2(bus) if bus > 1 else 0),
                     mem.awsize.eq(_clog2(bus) if bus > 1 else 0), mem.rready.eq(1), mem.bready.eq(1),
                     mem.wstrb.eq((1 << bus) - 1)]

        # Everything but the status registers lives in the `core` domain: the same clock, and a reset
        # that START asserts, so a run begins from the same state whatever the previous one left.
        m.domains.core = core_domain = ClockDomain("core", local=True)
        m.d.comb += [core_domain.clk.eq(ClockSignal("sync")), core_domain.rst.eq(ResetSignal("sync") | regs.start)]

        def sub(name, elaboratable):
            m.submodules[name] = DomainRenamer("core")(elaboratable)
            return elaboratable

        state = regs.status  # IDLE / BUSY / DONE / ERROR
        fetch_flag = Signal(init=1)  # the fetch phase of a run (from reset by START)
        fetching = Signal()
        running = Signal()  # instructions may be dispatched and started
        alive = Signal()  # work already started goes on (also after an error, until the bus is quiet)
        stopping = Signal()  # an error was raised: nothing new starts; STATUS turns ERROR once quiet
        m.d.comb += [fetching.eq((state == Status.BUSY) & fetch_flag), alive.eq(state == Status.BUSY),
                     running.eq((state == Status.BUSY) & ~fetch_flag & ~stopping)]
        with m.If((state == Status.BUSY) & ~stopping):
            m.d.sync += regs.cycles.eq(regs.cycles + 1)
        with m.If(regs.start):
            m.d.sync += [state.eq(Status.BUSY), regs.cycles.eq(0), regs.error.eq(ErrorCode.NONE), regs.error_pc.eq(0),
                         stopping.eq(0)]

        # ------------------------------------------------------------ errors
        # (code, condition, pc) in priority order: the lowest code wins, as in the simulator
        errors: list[tuple[ErrorCode, object, object]] = []

        # ------------------------------------------------------------ fetch
        ipw = max(1, bus_bits // INSTRUCTION_BITS)  # instructions per imem word
        imem_width = max(bus_bits, INSTRUCTION_BITS)
        beats_per_word = imem_width // bus_bits
        imem_words = -(-cfg.imem_depth // ipw)
        m.submodules.imem = imem = Memory(shape=unsigned(imem_width), depth=imem_words, init=[])
        imem_w = imem.write_port(domain="core")
        imem_r = imem.read_port(domain="core", transparent_for=(imem_w,))

        prog_bytes = Signal(40)
        total_beats = Signal(40)
        f_beat = Signal(40)
        f_asm = Signal(imem_width)
        m.d.comb += [prog_bytes.eq(regs.program_len * (INSTRUCTION_BITS // 8)),
                     total_beats.eq((prog_bytes + bus - 1) >> _clog2(bus) if bus > 1 else prog_bytes)]
        len_bad = (regs.program_len == 0) | (regs.program_len > cfg.imem_depth)
        addr_bad = (regs.program_addr[:_clog2(bus)] != 0) | (regs.program_addr + prog_bytes > (1 << cfg.addr_bits))
        first_fetch_cycle = Signal(init=1)
        m.d.core += first_fetch_cycle.eq(0)
        fetch_ar = Signal()
        with m.If(fetching & first_fetch_cycle & (len_bad | addr_bad)):
            m.d.core += fetch_flag.eq(0)  # nothing was fetched: the run stops at once
        errors.append((ErrorCode.PROGRAM_TOO_LONG, fetching & first_fetch_cycle & len_bad, 0))
        errors.append((ErrorCode.DRAM_RANGE, fetching & first_fetch_cycle & ~len_bad & addr_bad, 0))
        # the program is one run of total_beats beats, cut into bursts
        fetch_run_left = Signal(40)
        fetch_addr = Signal(cfg.addr_bits + 1)
        fetch_active = Signal()
        f_beats = next_burst(m, "fetch_burst", Mux(first_fetch_cycle, regs.program_addr, fetch_addr),
                             Mux(first_fetch_cycle, total_beats, fetch_run_left), bus, cfg.max_burst_beats)
        cur_left = Mux(first_fetch_cycle, total_beats, fetch_run_left)
        cur_addr = Mux(first_fetch_cycle, regs.program_addr, fetch_addr)
        m.d.comb += fetch_ar.eq(fetching & ((first_fetch_cycle & ~len_bad & ~addr_bad) | (~first_fetch_cycle & fetch_active)))
        with m.If(fetch_ar & mem.arready):
            m.d.core += [fetch_addr.eq(cur_addr + f_beats * bus), fetch_run_left.eq(cur_left - f_beats),
                         fetch_active.eq(cur_left != f_beats)]
        with m.Elif(fetch_ar):
            m.d.core += [fetch_addr.eq(cur_addr), fetch_run_left.eq(cur_left), fetch_active.eq(1)]
        # fetch beats into the instruction memory
        next_asm = Signal(imem_width)
        m.d.comb += next_asm.eq(Cat(f_asm[bus_bits:], mem.rdata) if beats_per_word > 1 else mem.rdata)
        fetch_beat = fetching & ~first_fetch_cycle & mem.rvalid
        with m.If(fetch_beat):
            m.d.core += [f_asm.eq(next_asm), f_beat.eq(f_beat + 1)]
            m.d.comb += [imem_w.addr.eq(f_beat >> _clog2(beats_per_word) if beats_per_word > 1 else f_beat),
                         imem_w.data.eq(next_asm),
                         imem_w.en.eq((f_beat % beats_per_word == beats_per_word - 1) | (f_beat == total_beats - 1))]
            with m.If(f_beat == total_beats - 1):
                m.d.core += fetch_flag.eq(0)
            errors.append((ErrorCode.AXI_ERROR, fetch_beat & (mem.rresp != 0), 0))

        # ------------------------------------------------------------ queues and tokens
        queues = [sub(f"queue_{n}", SyncFIFO(width=_Entry.as_shape().size, depth=cfg.queue_depth))
                  for n in ("load", "compute", "store")]
        q_load, q_comp, q_store = queues
        heads = [_Entry(q.r_data) for q in queues]
        tok = {n: sub(f"token_{n}", _Token(cfg.token_limit)) for n in ("l2c", "c2l", "c2s", "s2c")}

        # ------------------------------------------------------------ dispatcher
        pc = Signal(PC_BITS)
        cur = Instruction(Signal(INSTRUCTION_BITS))
        pc_slot = pc % ipw if ipw > 1 else 0
        m.d.comb += cur.as_value().eq(imem_r.data.word_select(pc_slot, INSTRUCTION_BITS) if ipw > 1 else imem_r.data[:INSTRUCTION_BITS])
        dispatch = Signal()
        m.d.comb += imem_r.addr.eq(Mux(fetching, 0, (pc + dispatch) // ipw if ipw > 1 else pc + dispatch))
        with m.If(dispatch):
            m.d.core += pc.eq(pc + 1)

        op = cur.opcode
        deps = cur.deps
        memargs, gemm = cur.args.mem, cur.args.gemm
        is_load, is_store, is_gemm, is_finish = op == Opcode.LOAD, op == Opcode.STORE, op == Opcode.GEMM, op == Opcode.FINISH
        known = is_load | is_store | is_gemm | is_finish
        at_end = pc == regs.program_len
        no_neighbour = (is_load & (deps.pop_prev | deps.push_prev)) | (is_store & (deps.pop_next | deps.push_next)) | \
                       (is_finish & (deps.pop_prev | deps.pop_next | deps.push_prev | deps.push_next))
        buf = memargs.buffer
        mem_bad_args = (is_load | is_store) & ((buf.as_value() == 3) | (is_store & (buf != Buffer.ACC)) |
                                               (is_load & (buf == Buffer.ACC)) | (memargs.rows == 0))
        depth = Mux(buf == Buffer.A, cfg.a_depth, Mux(buf == Buffer.B, cfg.b_depth, cfg.acc_depth))
        word_bytes = Mux(buf == Buffer.A, cfg.a_word_bytes, Mux(buf == Buffer.B, cfg.b_word_bytes, cfg.acc_word_bytes))
        sram_bad = (is_load | is_store) & (memargs.sram_addr + memargs.rows > depth)
        last_byte = Signal(64)
        m.d.comb += last_byte.eq(memargs.dram_addr + (memargs.rows - 1) * memargs.dram_stride + word_bytes)
        align = _clog2(bus)
        dram_bad = (is_load | is_store) & ((memargs.dram_addr[:align] != 0) | (memargs.dram_stride[:align] != 0) |
                                           (last_byte > (1 << cfg.addr_bits)))
        gemm_zero = is_gemm & (gemm.k == 0)
        gemm_range = is_gemm & ((gemm.a_addr + gemm.k > cfg.a_depth) | (gemm.b_addr + gemm.k > cfg.b_depth) |
                                (gemm.acc_addr + R > cfg.acc_depth))
        static_code = Signal(ErrorCode)
        with m.If(at_end):
            m.d.comb += static_code.eq(ErrorCode.NO_FINISH)
        with m.Elif(~known):
            m.d.comb += static_code.eq(ErrorCode.BAD_OPCODE)
        with m.Elif(no_neighbour | mem_bad_args | gemm_zero):
            m.d.comb += static_code.eq(ErrorCode.BAD_ARGS)
        with m.Elif(sram_bad | gemm_range):
            m.d.comb += static_code.eq(ErrorCode.SRAM_RANGE)
        with m.Elif(dram_bad):
            m.d.comb += static_code.eq(ErrorCode.DRAM_RANGE)
        static_error = running & (static_code != ErrorCode.NONE)

        # unit state needed by the dispatcher (defined below)
        all_idle = Signal()
        any_busy = Signal()
        any_start = Signal()
        target_ready = Mux(is_load, q_load.w_rdy, Mux(is_gemm, q_comp.w_rdy, q_store.w_rdy))
        m.d.comb += dispatch.eq(running & ~static_error & (is_load | is_gemm | is_store) & target_ready &
                                (~regs.serial | all_idle))
        entry = _Entry(Signal(_Entry.as_shape().size))
        m.d.comb += [entry.inst.eq(cur), entry.pc.eq(pc)]
        for q, cond in ((q_load, is_load), (q_comp, is_gemm), (q_store, is_store)):
            m.d.comb += [q.w_data.eq(entry.as_value()), q.w_en.eq(dispatch & cond)]
        finish_now = running & ~static_error & is_finish & all_idle

        # ------------------------------------------------------------ buffers
        m.submodules.buf_a = buf_a = Memory(shape=unsigned(16 * R), depth=cfg.a_depth, init=[])
        m.submodules.buf_b = buf_b = Memory(shape=unsigned(16 * C), depth=cfg.b_depth, init=[])
        m.submodules.acc_drain = acc_d = Memory(shape=unsigned(32 * C), depth=cfg.acc_depth, init=[])
        m.submodules.acc_store = acc_s = Memory(shape=unsigned(32 * C), depth=cfg.acc_depth, init=[])
        a_w, b_w = buf_a.write_port(domain="core"), buf_b.write_port(domain="core")
        a_r, b_r = buf_a.read_port(domain="core"), buf_b.read_port(domain="core")
        accd_w, accs_w = acc_d.write_port(domain="core"), acc_s.write_port(domain="core")
        accd_r, accs_r = acc_d.read_port(domain="core"), acc_s.read_port(domain="core")

        # ------------------------------------------------------------ LOAD unit
        lhead = heads[0]
        lw = sub("load_walker", _BurstWalker(cfg, "load"))
        l_inflight = sub("load_inflight", SyncFIFO(width=_Entry.as_shape().size, depth=2))
        l_word_beats = Mux(lhead.inst.args.mem.buffer == Buffer.A, cfg.a_word_bytes // bus, cfg.b_word_bytes // bus)
        l_tokens_ok = ~lhead.inst.deps.pop_next | tok["c2l"].available
        l_start = Signal()
        m.d.comb += l_start.eq(running & q_load.r_rdy & ~lw.active & l_inflight.w_rdy & l_tokens_ok)
        m.d.comb += [lw.load.eq(l_start), lw.addr.eq(lhead.inst.args.mem.dram_addr), lw.rows.eq(lhead.inst.args.mem.rows),
                     lw.stride.eq(lhead.inst.args.mem.dram_stride), lw.word_beats.eq(l_word_beats)]
        l_ar = Signal()
        m.d.comb += [l_ar.eq(alive & (l_start | lw.active)), lw.step.eq(l_ar & mem.arready),
                     q_load.r_en.eq(l_start), l_inflight.w_data.eq(q_load.r_data), l_inflight.w_en.eq(l_start),
                     tok["c2l"].pop.eq(l_start & lhead.inst.deps.pop_next)]
        # receive side
        rx = _Entry(l_inflight.r_data)
        rx_args = rx.inst.args.mem
        rx_word_beats = Mux(rx_args.buffer == Buffer.A, cfg.a_word_bytes // bus, cfg.b_word_bytes // bus)
        rx_word = Signal(16)
        rx_in_word = Signal(8)
        word_bits = max(16 * R, 16 * C)
        rx_asm = Signal(word_bits)
        rx_next = Signal(word_bits)
        m.d.comb += rx_next.eq(Cat(rx_asm[bus_bits:], mem.rdata) if word_bits > bus_bits else mem.rdata)
        rx_beat = alive & mem.rvalid & l_inflight.r_rdy
        word_done = rx_in_word == rx_word_beats - 1
        load_done = Signal()
        m.d.comb += load_done.eq(rx_beat & word_done & (rx_word == rx_args.rows - 1))
        with m.If(rx_beat):
            m.d.core += rx_asm.eq(rx_next)
            with m.If(word_done):
                m.d.core += [rx_in_word.eq(0), rx_word.eq(rx_word + 1)]
            with m.Else():
                m.d.core += rx_in_word.eq(rx_in_word + 1)
            errors.append((ErrorCode.AXI_ERROR, rx_beat & (mem.rresp != 0), rx.pc))
        with m.If(load_done):
            m.d.core += [rx_word.eq(0), rx_in_word.eq(0)]
        waddr = rx_args.sram_addr + rx_word
        m.d.comb += [a_w.addr.eq(waddr), b_w.addr.eq(waddr),
                     a_w.data.eq(rx_next[word_bits - 16 * R:]), b_w.data.eq(rx_next[word_bits - 16 * C:]),
                     a_w.en.eq(rx_beat & word_done & (rx_args.buffer == Buffer.A)),
                     b_w.en.eq(rx_beat & word_done & (rx_args.buffer == Buffer.B)),
                     l_inflight.r_en.eq(load_done),
                     tok["l2c"].push.eq(load_done & rx.inst.deps.push_next)]
        load_busy = lw.active | l_inflight.r_rdy

        # ------------------------------------------------------------ COMPUTE unit
        chead = heads[1]
        cg = chead.inst.args.gemm
        reading = Signal()
        k_left = Signal(16)
        rd_a, rd_b = Signal(16), Signal(16)
        mac_valid = Signal()  # registered: data of a read is at the array this cycle
        mac_first = Signal()
        mac_last = Signal()
        pending = Signal()  # last MAC done, waiting for the transfer
        cur_info = _Entry(Signal(_Entry.as_shape().size))  # the GEMM between start and transfer
        drain_active = Signal()
        drain_count = Signal(range(R + 2))
        drain_info = _Entry(Signal(_Entry.as_shape().size))
        transfer = Signal()
        m.d.comb += transfer.eq(pending & ~drain_active)
        c_tokens_ok = (~chead.inst.deps.pop_prev | tok["l2c"].available) & (~chead.inst.deps.pop_next | tok["s2c"].available)
        c_free = ~reading & ~mac_valid & (~pending | transfer)
        c_start = Signal()
        m.d.comb += c_start.eq(running & q_comp.r_rdy & c_free & c_tokens_ok)
        m.d.comb += [q_comp.r_en.eq(c_start), tok["l2c"].pop.eq(c_start & chead.inst.deps.pop_prev),
                     tok["s2c"].pop.eq(c_start & chead.inst.deps.pop_next)]
        # reads: cycles s .. s+k-1
        with m.If(c_start):
            m.d.comb += [a_r.addr.eq(cg.a_addr), b_r.addr.eq(cg.b_addr)]
            m.d.core += [reading.eq(cg.k != 1), k_left.eq(cg.k - 1), rd_a.eq(cg.a_addr + 1), rd_b.eq(cg.b_addr + 1),
                         cur_info.eq(q_comp.r_data)]
        with m.Elif(reading):
            m.d.comb += [a_r.addr.eq(rd_a), b_r.addr.eq(rd_b)]
            m.d.core += [rd_a.eq(rd_a + 1), rd_b.eq(rd_b + 1), k_left.eq(k_left - 1)]
            with m.If(k_left == 1):
                m.d.core += reading.eq(0)
        issued = c_start | reading
        m.d.core += [mac_valid.eq(alive & issued), mac_first.eq(c_start),
                     mac_last.eq(Mux(c_start, cg.k == 1, reading & (k_left == 1)))]
        with m.If(mac_valid & mac_last):
            m.d.core += pending.eq(1)
        with m.Elif(transfer):
            m.d.core += pending.eq(0)
        # the array
        acc = [[Signal(32, name=f"acc_{r}_{c}") for c in range(C)] for r in range(R)]
        shadow = [[Signal(32, name=f"shadow_{r}_{c}") for c in range(C)] for r in range(R)]
        for r in range(R):
            for c in range(C):
                mac = Bf16Mac()
                m.submodules[f"pe_{r}_{c}"] = mac
                m.d.comb += [mac.acc_in.eq(Mux(mac_first, 0, acc[r][c])), mac.a.eq(a_r.data[16 * r:16 * r + 16]),
                             mac.b.eq(b_r.data[16 * c:16 * c + 16])]
                with m.If(mac_valid):
                    m.d.core += acc[r][c].eq(mac.acc_out)
        # transfer and drain: reads in t+1 .. t+R, writes in t+2 .. t+R+1
        with m.If(transfer):
            m.d.core += [drain_active.eq(1), drain_count.eq(0), drain_info.eq(cur_info)]
            for r in range(R):
                for c in range(C):
                    m.d.core += shadow[r][c].eq(acc[r][c])
        di = drain_info.inst.args.gemm
        drain_write = drain_active & (drain_count >= 1)
        drain_end = drain_active & (drain_count == R)
        with m.If(drain_active):
            m.d.core += drain_count.eq(drain_count + 1)
            with m.If(drain_write):  # shift the next row up
                for r in range(R - 1):
                    for c in range(C):
                        m.d.core += shadow[r][c].eq(shadow[r + 1][c])
            with m.If(drain_end):
                m.d.core += drain_active.eq(0)
        m.d.comb += accd_r.addr.eq(di.acc_addr + drain_count)
        drain_row = Signal(32 * C)
        for c in range(C):
            adder = Fp32Adder()
            m.submodules[f"drain_add_{c}"] = adder
            m.d.comb += [adder.a.eq(accd_r.data[32 * c:32 * c + 32]), adder.b.eq(shadow[0][c]),
                         drain_row[32 * c:32 * c + 32].eq(Mux(di.accumulate, adder.sum, shadow[0][c]))]
        write_addr = di.acc_addr + drain_count - 1
        for port in (accd_w, accs_w):
            m.d.comb += [port.addr.eq(write_addr), port.data.eq(drain_row), port.en.eq(alive & drain_write)]
        m.d.comb += [tok["c2l"].push.eq(drain_end & drain_info.inst.deps.push_prev),
                     tok["c2s"].push.eq(drain_end & drain_info.inst.deps.push_next)]
        compute_busy = reading | mac_valid | pending | drain_active

        # ------------------------------------------------------------ STORE unit
        shead = heads[2]
        acc_word_beats = cfg.acc_word_bytes // bus
        s_reading = Signal()  # read stage: ACC read addresses for beats
        s_info = _Entry(Signal(_Entry.as_shape().size))
        s_word = Signal(16)
        s_in_word = Signal(8)
        s_incomplete = Signal(range(3))
        s_tokens_ok = ~shead.inst.deps.pop_prev | tok["c2s"].available
        s_start = Signal()
        w_stall = Signal()  # the W beat on the bus is not taken this cycle: both stages hold
        m.d.comb += s_start.eq(running & q_store.r_rdy & ~s_reading & (s_incomplete < 2) & s_tokens_ok & ~w_stall)
        m.d.comb += [q_store.r_en.eq(s_start), tok["c2s"].pop.eq(s_start & shead.inst.deps.pop_prev)]
        info_now = _Entry(Signal(_Entry.as_shape().size))
        m.d.comb += info_now.eq(Mux(s_start, q_store.r_data, s_info))
        word_now = Mux(s_start, 0, s_word)
        in_word_now = Mux(s_start, 0, s_in_word)
        beat_valid = s_start | s_reading
        args_now = info_now.inst.args.mem
        m.d.comb += accs_r.addr.eq(args_now.sram_addr + word_now)
        last_in_word = in_word_now == acc_word_beats - 1
        last_beat = last_in_word & (word_now == args_now.rows - 1)
        with m.If(beat_valid & ~w_stall):
            m.d.core += s_info.eq(info_now)
            with m.If(last_in_word):
                m.d.core += [s_word.eq(word_now + 1), s_in_word.eq(0)]
            with m.Else():
                m.d.core += [s_word.eq(word_now), s_in_word.eq(in_word_now + 1)]
            m.d.core += s_reading.eq(~last_beat)
        # W stage: one cycle behind the read stage (with a held copy of the data while the bus stalls)
        w_valid = Signal()
        w_in_word = Signal(8)
        w_last_of_store = Signal()
        w_info = _Entry(Signal(_Entry.as_shape().size))
        w_first = Signal()  # first beat of a store: load the burst walker
        with m.If(~w_stall):
            m.d.core += [w_valid.eq(alive & beat_valid), w_in_word.eq(in_word_now), w_last_of_store.eq(last_beat),
                         w_info.eq(info_now), w_first.eq(s_start)]
        sw = sub("store_walker", _BurstWalker(cfg, "store"))
        wargs = w_info.inst.args.mem
        # Bursts: the walker is stepped when a burst's first W beat is presented; its address goes out on
        # AW at once or, if AW is busy, from a one-entry slot. W never waits for AWREADY of its own burst.
        burst_left = Signal(range(cfg.max_burst_beats + 1))  # beats left in the current W burst
        aw_pushed = Signal()  # this burst's address is issued or queued, its first beat not yet taken
        aw_beats = Signal.like(sw.burst_beats)  # that burst's length
        slot_valid = Signal()
        slot_addr = Signal.like(sw.burst_addr)
        slot_len = Signal(8)
        new_burst = w_valid & (burst_left == 0)
        push_aw = Signal()
        m.d.comb += [push_aw.eq(new_burst & ~aw_pushed & (~slot_valid | mem.awready)),
                     sw.load.eq(w_valid & w_first & ~aw_pushed), sw.addr.eq(wargs.dram_addr),
                     sw.rows.eq(wargs.rows), sw.stride.eq(wargs.dram_stride), sw.word_beats.eq(acc_word_beats),
                     sw.step.eq(push_aw),
                     mem.awvalid.eq(slot_valid | push_aw),
                     mem.awaddr.eq(Mux(slot_valid, slot_addr, sw.burst_addr)),
                     mem.awlen.eq(Mux(slot_valid, slot_len, sw.burst_beats - 1))]
        with m.If(slot_valid & mem.awready):
            m.d.core += slot_valid.eq(push_aw)
            m.d.core += [slot_addr.eq(sw.burst_addr), slot_len.eq(sw.burst_beats - 1)]
        with m.Elif(~slot_valid & push_aw & ~mem.awready):
            m.d.core += [slot_valid.eq(1), slot_addr.eq(sw.burst_addr), slot_len.eq(sw.burst_beats - 1)]
        aw_take = push_aw  # bursts committed (counted for the write responses)
        w_present = w_valid & (~new_burst | aw_pushed | push_aw)
        beats_in_burst = Mux(new_burst, Mux(aw_pushed, aw_beats, sw.burst_beats), burst_left)
        w_fire = w_present & mem.wready
        m.d.comb += w_stall.eq(w_valid & ~w_fire)
        with m.If(push_aw & ~w_fire):
            m.d.core += [aw_pushed.eq(1), aw_beats.eq(sw.burst_beats)]
        with m.If(w_fire):
            m.d.core += [burst_left.eq(beats_in_burst - 1), aw_pushed.eq(0)]
        w_held = Signal()
        w_hold = Signal.like(accs_r.data)
        with m.If(w_stall & ~w_held):
            m.d.core += [w_hold.eq(accs_r.data), w_held.eq(1)]
        with m.If(w_fire):
            m.d.core += w_held.eq(0)
        w_word = Mux(w_held, w_hold, accs_r.data)
        m.d.comb += [mem.wvalid.eq(w_present), mem.wlast.eq(beats_in_burst == 1),
                     mem.wdata.eq(w_word.word_select(w_in_word, bus_bits) if acc_word_beats > 1 else w_word)]
        # write responses: cumulative bursts per store, completion in order
        bursts_issued = Signal(32)
        b_count = Signal(32)
        with m.If(aw_take):
            m.d.core += bursts_issued.eq(bursts_issued + 1)
        awaiting = sub("store_awaiting", SyncFIFO(width=32 + _Entry.as_shape().size, depth=2))
        m.d.comb += [awaiting.w_en.eq(w_fire & w_last_of_store),
                     awaiting.w_data.eq(Cat((bursts_issued + aw_take)[:32], w_info.as_value()))]
        b_now = Signal(32)
        m.d.comb += b_now.eq(b_count + (alive & mem.bvalid))
        with m.If(alive & mem.bvalid):
            m.d.core += b_count.eq(b_now)
            # the response is the head's if a STORE waits for its responses, else that of the STORE still sending
            b_pc = Mux(awaiting.r_rdy, _Entry(awaiting.r_data[32:]).pc, w_info.pc)
            errors.append((ErrorCode.AXI_ERROR, alive & mem.bvalid & (mem.bresp != 0), b_pc))
        head_bursts = awaiting.r_data[:32]
        aw_entry = _Entry(awaiting.r_data[32:])
        store_done = Signal()
        m.d.comb += [store_done.eq(alive & awaiting.r_rdy & (b_now == head_bursts)), awaiting.r_en.eq(store_done),
                     tok["s2c"].push.eq(store_done & aw_entry.inst.deps.push_prev)]
        m.d.core += s_incomplete.eq(s_incomplete + s_start - store_done)
        store_busy = s_reading | w_valid | slot_valid | (s_incomplete != 0)

        # ------------------------------------------------------------ idle, deadlock, errors, done
        m.d.comb += [any_busy.eq(load_busy | compute_busy | store_busy),
                     all_idle.eq(~any_busy & ~q_load.r_rdy & ~q_comp.r_rdy & ~q_store.r_rdy),
                     any_start.eq(l_start | c_start | s_start)]
        dispatcher_stuck = ~dispatch & ~finish_now & ~static_error
        deadlock = running & ~any_busy & ~any_start & dispatcher_stuck
        best = Signal(PC_BITS)
        m.d.comb += best.eq(pc)
        for q, h in zip(queues, heads):
            candidate = Signal(PC_BITS)
            m.d.comb += candidate.eq(Mux(q.r_rdy & (h.pc < best), h.pc, best))
            best = candidate
        errors.append((static_code, static_error, pc))
        overflow_pc = {"l2c": rx.pc, "c2l": drain_info.pc, "c2s": drain_info.pc, "s2c": aw_entry.pc}
        for name, t in tok.items():
            errors.append((ErrorCode.TOKEN_OVERFLOW, running & t.overflow, overflow_pc[name]))
        errors.append((ErrorCode.DEADLOCK, deadlock, best))

        # resolve: lowest code wins
        def code_value(code):
            return Const(code.value, 4) if isinstance(code, ErrorCode) else code.as_value()

        err_code = Signal(ErrorCode)
        err_pc = Signal(PC_BITS)
        err_any = Signal()
        # a chain over the candidates: the lowest code wins
        chain_code, chain_pc, chain_any = Const(0, 4), Const(0, PC_BITS), Const(0, 1)
        for i, (code, cond, where) in enumerate(errors):
            cv = code_value(code)
            take = Signal(name=f"err_take_{i}")
            m.d.comb += take.eq(cond & (~chain_any | (cv < chain_code)))
            new_code, new_pc, new_any = Signal(4, name=f"err_code_{i}"), Signal(PC_BITS, name=f"err_pc_{i}"), Signal(name=f"err_any_{i}")
            m.d.comb += [new_code.eq(Mux(take, cv, chain_code)), new_pc.eq(Mux(take, where, chain_pc)),
                         new_any.eq(chain_any | cond)]
            chain_code, chain_pc, chain_any = new_code, new_pc, new_any
        m.d.comb += [err_any.eq(chain_any), err_code.eq(chain_code), err_pc.eq(chain_pc)]
        with m.If((state == Status.BUSY) & ~stopping & err_any):
            m.d.sync += [stopping.eq(1), regs.error.eq(err_code), regs.error_pc.eq(err_pc)]
        with m.Elif((state == Status.BUSY) & finish_now):
            m.d.sync += state.eq(Status.DONE)
        # after an error, STATUS turns ERROR once every transfer already on the bus has finished
        with m.If((state == Status.BUSY) & stopping & ~any_busy & ~fetch_flag):
            m.d.sync += state.eq(Status.ERROR)
        # the read channel: fetch or LOAD
        m.d.comb += [mem.arvalid.eq(fetch_ar | l_ar),
                     mem.araddr.eq(Mux(fetching, cur_addr, lw.burst_addr)),
                     mem.arlen.eq(Mux(fetching, f_beats, lw.burst_beats) - 1)]
        return m
