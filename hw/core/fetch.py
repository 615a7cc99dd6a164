"""The fetch unit: reads the whole program into the instruction memory before anything is dispatched.

Timing (``docs/architecture.md`` §6): burst j's address in cycle j of the
run, beats from cycle ``mem_read_latency``; each instruction goes through
the static checks (:mod:`.check`) on its way in, and is written into the
instruction memory with its error code ``CHECK_LATENCY`` cycles after its
last beat; dispatch starts in the cycle after the last write.  A bad
program length or address stops the run in cycle 0; a read error
(DECERR/SLVERR) on a beat is an AXI error at PC 0.

Not here: the instruction memory itself (the top level owns it), the checks' rule or decoding.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..axi import next_burst
from ..config import SATConfig
from ..isa import INSTRUCTION_BITS, ErrorCode
from ..timing import CHECK_LATENCY
from .check import InstructionCheck
from .common import clog2

__all__ = ["Fetch", "imem_geometry", "program_checks"]


def program_checks(m: Module, cfg: SATConfig, program_addr, program_len) -> tuple[Signal, Signal]:
    """(length bad, address bad) of the program at ``program_addr`` / ``program_len``, registered in the
    ``sync`` domain (not reset by START): the caller passes the program the next cycle runs (in START's cycle
    the host's registers, written at least a cycle before; a chained program's, latched two cycles before its
    first), so the fetch reads the checks of its own program.  The end is summed over the address bits
    only and compared bit by bit, so the path is one carry chain."""
    top_bits = cfg.addr_bits
    prog_bytes = Signal(40)
    m.d.comb += prog_bytes.eq(program_len * (INSTRUCTION_BITS // 8))
    end = Signal(top_bits + 2)  # program_addr + bytes, when both are below 2^(addr_bits + 1)
    m.d.comb += end.eq(program_addr[:top_bits + 1] + prog_bytes[:top_bits + 1])
    # end > 2^addr_bits: a bit past addr_bits, or bit addr_bits and any below
    past = end[top_bits + 1] | (end[top_bits] & (end[:top_bits] != 0))
    len_bad, addr_bad = Signal(name="program_len_bad"), Signal(name="program_addr_bad")
    m.d.sync += [len_bad.eq((program_len == 0) | (program_len[(cfg.imem_depth).bit_length():] != 0) |
                            (program_len[:(cfg.imem_depth).bit_length()] > cfg.imem_depth)),
                 addr_bad.eq((program_addr[:clog2(cfg.bus_bytes)] != 0) | (program_addr[top_bits + 1:] != 0) |
                             (prog_bytes[top_bits + 1:] != 0) | past)]
    return len_bad, addr_bad


def imem_geometry(cfg: SATConfig) -> tuple[int, int, int]:
    """(instructions per imem word, imem word bits, imem words): a word is one bus beat or one instruction."""
    bus_bits = cfg.bus_bytes * 8
    per_word = max(1, bus_bits // INSTRUCTION_BITS)
    return per_word, max(bus_bits, INSTRUCTION_BITS), -(-cfg.imem_depth // per_word)


class Fetch(wiring.Component):
    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        per_word, width, words = imem_geometry(cfg)
        super().__init__({
            "fetching": In(1),  # the run is BUSY and this unit is `active`
            "program_addr": In(64), "program_len": In(32),
            # the program's length is 0 or past imem_depth; its address is not bus aligned or the program ends
            # past the address space (checked a cycle ahead by the top level: ``program_checks``)
            "program_len_bad": In(1), "program_addr_bad": In(1),
            "active": Out(1, init=1),  # the fetch phase of a run (from reset by START)
            "ar_valid": Out(1), "ar_addr": Out(cfg.addr_bits), "ar_len": Out(8), "ar_ready": In(1),
            "r_valid": In(1), "r_data": In(cfg.bus_bytes * 8), "r_resp": In(2),
            "imem_addr": Out(range(words)), "imem_data": Out(width), "imem_en": Out(1),
            "imem_codes": Out(ErrorCode.as_shape().width * per_word),  # the static codes of imem_data's instructions
            "bad_length": Out(1), "bad_address": Out(1), "bus_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        bus = cfg.bus_bytes
        bus_bits = bus * 8
        per_word, imem_width, _ = imem_geometry(cfg)
        beats_per_word = imem_width // bus_bits
        prog_bytes = Signal(40)
        total_beats = Signal(40)
        beat = Signal(40)
        assembled = Signal(imem_width)
        m.d.comb += [prog_bytes.eq(self.program_len * (INSTRUCTION_BITS // 8)),
                     total_beats.eq((prog_bytes + bus - 1) >> clog2(bus) if bus > 1 else prog_bytes)]
        len_bad, addr_bad = self.program_len_bad, self.program_addr_bad
        first = Signal(init=1)
        m.d.sync += first.eq(0)
        with m.If(self.fetching & first & (len_bad | addr_bad)):
            m.d.sync += self.active.eq(0)  # nothing was fetched: the run stops at once
        m.d.comb += [self.bad_length.eq(self.fetching & first & len_bad),
                     self.bad_address.eq(self.fetching & first & ~len_bad & addr_bad)]
        # the program is one run of total_beats beats, cut into bursts
        run_left = Signal(40)
        addr = Signal(cfg.addr_bits + 1)
        more = Signal()
        cur_left = Mux(first, total_beats, run_left)
        cur_addr = Mux(first, self.program_addr, addr)
        beats = next_burst(m, "fetch_burst", cur_addr, cur_left, bus, cfg.max_burst_beats)
        m.d.comb += [self.ar_valid.eq(self.fetching & ((first & ~len_bad & ~addr_bad) | (~first & more))),
                     self.ar_addr.eq(cur_addr), self.ar_len.eq(beats - 1)]
        with m.If(self.ar_valid & self.ar_ready):
            m.d.sync += [addr.eq(cur_addr + beats * bus), run_left.eq(cur_left - beats), more.eq(cur_left != beats)]
        with m.Elif(self.ar_valid):
            m.d.sync += [addr.eq(cur_addr), run_left.eq(cur_left), more.eq(1)]
        # beats into the instruction memory, through the checks: a word and its codes CHECK_LATENCY cycles on
        next_word = Signal(imem_width)
        m.d.comb += next_word.eq(Cat(assembled[bus_bits:], self.r_data) if beats_per_word > 1 else self.r_data)
        got_beat = self.fetching & ~first & self.r_valid
        word_addr, word_en, word_last = Signal.like(self.imem_addr), Signal(), Signal()
        with m.If(got_beat):
            m.d.sync += [assembled.eq(next_word), beat.eq(beat + 1)]
            m.d.comb += [word_addr.eq(beat >> clog2(beats_per_word) if beats_per_word > 1 else beat),
                         word_en.eq((beat % beats_per_word == beats_per_word - 1) | (beat == total_beats - 1)),
                         word_last.eq(beat == total_beats - 1)]
        checks = []
        for j in range(per_word):
            m.submodules[f"check{j}"] = check = InstructionCheck(cfg)
            m.d.comb += [check.inst.eq(next_word.word_select(j, INSTRUCTION_BITS)),
                         check.program_addr.eq(self.program_addr)]
            checks.append(check)
        for _ in range(CHECK_LATENCY):
            delayed = Signal.like(word_addr), Signal(), Signal()
            m.d.sync += [delayed[0].eq(word_addr), delayed[1].eq(word_en), delayed[2].eq(word_last)]
            word_addr, word_en, word_last = delayed
        m.d.comb += [self.imem_addr.eq(word_addr), self.imem_en.eq(word_en),
                     self.imem_data.eq(Cat(*(check.inst_out for check in checks))),
                     self.imem_codes.eq(Cat(*(check.code.as_value() for check in checks)))]
        with m.If(word_last):
            m.d.sync += self.active.eq(0)
        m.d.comb += self.bus_error.eq(got_beat & (self.r_resp != 0))
        return m
