"""The configuration object and the instruction encoding."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, strategies as st

from nmsat.hw import isa
from nmsat.hw.config import SATConfig


def test_presets_and_derived_values():
    tiny, card = SATConfig.tiny(), SATConfig.vcu1525()
    assert (tiny.rows, tiny.cols) == (4, 4) and (card.rows, card.cols) == (32, 32)
    assert tiny.a_word_bytes == 8 and tiny.acc_word_bytes == 16 and card.acc_word_bytes == 128
    assert SATConfig.preset("tiny") == tiny
    with pytest.raises(ValueError, match="unknown preset 'big'"):
        SATConfig.preset("big")


def test_json_round_trip_and_hash():
    card = SATConfig.vcu1525()
    assert SATConfig.from_json(card.to_json()) == card
    assert card.hash32 == SATConfig.vcu1525().hash32 != SATConfig.tiny().hash32
    # memory-model fields and the name are not hardware: same core, same ID
    assert dataclasses.replace(card, mem_read_latency=7, name="x").hash32 == card.hash32
    assert dataclasses.replace(card, acc_depth=1024).hash32 != card.hash32


def test_hash_changes_with_every_hardware_field():
    """The ID register tells builds apart: changing any hardware field (one at a time) changes hash32."""
    base = SATConfig.tiny()
    changes = dict(rows=8, cols=8, a_depth=512, b_depth=512, acc_depth=128, bus_bytes=4, addr_bits=33,
                   max_burst_beats=8, queue_depth=5, token_limit=14, sparse_m=(8,), clock_mhz=200.0, imem_depth=2048)
    hardware = [f.name for f in dataclasses.fields(SATConfig) if f.name not in SATConfig.NOT_HARDWARE]
    assert set(hardware) - set(changes) <= {"operand_format", "accumulator_format"}  # one choice each today
    hashes = {dataclasses.replace(base, **{name: value}).hash32 for name, value in changes.items()}
    assert len(hashes) == len(changes) and base.hash32 not in hashes


@pytest.mark.parametrize("change,message", [
    (dict(rows=0), "array must be at least 1x1"),
    (dict(bus_bytes=12), "bus_bytes must be a power of two"),
    (dict(bus_bytes=16, rows=4), "a_word_bytes \\(8\\) must be a multiple of bus_bytes \\(16\\)"),
    (dict(operand_format="fp8"), "operand_format must be one of"),
    (dict(max_burst_beats=3), "max_burst_beats must be a power of two"),
    (dict(sparse_m=(3,)), "sparse_m must be a tuple"),
    (dict(a_depth=1 << 17), "a_depth must be in 1..65536"),
    (dict(acc_depth=3), "acc_depth \\(3\\) must hold at least one output tile of rows \\(4\\) words"),
])
def test_invalid_configs_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SATConfig.tiny(), **change)


mem_fields = st.fixed_dictionaries(dict(
    buffer=st.sampled_from(list(isa.Buffer)), sram_addr=st.integers(0, 2**16 - 1), rows=st.integers(0, 2**16 - 1),
    dram_addr=st.integers(0, 2**40 - 1), dram_stride=st.integers(0, 2**32 - 1)))
gemm_fields = st.fixed_dictionaries(dict(
    a_addr=st.integers(0, 2**16 - 1), b_addr=st.integers(0, 2**16 - 1), acc_addr=st.integers(0, 2**16 - 1),
    k=st.integers(0, 2**16 - 1), accumulate=st.integers(0, 1)))
deps = st.fixed_dictionaries({k: st.integers(0, 1) for k in ("pop_prev", "pop_next", "push_prev", "push_next")})


@given(op=st.sampled_from([isa.Opcode.LOAD, isa.Opcode.STORE]), args=mem_fields, flags=deps)
def test_mem_instruction_round_trip_and_matches_amaranth_layout(op, args, flags):
    word = isa.encode(op, **flags, **args)
    back = isa.decode(word)
    assert back.opcode == op.value and back.buffer == args["buffer"].value
    for k in ("sram_addr", "rows", "dram_addr", "dram_stride"):
        assert getattr(back, k) == args[k]
    for k, v in flags.items():
        assert getattr(back, k) == v
    # the gateware's view of the same bits: the Amaranth layout's own constant
    const = isa.Instruction.const({"opcode": op, "deps": flags, "args": {"mem": args}})
    assert const.as_value().value == word


@given(args=gemm_fields, flags=deps)
def test_gemm_instruction_round_trip_and_matches_amaranth_layout(args, flags):
    word = isa.encode(isa.Opcode.GEMM, **flags, **args)
    back = isa.decode(word)
    assert all(getattr(back, k) == v for k, v in args.items())
    const = isa.Instruction.const({"opcode": isa.Opcode.GEMM, "deps": flags, "args": {"gemm": args}})
    assert const.as_value().value == word


def test_encode_rejects_bad_fields():
    with pytest.raises(ValueError, match="does not fit in 16 bits"):
        isa.encode(isa.Opcode.GEMM, k=1 << 16)
    with pytest.raises(ValueError, match="unknown instruction field 'kk'"):
        isa.encode(isa.Opcode.GEMM, kk=1)
    with pytest.raises(ValueError, match="not a multiple of 16 bytes"):
        isa.decode_program(b"\0" * 17)


def test_vectorised_decode_matches_amaranth_from_bits():
    """Random 128-bit words decoded by numpy (the simulator) and by Amaranth's layout (the gateware's view)."""
    rng = np.random.default_rng(0)
    words = [int.from_bytes(rng.bytes(16), "little") for _ in range(50)]
    # opcode and buffer drawn from their enums (Amaranth refuses to view other values as the enum)
    words = [(w & ~0x3FF) | int(rng.integers(1, 5)) | int(rng.integers(0, 3)) << 8 for w in words]
    fields = isa.decode_program(isa.to_bytes(words))
    layout = isa.Instruction.as_shape()
    for i, w in enumerate(words):
        c = layout.from_bits(w)
        assert int(fields["opcode"][i]) == c.opcode.value and int(fields["buffer"][i]) == c.args.mem.buffer.value
        for k in ("pop_prev", "pop_next", "push_prev", "push_next"):
            assert int(fields[k][i]) == getattr(c.deps, k)
        for k in ("sram_addr", "rows", "dram_addr", "dram_stride"):
            assert int(fields[k][i]) == getattr(c.args.mem, k)
        for k in ("a_addr", "b_addr", "acc_addr", "k", "accumulate"):
            assert int(fields[k][i]) == getattr(c.args.gemm, k)


def test_with_flags_sets_and_clears_token_flags_only():
    from nmsat.hw.isa import Buffer, Opcode, decode, encode, with_flags
    word = encode(Opcode.LOAD, buffer=Buffer.B, rows=3, dram_addr=0x1000, dram_stride=8, pop_next=1)
    flagged = with_flags(word, pop_prev=1, push_next=1, pop_next=0)
    d, e = decode(word), decode(flagged)
    assert (e.pop_prev, e.pop_next, e.push_prev, e.push_next) == (1, 0, 0, 1)
    assert (e.buffer, e.rows, e.dram_addr, e.dram_stride) == (d.buffer, d.rows, d.dram_addr, d.dram_stride)
    assert with_flags(flagged, pop_prev=0, push_next=0, pop_next=1) == word
    with pytest.raises(ValueError, match="token flag"):
        with_flags(word, rows=1)
    with pytest.raises(ValueError, match="token flag"):
        with_flags(word, pop_prev=2)
