"""Random programs for the core, race-free by construction, with one deliberate fault each.

A base program is built the way the compiler builds one (double-buffered
A/B halves, two accumulator halves, the four token channels placed so that
every buffer word and memory byte is touched in program order), but with
random sizes, buffer addresses, strides, accumulate flags, step and block
counts, program order (sequential or software-pipelined) and serial switch.
Then a *variant* injects one fault, or none:

========================  ===================================================
variant                   what it does (and the error it aims at)
========================  ===================================================
``done``                  nothing (NONE)
``bad_opcode``            one instruction replaced by an illegal word
``sram_range``            one instruction's buffer range past the buffer
``dram_range``            misaligned address or stride, past the address
                          space, or a misaligned program address
``bad_args``              zero length, wrong buffer, a FINISH with a token
                          flag, a pattern SPARSE_GEMM or SPARSIFY lacks
``token_overflow``        a tail of pushes on one channel that nobody pops
``deadlock``              one push dropped on a channel consumed one-to-one
``axi_load``/``axi_store``  a transfer that reaches past the memory's end
``axi_sparsify``          a SPARSIFY whose source or output reaches past it
``axi_fetch``             a memory that ends inside the program
``program_too_long``      length 0 or past the instruction memory
``no_finish``             the FINISH left out
========================  ===================================================

Most programs also run SPARSIFYs (the fourth unit) beside the GEMMs: on
fp32 weights with ties, zeros, NaN and infinities, each into its own output
slice, one of them after a STORE that writes its source (``s2p``) and one
before a LOAD that reads its output (``p2l``).

The injected instruction sits anywhere in the program, so the instructions
before it run (and their STOREs leave bytes) before the error.  Scratch
words at the top of A, B and ACC are written and read only by the
overflow tails, which keeps those tails race-free too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nmsat.dataflow.gemm import software_pipelined
from nmsat.hw.config import SATConfig
from nmsat.hw.timing import sparsify_shape
from nmsat.hw.isa import Buffer, Csr, ErrorCode, Opcode, VectorFunc, encode, to_bytes

VARIANTS = ("done", "bad_opcode", "sram_range", "dram_range", "bad_args", "token_overflow", "deadlock",
            "axi_load", "axi_store", "axi_sparsify", "axi_fetch", "program_too_long", "no_finish")

#: the error each variant is built to raise (program_too_long and dram_range may come from the fetch)
AIMED = {"done": ErrorCode.NONE, "bad_opcode": ErrorCode.BAD_OPCODE, "sram_range": ErrorCode.SRAM_RANGE,
         "dram_range": ErrorCode.DRAM_RANGE, "bad_args": ErrorCode.BAD_ARGS,
         "token_overflow": ErrorCode.TOKEN_OVERFLOW, "deadlock": ErrorCode.DEADLOCK,
         "axi_load": ErrorCode.AXI_ERROR, "axi_store": ErrorCode.AXI_ERROR, "axi_sparsify": ErrorCode.AXI_ERROR,
         "axi_fetch": ErrorCode.AXI_ERROR,
         "program_too_long": ErrorCode.PROGRAM_TOO_LONG, "no_finish": ErrorCode.NO_FINISH}

PAGE = 4096


@dataclass
class Case:
    """One run: memory image (its size is the memory's size), program place and length, serial switch."""

    variant: str
    memory: np.ndarray
    program_addr: int
    program_len: int
    serial: bool
    fault_pc: int | None = None  # the instruction the variant changed, if it is one
    registers: tuple = ()  # (Csr, value) to write before the run: WEIGHT_UPDATE's hyperparameters


class _Builder:
    def __init__(self, cfg: SATConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        R = cfg.rows
        banks = cfg.b_banks
        b_half = (cfg.b_depth - banks) // (2 * banks) * banks  # B halves start at multiples of every m
        self.scratch = {Buffer.A: min(8, cfg.a_depth // 8), Buffer.B: cfg.b_depth - 2 * b_half, Buffer.IDX: 0}
        self.half = {b: (cfg.depth(b) - self.scratch[b]) // 2 for b in (Buffer.A, Buffer.B, Buffer.IDX)}
        self.acc_scratch = R
        self.acc_half = (cfg.acc_depth - R) // 2
        assert self.acc_half >= R and min(self.half.values()) >= 1, f"config {cfg.name} too small for the generator"
        self.in_bytes = 8 * PAGE
        self.out_bytes = 4 * PAGE

    def integer(self, lo: int, hi: int) -> int:
        """Uniform in lo..hi inclusive."""
        return int(self.rng.integers(lo, hi + 1))

    def stride(self, word: int) -> int:
        bus = self.cfg.bus_bytes
        return int(self.rng.choice([word, word, word * 2, word * 3, word + bus, word + 3 * bus]))

    def dram(self, base: int, size: int, rows: int, word: int, stride: int) -> int:
        span = (rows - 1) * stride + word
        assert span <= size, (span, size)
        return base + self.cfg.bus_bytes * self.integer(0, (size - span) // self.cfg.bus_bytes)

    def load(self, buf: Buffer, half: int, in_base: int, **flags) -> dict:
        cap = self.half[buf]
        cfg = self.cfg
        if buf in (Buffer.A, Buffer.B) and cfg.rows == cfg.cols and cap >= cfg.cols and self.rng.random() < 0.2:
            # transposed: blocks of rows B words, each written as cols words
            blocks = self.integer(1, min(cap // cfg.cols, 6))
            block = cfg.rows * cfg.b_word_bytes
            stride = self.stride(block)
            return dict(opcode=Opcode.LOAD, buffer=buf, tile_transpose=1,
                        sram_addr=half * cap + self.integer(0, cap - blocks * cfg.cols), rows=blocks,
                        dram_addr=self.dram(in_base, self.in_bytes, blocks, block, stride), dram_stride=stride, **flags)
        rows = self.integer(1, min(cap, 24))
        word = self.cfg.word_bytes(buf)
        stride = self.stride(word)
        return dict(opcode=Opcode.LOAD, buffer=buf, sram_addr=half * cap + self.integer(0, cap - rows), rows=rows,
                    dram_addr=self.dram(in_base, self.in_bytes, rows, word, stride), dram_stride=stride, **flags)

    def gemm(self, half: int, acc_half: int, **flags) -> dict:
        ca, cb = self.half[Buffer.A], self.half[Buffer.B]
        acc_addr = acc_half * self.acc_half + self.integer(0, self.acc_half - self.cfg.rows)
        accumulate = int(self.rng.random() < 0.5)
        if self.cfg.sparse_m and self.rng.random() < 0.4:
            return self.sparse_gemm(half, acc_addr, accumulate, **flags)
        if self.rng.random() < 0.3:  # a kernel walk (on-chip im2col) over words of the B half
            walk, taps, span = self.walk(1)
            if taps > ca or span >= cb:
                walk, taps, span = {}, 1, 0
            k = self.integer(1, max(1, min(ca // taps, cb - span, 12)))
            return dict(opcode=Opcode.GEMM, a_addr=half * ca + self.integer(0, ca - taps * k),
                        b_addr=half * cb + self.integer(0, cb - span - k), acc_addr=acc_addr, k=k,
                        accumulate=accumulate, **walk, **flags)
        k = self.integer(1, min(ca, cb, 30))
        return dict(opcode=Opcode.GEMM, a_addr=half * ca + self.integer(0, ca - k), b_addr=half * cb + self.integer(0, cb - k),
                    acc_addr=acc_addr, k=k, accumulate=accumulate, **flags)

    def walk(self, unit: int) -> tuple[dict, int, int]:
        """A kernel walk of up to 3 × 3 taps with strides in multiples of ``unit`` B words, its reads inside a
        quarter of the B half: (fields, taps, B words from the first tap's first word to the last tap's)."""
        quarter = self.half[Buffer.B] // 4 // unit
        taps_h, taps_w = self.integer(0, 3), self.integer(0, 3)
        rows, cols = max(taps_h, 1), max(taps_w, 1)
        w_stride = unit * self.integer(0, quarter // 2 // max(cols - 1, 1))
        h_stride = unit * self.integer(0, quarter // 2 // max(rows - 1, 1))
        walk = dict(taps_h=taps_h, taps_w=taps_w, tap_h_stride=h_stride, tap_w_stride=w_stride)
        return walk, rows * cols, (rows - 1) * h_stride + (cols - 1) * w_stride

    def sparse_gemm(self, half: int, acc_addr: int, accumulate: int, **flags) -> dict:
        """A SPARSE_GEMM reading its A slots, B groups and index words within the step's halves."""
        ca, cb, ci = self.half[Buffer.A], self.half[Buffer.B], self.half[Buffer.IDX]
        m = int(self.rng.choice(self.cfg.sparse_m))
        n = self.integer(1, m)
        walk, taps, span = self.walk(m) if self.rng.random() < 0.3 else ({}, 1, 0)
        if taps * n > min(ca, ci * 4) or span + m > cb:  # a walk too big for this config's halves
            walk, taps, span = {}, 1, 0
        groups = self.integer(1, max(1, min(ca // (n * taps), (cb - span) // m, ci * 4 // (n * taps), 12)))
        slots = taps * groups * n
        words = -(-slots // 4)
        return dict(opcode=Opcode.SPARSE_GEMM, a_addr=half * ca + self.integer(0, ca - slots),
                    b_addr=half * cb + m * self.integer(0, (cb - span - groups * m) // m),
                    idx_addr=half * ci + self.integer(0, ci - words), acc_addr=acc_addr, groups=groups, n=n,
                    m_log2=m.bit_length() - 1, accumulate=accumulate, **walk, **flags)

    def sparsify(self, src_base: int, src_bytes: int, dst: int, dst_room: int, **flags) -> dict | None:
        """A SPARSIFY reading within ``src_bytes`` from ``src_base`` and writing at ``dst`` (None if it does not fit)."""
        cfg, rng = self.cfg, self.rng
        if not cfg.sparse_m:
            return None
        bus, e, R = cfg.bus_bytes, cfg.sparsify_chunk, cfg.rows
        m = int(rng.choice(cfg.sparse_m))
        n = self.integer(1, m)
        transpose = int(rng.random() < 0.5)
        for _ in range(8):
            length = self.integer(1, 2 * e + 3)
            span = -(-length // e) * e
            word = 4 * span if transpose else 4 * R
            rows = R if transpose else span
            stride = word + bus * self.integer(0, 2) if rng.random() < 0.8 else bus * self.integer(1, max(1, word // bus))
            extent = (rows - 1) * stride + word
            slots = -(-length // m) * n
            out = (slots + -(-slots // 4)) * cfg.a_word_bytes
            if extent <= src_bytes and out <= dst_room:
                src = self.dram(src_base, src_bytes, rows, word, stride)
                return dict(opcode=Opcode.SPARSIFY, src_addr=src, transpose=transpose, length=length, src_stride=stride,
                            n=n, m_log2=m.bit_length() - 1, dst_offset=dst - src, _out=out, **flags)
        return None

    def store(self, acc_half: int, out_base: int, **flags) -> dict:
        rows = self.integer(1, min(self.acc_half, 8))
        word = self.cfg.acc_word_bytes
        stride = self.stride(word)
        return dict(opcode=Opcode.STORE, buffer=Buffer.ACC, sram_addr=acc_half * self.acc_half +
                    self.integer(0, self.acc_half - rows), rows=rows,
                    dram_addr=self.dram(out_base, self.out_bytes, rows, word, stride), dram_stride=stride, **flags)


def _base_program(b: _Builder, in_base: int, out_base: int) -> list[dict]:
    """A race-free program (no FINISH): blocks of steps of LOADs and GEMMs, each block's STOREs after it."""
    rng = b.rng
    step_loads, step_gemms, step_stores = [], [], []
    step = 0
    blocks = b.integer(1, 4)
    for block in range(blocks):
        steps = b.integer(1, 3)
        for s in range(steps):
            half = step % 2
            loads = [b.load(Buffer(int(rng.choice([0, 0, 1, 1, 3]))), half, in_base) for _ in range(b.integer(1, 3))]
            loads[0]["pop_next"] = int(step >= 2)
            loads[-1]["push_next"] = 1
            gemms = [b.gemm(half, block % 2) for _ in range(b.integer(1, 3))]
            gemms[0]["pop_prev"] = 1
            gemms[0]["pop_next"] = int(s == 0 and block >= 2)
            gemms[-1]["push_prev"] = 1
            gemms[-1]["push_next"] = int(s == steps - 1)
            step_loads.append(loads)
            step_gemms.append(gemms)
            step_stores.append([])
            step += 1
        stores = [b.store(block % 2, out_base, bf16=int(rng.random() < 0.3), relu=int(rng.random() < 0.3))
                  for _ in range(b.integer(1, 3))]
        stores[0]["pop_prev"] = 1
        stores[-1]["push_prev"] = 1
        step_stores[-1] = stores
    out: list[dict] = []
    if rng.random() < 0.5:  # sequential: a step's loads, its GEMMs, then (after a block) its stores
        for loads, gemms, stores in zip(step_loads, step_gemms, step_stores):
            out += loads + gemms + stores
    else:  # software-pipelined, as the compiler emits: loads t+1, GEMMs t, stores t-1
        out = software_pipelined(step_loads, step_gemms, step_stores)
    return out


def _add_sparsify(b: _Builder, instrs: list[dict], regions: dict[str, tuple[int, int]]) -> list[dict]:
    """SPARSIFYs placed among the program's instructions (see the module's docstring); each writes its own slice
    of the ``sp_out`` region.  A STORE redirected into ``sp_chain`` feeds one of them (``s2p``), and one feeds a
    later LOAD (``p2l``) that reads its output."""
    rng = b.rng
    if not b.cfg.sparse_m or rng.random() < 0.3:
        return instrs
    src_base, src_bytes = regions["sp_src"]
    out_base, out_bytes = regions["sp_out"]
    cursor = out_base
    instrs = list(instrs)
    for _ in range(b.integer(1, 3)):
        sp = b.sparsify(src_base, src_bytes, cursor, out_base + out_bytes - cursor)
        if sp is None:
            break
        sp["_out"] = -(-sp["_out"] // b.cfg.bus_bytes) * b.cfg.bus_bytes
        cursor += sp["_out"]
        instrs.insert(b.integer(0, len(instrs)), sp)
    # p2l: a later LOAD waits for a SPARSIFY and reads what it wrote; the n-th pop takes the n-th push, so the
    # pairs keep program order on both sides
    after = -1
    for at in [i for i, x in enumerate(instrs) if x["opcode"] is Opcode.SPARSIFY]:
        sp = instrs[at]
        out = sp.pop("_out")
        later_loads = [i for i in range(max(at, after) + 1, len(instrs)) if instrs[i]["opcode"] is Opcode.LOAD
                       and b.cfg.word_bytes(instrs[i]["buffer"]) <= out]  # it reads within the output
        if later_loads and rng.random() < 0.5:
            sp["push_next"] = 1
            after = int(rng.choice(later_loads))
            x = instrs[after]
            x["pop_prev"] = 1
            x.pop("tile_transpose", None)  # a plain LOAD of the output's words (a transposing one reads blocks)
            word = b.cfg.word_bytes(x["buffer"])
            x["rows"] = min(x["rows"], out // word)
            x["dram_addr"], x["dram_stride"] = sp["src_addr"] + sp["dst_offset"], word
    # a WEIGHT_UPDATE on arrays only the vector unit touches, sometimes followed by a SPARSIFY of its weights
    if rng.random() < 0.4:
        w_base, _ = regions["sp_upd"]
        words = b.integer(1, min(48, PAGE // (4 * b.cfg.rows)))
        at = b.integer(0, len(instrs))
        instrs.insert(at, dict(opcode=Opcode.WEIGHT_UPDATE, w_addr=w_base, words=words, v_offset=PAGE,
                               g_offset=2 * PAGE))
        if rng.random() < 0.5:
            sp = b.sparsify(w_base, words * 4 * b.cfg.rows, cursor, out_base + out_bytes - cursor)
            if sp is not None:
                sp.pop("_out")
                cursor = out_base + out_bytes  # nothing after it in the output region
                instrs.insert(b.integer(at + 1, len(instrs)), sp)
    # a VECTOR on arrays only the vector unit touches (x, y, z a page each; z sometimes in place of x or y)
    if rng.random() < 0.4:
        x_base, _ = regions["vec"]
        bf16 = int(rng.random() < 0.5)
        burst = b.cfg.max_burst_beats * b.cfg.bus_bytes
        z = int(rng.choice([2, 2, 0, 1])) * PAGE // burst
        instrs.insert(b.integer(0, len(instrs)), dict(
            opcode=Opcode.VECTOR, x_addr=x_base, beats=b.integer(1, min(80, PAGE // b.cfg.bus_bytes)),
            func=VectorFunc(int(rng.integers(0, len(VectorFunc)))), bf16=bf16, y_offset=PAGE // burst, z_offset=z))
    stores = [i for i, x in enumerate(instrs) if x["opcode"] is Opcode.STORE]
    chain_base, chain_bytes = regions["sp_chain"]
    if stores and rng.random() < 0.5:  # s2p: a STORE writes the weights a SPARSIFY after it reads
        i = int(rng.choice(stores))
        x = instrs[i]
        word = b.cfg.acc_word_bytes
        x["dram_addr"], x["dram_stride"], x["push_next"] = chain_base, word, 1
        x["rows"] = min(x["rows"], chain_bytes // word)
        sp = b.sparsify(chain_base, (x["rows"] - 1) * word + word, cursor, out_base + out_bytes - cursor, pop_prev=1)
        if sp is None:
            x["push_next"] = 0
        else:
            sp.pop("_out")
            instrs.insert(b.integer(i + 1, len(instrs)), sp)
    return instrs


def _overflow_tail(b: _Builder, in_base: int, out_base: int) -> list[dict]:
    """token_limit + 1 pushes on one channel, from instructions that touch only scratch words."""
    cfg, rng = b.cfg, b.rng
    n = cfg.token_limit + 1 + b.integer(0, 2)
    a_scr, b_scr = cfg.a_depth - b.scratch[Buffer.A], cfg.b_depth - b.scratch[Buffer.B]
    acc_scr = cfg.acc_depth - b.acc_scratch
    channel = rng.choice(["l2c", "c2l", "c2s", "s2c"])
    tail = []
    for _ in range(n):
        if channel == "l2c":
            rows = b.integer(1, b.scratch[Buffer.A])
            word = cfg.a_word_bytes
            tail.append(dict(opcode=Opcode.LOAD, push_next=1, buffer=Buffer.A, sram_addr=a_scr, rows=rows,
                             dram_addr=b.dram(in_base, b.in_bytes, rows, word, word), dram_stride=word))
        elif channel in ("c2l", "c2s"):
            k = b.integer(1, min(b.scratch[Buffer.A], b.scratch[Buffer.B]))
            tail.append(dict(opcode=Opcode.GEMM, a_addr=a_scr, b_addr=b_scr, acc_addr=acc_scr, k=k,
                             accumulate=int(rng.random() < 0.5),
                             **({"push_prev": 1} if channel == "c2l" else {"push_next": 1})))
        else:
            rows = b.integer(1, b.acc_scratch)
            word = cfg.acc_word_bytes
            tail.append(dict(opcode=Opcode.STORE, push_prev=1, buffer=Buffer.ACC, sram_addr=acc_scr, rows=rows,
                             dram_addr=b.dram(out_base, b.out_bytes, rows, word, word), dram_stride=word))
    return tail


def _bad_instruction(b: _Builder, variant: str) -> int:
    """One instruction word that the dispatcher must refuse with the variant's error."""
    cfg, rng = b.cfg, b.rng
    bus = cfg.bus_bytes
    if variant == "bad_opcode":
        return int(rng.choice([0, *range(9, 16)])) | int(rng.integers(0, 1 << 60)) << 8
    if variant == "sram_range":
        kind = rng.choice(["load", "store", "gemm_a", "gemm_b", "gemm_acc", "sparse_a", "sparse_b", "sparse_idx"])
        if kind.startswith("sparse"):
            m = int(rng.choice(cfg.sparse_m))
            n, groups = b.integer(1, m), b.integer(1, 8)
            args = dict(a_addr=0, b_addr=0, acc_addr=0, idx_addr=0, groups=groups, n=n, m_log2=m.bit_length() - 1)
            if kind == "sparse_a":
                args["a_addr"] = cfg.a_depth - groups * n + 1
            elif kind == "sparse_b":
                args["b_addr"] = (cfg.b_depth - groups * m) // m * m + m
            else:
                args["idx_addr"] = cfg.idx_depth - -(-groups * n // 4) + 1
            return encode(Opcode.SPARSE_GEMM, **args)
        if kind == "load":
            buf = Buffer(int(rng.choice([0, 1, 3])))
            rows = b.integer(2, min(20, cfg.depth(buf)))
            return encode(Opcode.LOAD, buffer=buf, sram_addr=cfg.depth(buf) - rows + b.integer(1, rows - 1), rows=rows,
                          dram_addr=0, dram_stride=cfg.word_bytes(buf))
        if kind == "store":
            rows = b.integer(2, 8)
            return encode(Opcode.STORE, buffer=Buffer.ACC, sram_addr=cfg.acc_depth - rows + 1, rows=rows, dram_addr=0,
                          dram_stride=cfg.acc_word_bytes)
        k = b.integer(2, 20)
        args = dict(a_addr=0, b_addr=0, acc_addr=0, k=k)
        if kind == "gemm_a":
            args["a_addr"] = cfg.a_depth - k + 1
        elif kind == "gemm_b":
            args["b_addr"] = cfg.b_depth - k + 1
        else:
            args["acc_addr"] = cfg.acc_depth - cfg.rows + b.integer(1, cfg.rows)
        return encode(Opcode.GEMM, **args)
    if variant == "dram_range" and rng.random() < 0.15:  # a WEIGHT_UPDATE's arrays misaligned or past the space
        align = cfg.max_burst_beats * bus
        args = dict(w_addr=0, words=b.integer(1, 8), v_offset=PAGE, g_offset=2 * PAGE)
        kind = rng.choice(["w", "v", "g", "space"])
        if kind == "space":
            args["w_addr"] = (1 << cfg.addr_bits) - align
            args["words"] = align // (4 * cfg.rows) + 1
        else:
            key = {"w": "w_addr", "v": "v_offset", "g": "g_offset"}[kind]
            args[key] += bus * b.integer(1, max(1, align // bus - 1)) if align > bus else 1
        return encode(Opcode.WEIGHT_UPDATE, **args)
    if variant == "dram_range" and rng.random() < 0.15:  # a VECTOR's arrays misaligned, below 0 or past the space
        align = cfg.max_burst_beats * bus
        args = dict(x_addr=PAGE, beats=b.integer(1, 8), func=VectorFunc.ADD, y_offset=PAGE // align,
                    z_offset=2 * PAGE // align)
        kind = rng.choice(["x", "below", "space"])
        if kind == "x":
            args["x_addr"] += bus * b.integer(1, max(1, align // bus - 1)) if align > bus else 1
        elif kind == "below":
            args[str(rng.choice(["y_offset", "z_offset"]))] = -(PAGE // align) - b.integer(1, 4)
        else:
            args["x_addr"] = (1 << cfg.addr_bits) - align
            args["beats"] = cfg.max_burst_beats + b.integer(1, 8)
        return encode(Opcode.VECTOR, **args)
    if variant == "dram_range" and cfg.sparse_m and rng.random() < 0.3:
        m = int(rng.choice(cfg.sparse_m))
        args = dict(src_addr=0, transpose=int(rng.random() < 0.5), length=b.integer(1, 40), n=1,
                    m_log2=m.bit_length() - 1, src_stride=bus * 8, dst_offset=PAGE)
        kind = rng.choice(["src", "stride", "dst", "src_space", "dst_space"])
        if kind == "src":
            args["src_addr"] = bus * b.integer(0, 64) + b.integer(1, bus - 1)
        elif kind == "stride":
            args["src_stride"] += b.integer(1, bus - 1)
        elif kind == "dst":
            args["dst_offset"] += b.integer(1, bus - 1)
        elif kind == "src_space":
            args["src_addr"] = (1 << cfg.addr_bits) - bus  # its rows reach past the top
        else:  # the source inside the space, the output reaching past its top
            args["src_addr"] = (1 << cfg.addr_bits) - (1 << 30)
            args["dst_offset"] = (1 << 30) - bus
        return encode(Opcode.SPARSIFY, **args)
    if variant == "dram_range":
        buf = Buffer.A if rng.random() < 0.5 else Buffer.B
        word = cfg.word_bytes(buf)
        kind = rng.choice(["addr", "stride", "space"])
        op = Opcode.LOAD if rng.random() < 0.5 else Opcode.STORE
        if op is Opcode.STORE:
            buf, word = Buffer.ACC, cfg.acc_word_bytes
        if kind == "addr":
            return encode(op, buffer=buf, rows=1, dram_addr=bus * b.integer(0, 64) + b.integer(1, bus - 1), dram_stride=word)
        if kind == "stride":
            return encode(op, buffer=buf, rows=2, dram_addr=0, dram_stride=word + b.integer(1, bus - 1))
        rows = b.integer(1, 4)
        return encode(op, buffer=buf, rows=rows, dram_addr=(1 << cfg.addr_bits) - bus * b.integer(0, rows * word // bus - 1),
                      dram_stride=word)
    if variant == "bad_args":
        kind = rng.choice(["rows0", "store_a", "load_acc", "k0", "sparsify", "finish_flag", "store_idx", "sparse",
                           "update", "vector"])
        if kind == "update":
            return encode(Opcode.WEIGHT_UPDATE, w_addr=0, words=0, v_offset=PAGE, g_offset=2 * PAGE)
        if kind == "vector":  # no beats, or a function it lacks
            beats, func = (0, 0) if rng.random() < 0.5 else (1, b.integer(len(VectorFunc), 15))
            return encode(Opcode.VECTOR, x_addr=0, beats=beats, func=func, y_offset=1, z_offset=2)
        if kind == "rows0":
            return encode(Opcode.LOAD, buffer=Buffer.A, rows=0, dram_addr=0, dram_stride=cfg.a_word_bytes)
        if kind == "store_a":
            return encode(Opcode.STORE, buffer=Buffer.A, rows=1, dram_addr=0, dram_stride=cfg.a_word_bytes)
        if kind == "load_acc":
            return encode(Opcode.LOAD, buffer=Buffer.ACC, rows=1, dram_addr=0, dram_stride=cfg.acc_word_bytes)
        if kind == "k0":
            return encode(Opcode.GEMM, k=0)
        if kind == "sparsify":
            m = int(rng.choice(cfg.sparse_m)) if cfg.sparse_m else 4
            args = dict(src_addr=0, length=b.integer(1, 40), n=1, m_log2=m.bit_length() - 1, src_stride=bus * 8,
                        dst_offset=PAGE)
            bad = rng.choice(["length0", "n0", "n_over_m", "m_unsupported"])
            if bad == "length0":
                args["length"] = 0
            elif bad == "n0":
                args["n"] = 0
            elif bad == "n_over_m":
                args["n"] = b.integer(m + 1, 31)
            else:
                args["m_log2"] = int(rng.choice([x for x in range(8) if (1 << x) not in cfg.sparse_m]))
            return encode(Opcode.SPARSIFY, **args)
        if kind == "finish_flag":
            return encode(Opcode.FINISH, **{rng.choice(["pop_prev", "pop_next", "push_prev", "push_next"]): 1})
        if kind == "store_idx":
            return encode(Opcode.STORE, buffer=Buffer.IDX, rows=1, dram_addr=0, dram_stride=cfg.a_word_bytes)
        m = int(rng.choice(cfg.sparse_m))
        bad = rng.choice(["groups0", "n0", "n_over_m", "m_unsupported", "b_misaligned"])
        args = dict(groups=2, n=1, m_log2=m.bit_length() - 1, b_addr=0)
        if bad == "groups0":
            args["groups"] = 0
        elif bad == "n0":
            args["n"] = 0
        elif bad == "n_over_m":
            args["n"] = b.integer(m + 1, 31)
        elif bad == "m_unsupported":
            args["m_log2"] = int(rng.choice([x for x in range(8) if (1 << x) not in cfg.sparse_m]))
        else:
            args["b_addr"] = m * b.integer(0, 4) + b.integer(1, m - 1)
        return encode(Opcode.SPARSE_GEMM, **args)
    raise ValueError(variant)


def random_case(cfg: SATConfig, rng: np.random.Generator, variant: str | None = None) -> Case:
    """A random program with one fault of ``variant`` (random if None), and its memory image."""
    variant = variant or str(rng.choice(VARIANTS))
    b = _Builder(cfg, rng)
    bus = cfg.bus_bytes
    # memory: program region, input region (random data), output region (random data, partly overwritten)
    prog_region = 16 * PAGE
    in_base = prog_region
    out_base = in_base + b.in_bytes
    regions = {"sp_src": (out_base + b.out_bytes, 2 * PAGE), "sp_chain": (out_base + b.out_bytes + 2 * PAGE, PAGE),
               "sp_upd": (out_base + b.out_bytes + 3 * PAGE, 3 * PAGE),  # w, v, g of a WEIGHT_UPDATE, a page each
               "sp_out": (out_base + b.out_bytes + 6 * PAGE, 4 * PAGE),  # after every SPARSIFY source
               "vec": (out_base + b.out_bytes + 10 * PAGE, 3 * PAGE)}  # x, y, z of a VECTOR, a page each
    gap = PAGE  # bytes no STORE writes and no LOAD reads, where a straddling transfer of the axi variants begins
    size = out_base + b.out_bytes + 13 * PAGE + gap
    instrs = _add_sparsify(b, _base_program(b, in_base, out_base), regions)
    fault_pc = None
    if variant == "token_overflow":
        instrs += _overflow_tail(b, in_base, out_base)
    elif variant == "deadlock":
        pushers = [i for i, x in enumerate(instrs) if (x["opcode"] is Opcode.LOAD and x.get("push_next")) or
                   (x["opcode"] in (Opcode.GEMM, Opcode.SPARSE_GEMM) and x.get("push_next"))]  # l2c, c2s: one for one
        fault_pc = int(rng.choice(pushers))
        instrs[fault_pc]["push_next"] = 0
    elif variant == "axi_sparsify" and cfg.sparse_m:
        sps = [i for i, x in enumerate(instrs) if x["opcode"] is Opcode.SPARSIFY]
        if not sps:
            instrs.insert(b.integer(0, len(instrs)), b.sparsify(*regions["sp_src"], regions["sp_out"][0], 4 * PAGE))
            instrs[-1].pop("_out", None)
            sps = [i for i, x in enumerate(instrs) if x["opcode"] is Opcode.SPARSIFY]
        for x in instrs:
            x.pop("_out", None)
        fault_pc = int(rng.choice(sps))
        x = instrs[fault_pc]
        shape = sparsify_shape(cfg, x["src_addr"], x["src_stride"], bool(x["transpose"]), x["length"], x["n"],
                               1 << x["m_log2"], x["dst_offset"])
        src_span, out_span = shape.src_end - x["src_addr"], shape.dst_end - shape.dst_addr
        if rng.random() < 0.5:  # the source straddles the end or lies past it (the output after it, past it too)
            x["src_addr"] = (size - bus * b.integer(1, max(1, min(gap, src_span - 1) // bus)) if rng.random() < 0.6
                             else size + bus * b.integer(0, 64))
            x["dst_offset"] = src_span + bus * b.integer(0, 64)  # after its source: never over it
        else:  # the output straddles the end or lies past it
            dst = (size - bus * b.integer(1, max(1, min(gap, out_span - 1) // bus)) if rng.random() < 0.6
                   else size + bus * b.integer(0, 64))
            x["dst_offset"] = dst - x["src_addr"]
    elif variant in ("axi_load", "axi_store"):
        op = Opcode.LOAD if variant == "axi_load" else Opcode.STORE
        fault_pc = int(rng.choice([i for i, x in enumerate(instrs) if x["opcode"] is op]))
        x = instrs[fault_pc]
        x["bf16"] = 0  # the span below is that of fp32 words
        word = cfg.word_bytes(x["buffer"])
        span = (x["rows"] - 1) * x["dram_stride"] + word
        # from a few beats before the end (the transfer straddles it) to well past it
        if span > bus and rng.random() < 0.6:  # straddles the end, starting in the gap
            x["dram_addr"] = size - bus * b.integer(1, min((span - 1) // bus, gap // bus))
        else:  # wholly past it
            x["dram_addr"] = size + bus * b.integer(0, 64)
    words = [encode(**x) for x in instrs] + [encode(Opcode.FINISH)]
    if variant in ("bad_opcode", "sram_range", "dram_range", "bad_args"):
        fault_pc = b.integer(0, len(words) - 1)  # the FINISH may be the one replaced
        words[fault_pc] = _bad_instruction(b, variant)
    program_len = len(words)
    if variant == "no_finish":
        words, program_len = words[:-1], program_len - 1
    blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
    assert blob.size <= prog_region
    program_addr = bus * b.integer(0, (prog_region - blob.size) // bus)
    memory = rng.integers(0, 256, size, dtype=np.uint8)
    # operands: bf16 patterns of moderate magnitude (random bytes would be mostly huge, NaN or tiny)
    operands = (rng.standard_normal(b.in_bytes // 2) * 4.0).astype(np.float32).view(np.uint32) >> 16
    memory[in_base:out_base] = operands.astype(np.uint16).view(np.uint8)
    # SPARSIFY sources: fp32 weights with few distinct magnitudes (ties), signed zeros, NaN and infinities
    src, src_bytes = regions["sp_src"]
    weights = rng.choice(np.float32([0.0, -0.0, 0.5, -0.5, 1.0, -2.0, np.nan, np.inf]), src_bytes // 4,
                         p=[0.2, 0.1, 0.2, 0.15, 0.15, 0.1, 0.05, 0.05])
    weights = np.where(rng.random(weights.size) < 0.4, rng.standard_normal(weights.size).astype(np.float32), weights)
    memory[src:src + src_bytes] = weights.astype(np.float32).view(np.uint8)
    upd, upd_bytes = regions["sp_upd"]
    memory[upd:upd + upd_bytes] = rng.standard_normal(upd_bytes // 4).astype(np.float32).view(np.uint8)
    # VECTOR operands: fp32 values with signed zeros, NaN, infinities, subnormals and ties among them (read as
    # bf16, each word is two elements)
    vec, vec_bytes = regions["vec"]
    values = rng.standard_normal(vec_bytes // 4).astype(np.float32)
    special = rng.choice(np.float32([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -1e-40, 1.0]), values.size)
    memory[vec:vec + vec_bytes] = np.where(rng.random(values.size) < 0.2, special, values).view(np.uint8)
    memory[program_addr:program_addr + blob.size] = blob
    if variant == "program_too_long":
        program_len = int(rng.choice([0, cfg.imem_depth + 1, cfg.imem_depth + b.integer(2, 100)]))
    elif variant == "dram_range" and rng.random() < 0.2:
        program_addr += b.integer(1, bus - 1) if rng.random() < 0.5 else (1 << cfg.addr_bits) - program_addr - bus
        fault_pc = None
    elif variant == "axi_fetch":
        end = program_addr + blob.size
        memory = memory[:end - bus * b.integer(1, blob.size // bus)].copy()  # the memory ends inside the program
    serial = bool(rng.random() < 0.15)
    hyper = (rng.uniform(0, 0.5), rng.uniform(0, 0.99), rng.uniform(0, 1e-3))
    registers = tuple((reg, int(np.float32(x).view(np.uint32))) for reg, x in
                      zip((Csr.LR, Csr.MOMENTUM, Csr.WEIGHT_DECAY), hyper))
    return Case(variant, memory, program_addr, program_len, serial, fault_pc, registers)


def random_cases(cfg: SATConfig, seed: int, count: int) -> list[Case]:
    """``count`` cases: every variant in turn, then random ones, from one seed."""
    rng = np.random.default_rng(seed)
    return [random_case(cfg, rng, VARIANTS[i] if i < len(VARIANTS) else None) for i in range(count)]
