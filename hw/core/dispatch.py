"""The dispatcher: sends the current instruction, in order, to the queue of its unit.

One instruction per cycle at most; a static error (bad opcode, arguments,
buffer or DRAM range, the end of the program without FINISH) is raised in
the cycle the instruction becomes current: the code was computed as the
instruction was fetched and stored beside it (:mod:`.check`), but for
NO_FINISH; FINISH retires when every unit is idle; serial mode waits for
everything before each dispatch.

Not here: the checks (``check``), the queues (the top level's FIFOs) or the units behind them.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import SATConfig
from ..isa import INSTRUCTION_BITS, ErrorCode, Instruction, Opcode
from .common import PC_BITS, Entry
from .fetch import imem_geometry

__all__ = ["Dispatcher"]


class Dispatcher(wiring.Component):
    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        _, width, words = imem_geometry(cfg)
        super().__init__({
            "running": In(1), "fetching": In(1), "serial": In(1), "program_len": In(32),
            "all_idle": In(1),  # no unit busy, every queue empty
            "imem_addr": Out(range(words)), "imem_data": In(width),
            "imem_codes": In(ErrorCode.as_shape().width * imem_geometry(cfg)[0]),  # their static codes
            "entry": Out(Entry),  # the instruction being dispatched and its PC
            "load_ready": In(1), "compute_ready": In(1), "store_ready": In(1), "sparsify_ready": In(1),  # room
            "to_load": Out(1), "to_compute": Out(1), "to_store": Out(1), "to_sparsify": Out(1),
            "dispatch": Out(1),
            "finish": Out(1),  # FINISH retires this cycle
            "next_addr": Out(40), "next_len": Out(21),  # the current FINISH's next program (0: none)
            "static_error": Out(1), "static_code": Out(ErrorCode),
            "pc": Out(PC_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        per_word, _, _ = imem_geometry(cfg)
        pc = self.pc
        cur = Instruction(Signal(INSTRUCTION_BITS))
        m.d.comb += cur.as_value().eq(self.imem_data.word_select(pc % per_word, INSTRUCTION_BITS) if per_word > 1
                                      else self.imem_data[:INSTRUCTION_BITS])
        dispatch = self.dispatch
        m.d.comb += self.imem_addr.eq(Mux(self.fetching, 0, (pc + dispatch) // per_word if per_word > 1 else pc + dispatch))
        with m.If(dispatch):
            m.d.sync += pc.eq(pc + 1)

        op = cur.opcode
        is_load, is_store, is_finish = op == Opcode.LOAD, op == Opcode.STORE, op == Opcode.FINISH
        is_gemm = (op == Opcode.GEMM) | (op == Opcode.SPARSE_GEMM)
        to_vector = (op == Opcode.SPARSIFY) | (op == Opcode.WEIGHT_UPDATE) | (op == Opcode.VECTOR)  # the sparsifier's
        # queue, shared with the stream engine
        # the instruction's static code, computed as it was fetched (``InstructionCheck``); past the end, NO_FINISH
        code_bits = ErrorCode.as_shape().width
        stored = self.imem_codes.word_select(pc % per_word, code_bits) if per_word > 1 else self.imem_codes
        code = self.static_code
        m.d.comb += [code.eq(Mux(pc == self.program_len, ErrorCode.NO_FINISH, stored)),
                     self.static_error.eq(self.running & (code != ErrorCode.NONE))]

        target_ready = Mux(is_load, self.load_ready, Mux(is_gemm, self.compute_ready,
                                                         Mux(is_store, self.store_ready, self.sparsify_ready)))
        m.d.comb += [dispatch.eq(self.running & ~self.static_error & (is_load | is_gemm | is_store | to_vector) &
                                 target_ready &
                                 (~self.serial | self.all_idle)),
                     self.entry.inst.eq(cur), self.entry.pc.eq(pc),
                     self.to_load.eq(dispatch & is_load), self.to_compute.eq(dispatch & is_gemm),
                     self.to_store.eq(dispatch & is_store), self.to_sparsify.eq(dispatch & to_vector),
                     self.finish.eq(self.running & ~self.static_error & is_finish & self.all_idle),
                     self.next_addr.eq(cur.args.finish.next_addr), self.next_len.eq(cur.args.finish.next_len)]
        return m
