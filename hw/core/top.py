"""The core's top level: the units, their queues, token counters and buffers, joined (VTA's ``Core.scala``).

:class:`Core` is the gateware twin of :class:`nmsat.sim.core.CoreModel`; it
implements the timing rules of ``docs/architecture.md`` §6 cycle for cycle
(``tests/equiv`` holds the two to it).  One AXI4-Lite slave (``csr``) and
one AXI4 master (``mem``).  The timing rules assume the memory model of the
config (``arready``, ``awready``, ``wready`` high); any AXI slave that
back-pressures those channels gets the same results, later.  The core keeps
``bready`` high, and ``rready`` but for the cycles a transposing LOAD writes
its last block (the memory holds its next beat meanwhile).

Not here: the units' insides (the sibling modules), the fp units
(:mod:`nmsat.hw.fp`), the instruction layouts (:mod:`nmsat.hw.isa`) or the
FPGA shell (:mod:`nmsat.fpga`).
"""

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Module, Mux, ResetSignal, Signal, Value, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..axi import axi4_lite_signature, axi4_signature
from ..config import SATConfig
from ..isa import ErrorCode, Status
from .common import PC_BITS, Entry, TokenCounter, clog2
from .compute import ComputeUnit
from .dispatch import Dispatcher
from .fetch import Fetch, imem_geometry, program_checks
from .load import LoadUnit
from .regs import Registers, RunControl
from .sparsify import SparsifyUnit
from .store import StoreUnit
from .update import UpdateEngine

__all__ = ["Core"]


def _any_waiting(queues) -> object:
    """Any queue holds an instruction."""
    any_ready = Const(0, 1)
    for q in queues.values():
        any_ready = any_ready | q.r_rdy
    return any_ready


def first_error(m: Module, candidates) -> tuple[Signal, Signal, Signal]:
    """(raised, code, pc) of ``candidates`` ``(code, condition, pc)``: the lowest code wins, then the earlier
    candidate (the simulator breaks ties the same way).  A candidate whose code is a signal stands for one
    candidate per code it may have; then every code is a constant, the order is fixed, and the winner is the
    first raised in that order: a one-hot choice two levels of wide ORs deep, not a chain of compares."""
    flat = []  # (code value, position, condition, pc), the expanded candidates
    for i, (code, cond, where) in enumerate(candidates):
        cond, where = Value.cast(cond), Value.cast(where)
        if isinstance(code, ErrorCode):
            flat.append((code.value, i, cond, where))
        else:
            flat += [(c.value, i, cond & (code.as_value() == c.value), where) for c in ErrorCode if c is not ErrorCode.NONE]
    flat.sort(key=lambda item: item[:2])
    raised, code, pc = Signal(name="err_any"), Signal(4, name="err_code"), Signal(PC_BITS, name="err_pc")
    chosen_code, chosen_pc, before = Const(0, 4), Const(0, PC_BITS), []
    for j, (value, _, cond, where) in enumerate(flat):
        sel = Signal(name=f"err_sel_{j}")
        earlier = Const(0, 1)
        for other in before:
            earlier = earlier | other
        m.d.comb += sel.eq(cond & ~earlier)
        chosen_code = chosen_code | Mux(sel, value, 0)
        chosen_pc = chosen_pc | Mux(sel, where, 0)
        before.append(cond)
    any_raised = Const(0, 1)
    for cond in before:
        any_raised = any_raised | cond
    m.d.comb += [raised.eq(any_raised), code.eq(chosen_code), pc.eq(chosen_pc)]
    return raised, code, pc


class Core(wiring.Component):
    """The accelerator core for one :class:`SATConfig`.

    Ports: ``csr`` (AXI4-Lite slave, 8-bit addresses), ``mem`` (AXI4 master,
    ``cfg.bus_bytes`` wide, ``cfg.addr_bits`` addresses: fetch, LOAD, STORE) and
    ``spmem`` (the same, the sparsifier's and the weight-update engine's own master onto the same memory).
    """

    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        super().__init__({"csr": In(axi4_lite_signature(8)), "mem": Out(axi4_signature(cfg.addr_bits, cfg.bus_bytes)),
                          "spmem": Out(axi4_signature(cfg.addr_bits, cfg.bus_bytes))})
        #: the STATUS register (benches may watch it without a bus read)
        self.status = Signal(Status, name="status")

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C, bus = cfg.rows, cfg.cols, cfg.bus_bytes
        mem = self.mem
        m.d.comb += [mem.arburst.eq(1), mem.awburst.eq(1), mem.arsize.eq(clog2(bus) if bus > 1 else 0),
                     mem.awsize.eq(clog2(bus) if bus > 1 else 0), mem.bready.eq(1),
                     mem.wstrb.eq((1 << bus) - 1)]

        m.submodules.regs = regs = Registers(cfg)
        m.submodules.control = ctl = RunControl()
        wiring.connect(m, wiring.flipped(self.csr), regs.bus)
        m.d.comb += [regs.status.eq(ctl.status), regs.error.eq(ctl.error), regs.cycles.eq(ctl.cycles),
                     regs.error_pc.eq(ctl.error_pc), ctl.start.eq(regs.start), self.status.eq(ctl.status)]

        # Everything but the registers and the run control lives in the `core` domain: the same clock, and a
        # reset that START asserts, so a run begins from the same state whatever the previous one left.
        m.domains.core = core_domain = ClockDomain("core", local=True)
        m.d.comb += [core_domain.clk.eq(ClockSignal("sync")),
                     core_domain.rst.eq(ResetSignal("sync") | regs.start | ctl.chain)]

        def unit(name, elaboratable):
            m.submodules[name] = DomainRenamer("core")(elaboratable)
            return elaboratable

        fetch, dispatch = unit("fetch", Fetch(cfg)), unit("dispatch", Dispatcher(cfg))
        load, compute, store = unit("load", LoadUnit(cfg)), unit("compute", ComputeUnit(cfg)), unit("store", StoreUnit(cfg))
        sparsify, update = unit("sparsify", SparsifyUnit(cfg)), unit("update", UpdateEngine(cfg))
        queues = {name: unit(f"queue_{name}", SyncFIFO(width=Entry.as_shape().size, depth=cfg.queue_depth))
                  for name in ("load", "compute", "store", "sparsify")}
        tokens = {name: unit(f"token_{name}", TokenCounter(cfg.token_limit))
                  for name in ("l2c", "c2l", "c2s", "s2c", "s2p", "p2s", "p2l", "l2p")}
        running, alive = ctl.running, ctl.alive
        # the sparsifier and the weight-update engine share one queue and the `spmem` port, one at a time
        update_active = Signal()
        m.d.comb += [update_active.eq(update.busy | update.start), sparsify.other_busy.eq(update.busy),
                     update.other_busy.eq(sparsify.busy), update.lr.eq(regs.lr), update.momentum.eq(regs.momentum),
                     update.decay.eq(regs.decay)]
        for name, flow in self.spmem.signature.members.items():
            port, a, b = getattr(self.spmem, name), getattr(sparsify.mem, name), getattr(update.mem, name)
            if flow.flow is wiring.Out:  # driven by the units
                m.d.comb += port.eq(Mux(update_active, b, a))
            elif name in ("rvalid", "bvalid"):  # handshakes reach only the unit that is working
                m.d.comb += [a.eq(port & ~update_active), b.eq(port & update_active)]
            else:
                m.d.comb += [a.eq(port), b.eq(port)]
        for u in (load, compute, store, sparsify, update):
            m.d.comb += [u.running.eq(running), u.alive.eq(alive)]

        # buffers: synchronous RAMs; B in banks; ACC twice (the drain's copy and the STORE's copy, written together)
        _, imem_width, imem_words = imem_geometry(cfg)
        m.submodules.imem = imem = Memory(shape=unsigned(imem_width), depth=imem_words, init=[])
        # the instructions' static codes, beside them (written by the fetch, read by the dispatcher with them)
        code_width = ErrorCode.as_shape().width * imem_geometry(cfg)[0]
        m.submodules.imem_codes = imem_codes = Memory(shape=unsigned(code_width), depth=imem_words, init=[])
        m.submodules.buf_a = buf_a = Memory(shape=unsigned(16 * R), depth=cfg.a_depth, init=[])
        banks = cfg.b_banks  # B word w lives in bank w % banks, row w // banks
        bank_bits = (banks - 1).bit_length()
        b_banks = [Memory(shape=unsigned(16 * C), depth=cfg.b_depth // banks, init=[]) for _ in range(banks)]
        for j, bank in enumerate(b_banks):
            m.submodules[f"buf_b{j}"] = bank
        m.submodules.buf_idx = buf_idx = Memory(shape=unsigned(16 * R), depth=cfg.idx_depth, init=[])
        # ACC: row p is word p // 2 of bank p % 2 (the drain writes two rows a cycle), kept twice
        acc_words = (cfg.acc_depth + 1) // 2
        acc_d = [Memory(shape=unsigned(32 * C), depth=acc_words, init=[]) for _ in range(2)]
        acc_s = [Memory(shape=unsigned(32 * C), depth=acc_words, init=[]) for _ in range(2)]
        for parity in range(2):
            m.submodules[f"acc_drain{parity}"], m.submodules[f"acc_store{parity}"] = acc_d[parity], acc_s[parity]
        imem_w = imem.write_port(domain="core")
        imem_r = imem.read_port(domain="core", transparent_for=(imem_w,))
        codes_w = imem_codes.write_port(domain="core")
        codes_r = imem_codes.read_port(domain="core", transparent_for=(codes_w,))
        a_w, a_r = buf_a.write_port(domain="core"), buf_a.read_port(domain="core")
        b_ws = [bank.write_port(domain="core") for bank in b_banks]
        b_rs = [bank.read_port(domain="core") for bank in b_banks]
        idx_w, idx_r = buf_idx.write_port(domain="core"), buf_idx.read_port(domain="core")
        accd_w = [bank.write_port(domain="core") for bank in acc_d]
        accs_w = [bank.write_port(domain="core") for bank in acc_s]
        accd_r = [bank.read_port(domain="core") for bank in acc_d]
        accs_r = [bank.read_port(domain="core") for bank in acc_s]

        # fetch and dispatch
        # (in START's cycle the run control still shows the previous run's program: a chained one, maybe)
        program_bad = program_checks(m, cfg, Mux(regs.start, regs.program_addr, ctl.program_addr),
                                     Mux(regs.start, regs.program_len, ctl.program_len))
        m.d.comb += [ctl.host_addr.eq(regs.program_addr), ctl.host_len.eq(regs.program_len),
                     ctl.next_addr.eq(dispatch.next_addr), ctl.next_len.eq(dispatch.next_len),
                     fetch.fetching.eq(ctl.fetching), fetch.program_addr.eq(ctl.program_addr),
                     fetch.program_len.eq(ctl.program_len), ctl.fetch_active.eq(fetch.active),
                     fetch.program_len_bad.eq(program_bad[0]), fetch.program_addr_bad.eq(program_bad[1]),
                     fetch.ar_ready.eq(mem.arready), fetch.r_valid.eq(mem.rvalid), fetch.r_data.eq(mem.rdata),
                     fetch.r_resp.eq(mem.rresp),
                     imem_w.addr.eq(fetch.imem_addr), imem_w.data.eq(fetch.imem_data), imem_w.en.eq(fetch.imem_en),
                     codes_w.addr.eq(fetch.imem_addr), codes_w.data.eq(fetch.imem_codes), codes_w.en.eq(fetch.imem_en),
                     dispatch.running.eq(running), dispatch.fetching.eq(ctl.fetching), dispatch.serial.eq(regs.serial),
                     dispatch.program_len.eq(ctl.program_len),
                     imem_r.addr.eq(dispatch.imem_addr), dispatch.imem_data.eq(imem_r.data),
                     codes_r.addr.eq(dispatch.imem_addr), dispatch.imem_codes.eq(codes_r.data)]
        for name, q in queues.items():
            m.d.comb += [q.w_data.eq(dispatch.entry.as_value()), q.w_en.eq(getattr(dispatch, f"to_{name}")),
                         getattr(dispatch, f"{name}_ready").eq(q.w_rdy)]
        for name, u in (("load", load), ("compute", compute), ("store", store)):
            q = queues[name]
            m.d.comb += [u.queue.payload.eq(q.r_data), u.queue.valid.eq(q.r_rdy), q.r_en.eq(u.queue.ready)]
        q = queues["sparsify"]
        m.d.comb += [sparsify.queue.payload.eq(q.r_data), sparsify.queue.valid.eq(q.r_rdy),
                     update.queue.payload.eq(q.r_data), update.queue.valid.eq(q.r_rdy),
                     q.r_en.eq(sparsify.start | update.start)]

        # tokens: the ring load → compute → store → sparsify → load, each way
        t = tokens
        m.d.comb += [load.c2l_available.eq(t["c2l"].available), t["c2l"].pop.eq(load.c2l_pop), t["l2c"].push.eq(load.l2c_push),
                     compute.l2c_available.eq(t["l2c"].available), t["l2c"].pop.eq(compute.l2c_pop),
                     compute.s2c_available.eq(t["s2c"].available), t["s2c"].pop.eq(compute.s2c_pop),
                     t["c2l"].push.eq(compute.c2l_push), t["c2s"].push.eq(compute.c2s_push),
                     store.c2s_available.eq(t["c2s"].available), t["c2s"].pop.eq(store.c2s_pop),
                     t["s2c"].push.eq(store.s2c_push),
                     # store → sparsify → load and back (the ring's other half)
                     sparsify.s2p_available.eq(t["s2p"].available), update.s2p_available.eq(t["s2p"].available),
                     t["s2p"].pop.eq(sparsify.s2p_pop | update.s2p_pop), t["s2p"].push.eq(store.s2p_push),
                     store.p2s_available.eq(t["p2s"].available), t["p2s"].pop.eq(store.p2s_pop),
                     t["p2s"].push.eq(sparsify.p2s_push | update.p2s_push),
                     load.p2l_available.eq(t["p2l"].available), t["p2l"].pop.eq(load.p2l_pop),
                     t["p2l"].push.eq(sparsify.p2l_push | update.p2l_push),
                     sparsify.l2p_available.eq(t["l2p"].available), update.l2p_available.eq(t["l2p"].available),
                     t["l2p"].pop.eq(sparsify.l2p_pop | update.l2p_pop), t["l2p"].push.eq(load.l2p_push)]

        # LOAD: the read channel (shared with the fetch, which runs alone before anything starts) and A/B writes
        # RREADY is high but while a transposing LOAD writes its last block
        m.d.comb += [mem.rready.eq(~load.r_hold), load.ar_ready.eq(mem.arready), load.r_valid.eq(mem.rvalid),
                     load.r_data.eq(mem.rdata),
                     load.r_resp.eq(mem.rresp),
                     mem.arvalid.eq(fetch.ar_valid | load.ar_valid),
                     mem.araddr.eq(Mux(ctl.fetching, fetch.ar_addr, load.ar_addr)),
                     mem.arlen.eq(Mux(ctl.fetching, fetch.ar_len, load.ar_len)),
                     a_w.addr.eq(load.a_addr), a_w.data.eq(load.a_data), a_w.en.eq(load.a_en),
                     idx_w.addr.eq(load.a_addr), idx_w.data.eq(load.a_data), idx_w.en.eq(load.idx_en)]
        for j, port in enumerate(b_ws):
            m.d.comb += [port.addr.eq(load.b_addr >> bank_bits), port.data.eq(load.b_data),
                         port.en.eq(load.b_en & ((load.b_addr & (banks - 1)) == j))]
        # GEMM: A/B reads, the drain's ACC port, both ACC copies written
        m.d.comb += [a_r.addr.eq(compute.a_addr), compute.a_data.eq(a_r.data),
                     idx_r.addr.eq(compute.idx_addr), compute.idx_data.eq(idx_r.data),
                     compute.b_data.eq(Cat(*(port.data for port in b_rs))),
                     accd_r[0].addr.eq(compute.acc_read_addr_even), compute.acc_read_data_even.eq(accd_r[0].data),
                     accd_r[1].addr.eq(compute.acc_read_addr_odd), compute.acc_read_data_odd.eq(accd_r[1].data)]
        for port in b_rs:
            m.d.comb += port.addr.eq(compute.b_row)
        for parity, name in enumerate(("even", "odd")):
            for port in (accd_w[parity], accs_w[parity]):
                m.d.comb += [port.addr.eq(getattr(compute, f"acc_write_addr_{name}")),
                             port.data.eq(getattr(compute, f"acc_write_data_{name}")),
                             port.en.eq(getattr(compute, f"acc_write_en_{name}"))]
        # STORE: the STORE's ACC port and the write channels
        store_odd = Signal()  # the parity of the row the STORE read a cycle ago: which bank's data it gets
        m.d.core += store_odd.eq(store.acc_addr[0])
        m.d.comb += [accs_r[0].addr.eq(store.acc_addr >> 1), accs_r[1].addr.eq(store.acc_addr >> 1),
                     store.acc_data.eq(Mux(store_odd, accs_r[1].data, accs_r[0].data)),
                     mem.awvalid.eq(store.aw_valid), mem.awaddr.eq(store.aw_addr), mem.awlen.eq(store.aw_len),
                     store.aw_ready.eq(mem.awready),
                     mem.wvalid.eq(store.w_valid), mem.wdata.eq(store.w_data), mem.wlast.eq(store.w_last),
                     store.w_ready.eq(mem.wready), store.b_valid.eq(mem.bvalid), store.b_resp.eq(mem.bresp)]

        # idle, deadlock, errors, done
        any_busy = Signal()
        m.d.comb += [any_busy.eq(load.busy | compute.busy | store.busy | sparsify.busy | update.busy),
                     dispatch.all_idle.eq(~any_busy & ~_any_waiting(queues)), ctl.busy.eq(any_busy),
                     ctl.finish.eq(dispatch.finish)]
        any_start = load.start | compute.start | store.start | sparsify.start | update.start
        stuck = ~dispatch.dispatch & ~dispatch.finish & ~dispatch.static_error
        deadlock = running & ~any_busy & ~any_start & stuck
        waiting = Signal(PC_BITS)  # the oldest instruction still waiting: a queue head, else the dispatcher's
        m.d.comb += waiting.eq(dispatch.pc)
        for name, q in queues.items():
            candidate = Signal(PC_BITS, name=f"waiting_{name}")
            head_pc = Entry(q.r_data).pc
            m.d.comb += candidate.eq(Mux(q.r_rdy & (head_pc < waiting), head_pc, waiting))
            waiting = candidate
        overflow_pc = {"l2c": load.receiving_pc, "c2l": compute.draining_pc, "c2s": compute.draining_pc,
                       "s2c": store.completing_pc, "s2p": store.completing_pc,
                       "p2s": Mux(update.busy, update.error_pc, sparsify.error_pc),
                       "p2l": Mux(update.busy, update.error_pc, sparsify.error_pc), "l2p": load.receiving_pc}
        candidates = [(ErrorCode.PROGRAM_TOO_LONG, fetch.bad_length, 0), (ErrorCode.DRAM_RANGE, fetch.bad_address, 0),
                      (ErrorCode.AXI_ERROR, fetch.bus_error, 0), (ErrorCode.AXI_ERROR, load.bus_error, load.receiving_pc),
                      (ErrorCode.AXI_ERROR, store.bus_error, store.error_pc),
                      (ErrorCode.AXI_ERROR, sparsify.bus_error, sparsify.error_pc),
                      (ErrorCode.AXI_ERROR, update.bus_error, update.error_pc),
                      (dispatch.static_code, dispatch.static_error, dispatch.pc)]
        candidates += [(ErrorCode.TOKEN_OVERFLOW, running & tok.overflow, overflow_pc[name]) for name, tok in tokens.items()]
        candidates.append((ErrorCode.DEADLOCK, deadlock, waiting))
        raised, code, pc = first_error(m, candidates)
        m.d.comb += [ctl.error_raised.eq(raised), ctl.error_code.eq(code), ctl.error_at.eq(pc)]
        return m
