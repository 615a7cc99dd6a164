"""GEMMs chained in one program (``nmsat.dataflow.chain``): the same bytes as separate programs, race-free.

A two-layer ReLU MLP's forward and backward (4 GEMMs, a relay and a
RELU_GRAD between them) as one program on the simulator must leave H, Y, dH,
G and dX bit for bit as the GEMMs and the VECTOR compiled and run one by one,
with no race; a chain whose vector instruction does not wait for the STOREs
before it (or whose GEMM does not wait for the vector unit) is racy, and the
simulator says so.  Through the RTL: ``tests/equiv``.
"""

import numpy as np
import pytest

from nmsat.dataflow.chain import ChainGemm, ChainVector, compile_relu_mlp, emit_chain
from nmsat.dataflow.gemm import compile_gemm, plan_gemm, read_c
from nmsat.dataflow.vector import compile_vector, read_array
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Opcode, VectorFunc, decode, encode, with_flags
from nmsat.hw.numerics import f32_to_bf16_bits
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()


def operands(shape, seed):
    m1, k1, m2, n = shape
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in ((m1, k1), (m2, m1), (k1, n), (m2, n))]


def one_by_one(cfg, w1, w2, x, dy):
    """The same arithmetic as five separate programs, each result read back and fed to the next."""
    def gemm(a_bits, b_bits, **kw):
        prog = compile_gemm(cfg, a_bits, b_bits, bf16_bits=True, **kw)
        memory = prog.memory.copy()
        assert CoreModel(cfg).run_sequence(memory, prog.runs).ok
        return read_c(prog, memory)
    bf = f32_to_bf16_bits
    h = bf(gemm(bf(w1), bf(x), out_bf16=True, relu=True))
    y = gemm(bf(w2), h)
    dh = bf(gemm(bf(w2.T.copy()), bf(dy), out_bf16=True))
    vp = compile_vector(cfg, VectorFunc.RELU_GRAD, dh, h)
    memory = vp.memory.copy()
    assert CoreModel(cfg).run(memory, vp.program_addr, vp.length).ok
    g = read_array(vp, memory).reshape(dh.shape)
    dx = gemm(bf(w1.T.copy()), g)
    return dict(h=h, y=y, dh=dh, g=g, dx=dx)


@pytest.mark.parametrize("cfg,shape", [(TINY, (10, 13, 7, 9)), (TINY, (4, 8, 4, 4)), (TINY, (9, 20, 6, 12)),
                                       (SATConfig.vcu1525(), (10, 13, 7, 9)), (SATConfig.vcu1525(), (33, 70, 17, 90))],
                         ids=["tiny-a", "tiny-b", "tiny-c", "vcu1525-a", "vcu1525-b"])
def test_relu_mlp_chain_is_the_gemms_one_by_one(cfg, shape):
    w1, w2, x, dy = operands(shape, seed=sum(shape))
    prog = compile_relu_mlp(cfg, w1, w2, x, dy)
    memory = prog.memory.copy()
    result = CoreModel(cfg).run(memory, prog.program_addr, prog.length)
    assert result.ok and result.race_free, result.hazards[:3]
    expected = one_by_one(cfg, w1, w2, x, dy)
    for name in ("h", "dh", "g"):
        assert np.array_equal(prog.read_b_layout(memory, name), expected[name]), name
    for name in ("y", "dx"):
        assert np.array_equal(prog.read_tiles(memory, name).view(np.uint32), expected[name].view(np.uint32)), name
    h = np.maximum(w1 @ x, 0)  # and it is the MLP's arithmetic, to bf16 accuracy
    for got, want in ((prog.read_tiles(memory, "y"), w2 @ h), (prog.read_tiles(memory, "dx"), w1.T @ ((w2.T @ dy) * (h > 0)))):
        assert np.linalg.norm(got - want) <= 0.02 * np.linalg.norm(want)


@pytest.mark.parametrize("flag", ["pop_prev", "push_next", "b_wait"])
def test_a_chain_without_its_tokens_races(flag):
    # a reduction of 21: with 13 the GEMMs' 13-cycle tail happens to delay the LOAD behind the relay past it
    w1, w2, x, dy = operands((10, 21, 7, 9), seed=1)
    prog = compile_relu_mlp(TINY, w1, w2, x, dy)
    words = list(prog.words)
    vectors = [i for i, w in enumerate(words) if decode(w).opcode == Opcode.VECTOR.value]
    if flag == "b_wait":  # the GEMM after the relay does not wait for it
        at = next(i for i, w in enumerate(words) if decode(w).opcode == Opcode.LOAD.value and decode(w).pop_prev)
        words[at] = with_flags(words[at], pop_prev=0)
        words[vectors[0]] = with_flags(words[vectors[0]], push_next=0)
    elif flag == "pop_prev":  # the relay does not wait for the STOREs: a token left over for the RELU_GRAD
        words[vectors[0]] = with_flags(words[vectors[0]], pop_prev=0)
    else:  # no wait on either side of the relay, and nothing told to the LOADs
        words[vectors[0]] = with_flags(words[vectors[0]], pop_prev=0, push_next=0)
    memory = prog.memory.copy()
    memory[prog.program_addr:prog.program_addr + 16 * len(words)] = np.frombuffer(
        b"".join(w.to_bytes(16, "little") for w in words), dtype=np.uint8)
    result = CoreModel(TINY).run(memory, prog.program_addr, len(words))
    assert not result.race_free or not result.ok


def test_chain_rules_are_clear_errors():
    plan = plan_gemm(TINY, 4, 4, 4)
    gemm = ChainGemm(plan, 0x1000, 0x2000, 0x3000)
    relay = ChainVector((encode(Opcode.VECTOR, x_addr=0x4000, beats=1, func=0, y_offset=0, z_offset=0),))
    with pytest.raises(ValueError, match="starts and ends with a GEMM"):
        emit_chain(TINY, [relay, gemm])
    with pytest.raises(ValueError, match="one pattern"):
        emit_chain(TINY, [gemm, relay, ChainGemm(plan_gemm(TINY, 4, 4, 8, pattern=(2, 4)), 0x1000, 0x2000, 0x3000)])
    with pytest.raises(ValueError, match="one non-empty ChainVector"):
        emit_chain(TINY, [gemm, relay, relay, gemm])
    with pytest.raises(ValueError, match="do not chain"):
        compile_relu_mlp(TINY, *operands((4, 8, 4, 4), 0)[:3], np.zeros((5, 4), np.float32))
