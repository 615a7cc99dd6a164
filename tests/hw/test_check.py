"""The pipelined static checks (``nmsat.hw.core.check``) against the simulator's rule (``check_program``).

Instructions of every opcode with random fields, and, for each field, the
two values either side of where the rule's code changes (found by
bisection on the rule), so that every range comparison is met at its exact
boundary; one instruction a cycle through the pipeline, each code read
``CHECK_LATENCY`` cycles after it went in.
"""

import numpy as np
import pytest
from amaranth.hdl import Shape
from amaranth.lib import data
from amaranth.sim import Simulator

from nmsat.hw.config import SATConfig
from nmsat.hw.core.check import InstructionCheck
from nmsat.hw.isa import (SIGNED_FIELDS, ErrorCode, FinishArgs, GemmArgs, MemArgs, Opcode,
                          SparseGemmArgs, SparsifyArgs, VectorArgs, WeightUpdateArgs, decode_program, encode, to_bytes)
from nmsat.hw.timing import CHECK_LATENCY
from nmsat.sim.core import check_program

ARGS = {Opcode.LOAD: MemArgs, Opcode.STORE: MemArgs, Opcode.GEMM: GemmArgs, Opcode.SPARSE_GEMM: SparseGemmArgs,
        Opcode.SPARSIFY: SparsifyArgs, Opcode.WEIGHT_UPDATE: WeightUpdateArgs, Opcode.VECTOR: VectorArgs,
        Opcode.FINISH: FinishArgs}
PROGRAM_ADDR = 1 << 12

ODD = SATConfig(name="odd", rows=6, cols=6, a_depth=64, b_depth=64, acc_depth=13, bus_bytes=4, max_burst_beats=4,
                queue_depth=2, imem_depth=64, addr_bits=20)


def fields_of(opcode: Opcode) -> dict[str, tuple[int, int]]:
    """An opcode's argument fields: name → (lowest, one past the highest)."""
    out = {}
    for name, field in data.Layout.cast(ARGS[opcode]):
        if name.startswith("_"):
            continue
        width = Shape.cast(field.shape).width
        out[name] = (-(1 << width - 1), 1 << width - 1) if name in SIGNED_FIELDS else (0, 1 << width)
    return out


def rule(cfg: SATConfig, word: int) -> ErrorCode:
    bad, code = check_program(cfg, decode_program(to_bytes([word])), PROGRAM_ADDR)
    return code


def random_value(cfg: SATConfig, rng, lo: int, hi: int) -> int:
    """Mostly small or near the config's limits (where the checks turn), sometimes anything."""
    limits = [cfg.a_depth, cfg.b_depth, cfg.acc_depth, cfg.idx_depth, 1 << cfg.addr_bits, PROGRAM_ADDR]
    pick = rng.integers(4)
    if pick == 0:
        value = int(rng.integers(lo, hi))
    elif pick == 1:
        value = int(rng.integers(0, 9))
    else:
        value = int(rng.choice(limits)) // int(rng.choice([1, 2, 4, 16])) - int(rng.integers(0, 3)) * cfg.bus_bytes
    return min(max(value, lo), hi - 1)


def instructions(cfg: SATConfig, seed: int, count: int) -> list[int]:
    rng = np.random.default_rng(seed)
    burst = cfg.max_burst_beats * cfg.bus_bytes
    words, bases = [], []
    for _ in range(count):
        opcode = Opcode(int(rng.choice([o.value for o in ARGS])))
        # some instructions near valid (small fields, aligned addresses), so that bisection finds NONE's edges
        tame = rng.random() < 0.5
        fields = {}
        for name, (lo, hi) in fields_of(opcode).items():
            if not tame:
                fields[name] = random_value(cfg, rng, lo, hi)
            elif name in ("sram_addr", "a_addr", "b_addr", "acc_addr", "idx_addr"):  # buffer words
                fields[name] = int(rng.integers(0, 3)) * max(cfg.sparse_m)
            elif name in ("tap_h_stride", "tap_w_stride"):
                fields[name] = int(rng.integers(0, 3)) * max(cfg.sparse_m)
            elif "addr" in name or "offset" in name or "stride" in name:
                fields[name] = min(int(rng.integers(0, 4)) * cfg.max_burst_beats * cfg.bus_bytes, hi - 1)
            else:
                fields[name] = int(rng.integers(1, min(hi, 5)))
        if tame:
            if opcode is Opcode.FINISH:
                fields["next_addr"] = PROGRAM_ADDR + cfg.bus_bytes
            if opcode is Opcode.VECTOR:  # whole bursts, so that an end can be the address space's end
                fields.update(beats=cfg.max_burst_beats * int(rng.integers(1, 4)), y_offset=int(rng.integers(-2, 3)),
                              z_offset=int(rng.integers(-2, 3)))
            if opcode is Opcode.WEIGHT_UPDATE:
                fields["words"] = max(1, burst // (4 * cfg.rows)) * int(rng.integers(1, 4))
                if rng.random() < 0.5:
                    fields.update(v_offset=0, g_offset=0)
            if "m_log2" in fields:
                fields["m_log2"] = max(cfg.sparse_m).bit_length() - 1
            if opcode in (Opcode.LOAD, Opcode.STORE):
                fields.update(tile_transpose=0, buffer=2 if opcode is Opcode.STORE else int(rng.choice([0, 1, 3])))
                if opcode is Opcode.LOAD:
                    fields.update(bf16=0, relu=0)
        flags = {} if opcode is Opcode.FINISH and (tame or rng.random() < 0.8) else \
            {f: int(rng.integers(2)) for f in ("pop_prev", "pop_next", "push_prev", "push_next")}
        bases.append((opcode, flags, fields))
    # and one whose x is the vector's highest end (y and z below it), one whose w is the update's (v = g = w)
    bases += [(Opcode.VECTOR, {}, dict(x_addr=3 * burst, beats=cfg.max_burst_beats, y_offset=-1, z_offset=-2, func=0)),
              (Opcode.WEIGHT_UPDATE, {}, dict(w_addr=burst, words=max(1, burst // (4 * cfg.rows)), v_offset=0,
                                              g_offset=0))]
    for opcode, flags, fields in bases:
        fields = {name: 0 for name in fields_of(opcode)} | fields
        words.append(encode(opcode, **flags, **fields))
        # each field bisected to where the rule's code changes, and the values either side; addresses in
        # steps of their alignment (else the change found is the alignment's)
        for name, (lo, hi) in fields_of(opcode).items():
            step = {"w_addr": burst, "v_offset": burst, "g_offset": burst, "x_addr": burst}.get(
                name, cfg.bus_bytes if name in ("dram_addr", "dram_stride", "src_addr", "src_stride", "dst_offset",
                                                "next_addr") else 1)

            def at(k):
                return encode(opcode, **flags, **{**fields, name: k * step})
            here = fields[name] // step
            for low, high in ((-(-lo // step), here), (here, (hi - 1) // step)):  # below the value, and above it
                c_low, c_high = rule(cfg, at(low)), rule(cfg, at(high))
                if c_low == c_high:
                    continue
                while high - low > 1:
                    mid = (low + high) // 2
                    if rule(cfg, at(mid)) == c_low:
                        low = mid
                    else:
                        high = mid
                words += [at(k) for k in (low - 1, low, high, high + 1) if lo <= k * step < hi]
    # opcodes nobody has
    words += [int(op) | int(rng.integers(0, 1 << 60)) << 8 for op in range(16) if op not in {o.value for o in Opcode}]
    return words


def simulate(cfg: SATConfig, words: list[int]) -> list[int]:
    dut = InstructionCheck(cfg)
    codes, echoed = [], []

    async def bench(ctx):
        ctx.set(dut.program_addr, PROGRAM_ADDR)
        for t in range(len(words) + CHECK_LATENCY):
            if t < len(words):
                ctx.set(dut.inst, words[t])
            if t >= CHECK_LATENCY:
                codes.append(ctx.get(dut.code))
                echoed.append(ctx.get(dut.inst_out))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert echoed == words, "the instruction comes out as it went in"
    return [ErrorCode(c) for c in codes]


@pytest.mark.parametrize("cfg", [SATConfig.tiny(), SATConfig.vcu1525(), ODD], ids=lambda c: c.name)
def test_pipelined_checks_give_the_rules_code_at_every_boundary(cfg):
    words = instructions(cfg, seed=11, count=100)
    got = simulate(cfg, words)
    want = [rule(cfg, w) for w in words]
    bad = [(hex(w), g.name, e.name) for w, g, e in zip(words, got, want) if g != e]
    assert not bad, f"{len(bad)} of {len(words)} differ, e.g. {bad[:5]}"
    seen = {(w & 0xF, e) for w, e in zip(words, want)}
    for code in (ErrorCode.NONE, ErrorCode.BAD_ARGS, ErrorCode.DRAM_RANGE):
        for op in (Opcode.LOAD, Opcode.STORE, Opcode.SPARSIFY, Opcode.WEIGHT_UPDATE, Opcode.VECTOR):
            assert (op.value, code) in seen, f"no {op.name} with {code.name}: the cases miss a boundary"
    for op in (Opcode.LOAD, Opcode.STORE, Opcode.GEMM, Opcode.SPARSE_GEMM):
        assert (op.value, ErrorCode.SRAM_RANGE) in seen
    assert sum(e is ErrorCode.BAD_OPCODE for e in want) >= 7


@pytest.mark.parametrize("cfg", [SATConfig.tiny(), SATConfig.vcu1525()], ids=lambda c: c.name)
def test_program_checks_are_the_fetch_rule_at_its_boundaries(cfg):
    """``program_checks`` (a cycle ahead of the fetch) against the simulator's START rule: length 0 or past
    imem_depth; not bus aligned, or ending past 2^addr_bits — at the boundaries and past the address bits."""
    from amaranth.hdl import Module, Signal as Sig
    from nmsat.hw.core.fetch import program_checks
    top, size = 1 << cfg.addr_bits, cfg.instruction_bytes
    cases = [(0, 0), (0, 1), (0, cfg.imem_depth), (0, cfg.imem_depth + 1), (0, 1 << 31), (cfg.bus_bytes // 2, 1),
             (top - size, 1), (top - size + cfg.bus_bytes, 1), (top, 1), (top - 2 * size, 2), (1 << 63, 1),
             (top * 2 - size, 1), (top - cfg.imem_depth * size, cfg.imem_depth), (top + cfg.bus_bytes, 1),
             ((1 << 64) - cfg.bus_bytes, 1), (top - size, (1 << 32) - 1)]
    m = Module()
    addr, length = Sig(64), Sig(32)
    len_bad, addr_bad = program_checks(m, cfg, addr, length)
    got = []

    async def bench(ctx):
        for a, n in cases:
            ctx.set(addr, a)
            ctx.set(length, n)
            await ctx.tick()
            got.append((ctx.get(len_bad), ctx.get(addr_bad)))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [(int(not 1 <= n <= cfg.imem_depth), int(a % cfg.bus_bytes != 0 or a + n * size > top)) for a, n in cases]
    assert got == want
