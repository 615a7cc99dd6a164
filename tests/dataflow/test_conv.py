"""Convolutions on the kernel walk (on-chip im2col): FF and BP programs on the simulator against the numerics
rule computed here from plain tensors (bit for bit) and against torch (bf16 tolerance); their activation
traffic against im2col's; bad shapes."""

import dataclasses

import numpy as np
import pytest

from nmsat.dataflow import conv
from nmsat.dataflow.gemm import compile_gemm
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Buffer, Opcode, decode_program, to_bytes
from nmsat.hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits
from nmsat.hw.sparsity import nm_keep
from nmsat.sim import numerics
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()


def bf16(x):
    return bf16_bits_to_f32(f32_to_bf16_bits(np.asarray(x, np.float32)))


def reference(walk, layout, x_bits, pattern, out_shape):
    """The walk's output (bf16 bits ``out_shape``) by the numerics rule: per output pixel and channel block, the
    products in tap-major, channel-inner order summed in fp32 (``mac_sequence``), the blocks added in order."""
    n, c = x_bits.shape[:2]
    blocks = -(-c // layout.cb)
    x = np.zeros((n, blocks * layout.cb, layout.hp, layout.wp), np.uint16)
    x[:, :c, layout.pad:layout.pad + layout.h, layout.pad:layout.pad + layout.w] = x_bits
    out = np.zeros(out_shape, np.uint16)
    if walk.weights is None:
        return out
    w = walk.weights
    if pattern is not None:
        w = np.where(nm_keep(w, *pattern), w, 0)  # groups of m channels inside each tap
    wpad = np.zeros(w.shape[:3] + (blocks * layout.cb,), np.float32)
    wpad[..., :c] = w
    ra, rb = walk.rows, walk.cols
    ys = np.arange(ra.count)[:, None] * ra.istride + np.arange(ra.taps)[None, :] * ra.idil + ra.ioff  # [a, i]
    xs = np.arange(rb.count)[:, None] * rb.istride + np.arange(rb.taps)[None, :] * rb.idil + rb.ioff  # [b, j]
    # gathered input [a, b, i, j, N, C]
    g = x[:, :, ys[:, None, :, None], xs[None, :, None, :]].transpose(2, 3, 4, 5, 0, 1)
    acc = None
    for blk in range(blocks):
        chans = slice(blk * layout.cb, (blk + 1) * layout.cb)
        b_bits = g[..., chans].reshape(ra.count, rb.count, ra.taps * rb.taps, n, layout.cb)
        b_bits = b_bits.transpose(0, 1, 2, 4, 3).reshape(ra.count * rb.count, -1, n)  # [P, taps·cb, N]
        a_bits = f32_to_bf16_bits(wpad[..., chans].reshape(w.shape[0], -1).T)  # [taps·cb, Cout]
        a_bits = np.broadcast_to(a_bits, (b_bits.shape[0],) + a_bits.shape)
        part = numerics.mac_sequence(a_bits, b_bits)  # [P, Cout, N]
        acc = part if acc is None else numerics.add_f32(acc, part)
    vals = f32_to_bf16_bits(acc).reshape(ra.count, rb.count, w.shape[0], n).transpose(3, 2, 0, 1)
    out[:, :, ra.o0::ra.os][:, :, :ra.count, rb.o0::rb.os][:, :, :, :rb.count] = vals
    return out


def run(program):
    memory = program.memory.copy()
    result = CoreModel(TINY).run(memory, program.program_addr, program.length)
    assert result.ok and result.race_free, (result.status, result.error, result.hazards[:3])
    return program.read_output(memory), result


# (batch, cin, cout, size, kernel, stride, padding, dilation, channel block)
SHAPES = [(3, 8, 8, 6, 3, 1, 1, 1, 8), (4, 16, 8, 7, 3, 2, 1, 1, 8), (2, 8, 12, 5, 1, 1, 0, 1, 8),
          (2, 8, 4, 6, 3, 1, 2, 2, 4), (2, 8, 8, 4, 1, 2, 0, 1, 8), (2, 12, 8, 6, 3, 1, 1, 1, 4)]


def _data(shape, seed):
    n, cin, cout, size, kernel = shape[:5]
    rng = np.random.default_rng(seed)
    return (f32_to_bf16_bits(rng.standard_normal((n, cin, size, size)).astype(np.float32)),
            bf16(rng.standard_normal((cout, cin, kernel, kernel))), rng)


@pytest.mark.parametrize("shape,pattern", [(s, None) for s in SHAPES] +
                         [(s, (2, 8)) for s in SHAPES if s[1] % 8 == 0 and s[8] % 8 == 0])  # sparse: whole groups
def test_ff_walk_is_the_rule_bit_for_bit(shape, pattern):
    n, cin, cout, size, kernel, stride, pad, dil, cb = shape
    x, w, _ = _data(shape, sum(shape))
    walk = conv.ff_walk(w, size, size, stride, pad, dil)
    src = conv.ActLayout(n, cin, size, size, pad, cb)
    dst = conv.ActLayout(n, cout, walk.rows.count, walk.cols.count, 1, 8)  # stored with the next layer's border
    y, _ = run(conv.compile_walks(TINY, [walk], src, x, dst, pattern))
    assert np.array_equal(y, reference(walk, src, x, pattern, y.shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_bp_walks_are_the_rule_bit_for_bit(shape):
    n, cin, cout, size, kernel, stride, pad, dil, cb = shape
    _, w, rng = _data(shape, sum(shape) + 1)
    walks = conv.bp_walks(w, size, size, stride, pad, dil)
    ho = walks[0].rows.count if stride == 1 else (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
    dy = f32_to_bf16_bits(rng.standard_normal((n, cout, ho, ho)).astype(np.float32))
    src = conv.ActLayout(n, cout, ho, ho, conv.bp_pad(kernel, stride, pad, dil), cb)
    dst = conv.ActLayout(n, cin, size, size, 0, cb)
    dx, _ = run(conv.compile_walks(TINY, walks, src, dy, dst))
    expected = np.zeros_like(dx)
    for walk in walks:  # each phase writes its own pixels
        part = reference(walk, src, dy, None, dx.shape)
        ra, rb = walk.rows, walk.cols
        expected[:, :, ra.o0::ra.os, rb.o0::rb.os] = part[:, :, ra.o0::ra.os, rb.o0::rb.os]
    assert np.array_equal(dx, expected)
    assert len(walks) == min(stride, size) ** 2


@pytest.mark.parametrize("shape", SHAPES[:5])
def test_walks_compute_torch_conv2d_and_its_input_gradient(shape):
    torch = pytest.importorskip("torch")
    n, cin, cout, size, kernel, stride, pad, dil, cb = shape
    x, w, rng = _data(shape, 7)
    walk = conv.ff_walk(w, size, size, stride, pad, dil)
    ho = walk.rows.count
    y, _ = run(conv.compile_walks(TINY, [walk], conv.ActLayout(n, cin, size, size, pad, cb), x,
                                  conv.ActLayout(n, cout, ho, ho, 0, cb)))
    xt = torch.tensor(bf16_bits_to_f32(x), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, torch.tensor(w), stride=stride, padding=pad, dilation=dil)
    scale = float(yt.abs().max())
    assert np.abs(bf16_bits_to_f32(y) - yt.detach().numpy()).max() <= 2 ** -7 * scale
    dy = f32_to_bf16_bits(rng.standard_normal((n, cout, ho, ho)).astype(np.float32))
    yt.backward(torch.tensor(bf16_bits_to_f32(dy)))
    dx, _ = run(conv.compile_walks(TINY, conv.bp_walks(w, size, size, stride, pad, dil),
                                   conv.ActLayout(n, cout, ho, ho, conv.bp_pad(kernel, stride, pad, dil), cb), dy,
                                   conv.ActLayout(n, cin, size, size, 0, cb)))
    ref = xt.grad.numpy()
    assert np.abs(bf16_bits_to_f32(dx) - ref).max() <= 2 ** -7 * float(np.abs(ref).max())


def _b_load_bytes(words):
    f = decode_program(to_bytes(words))
    b = (f["opcode"] == Opcode.LOAD.value) & (f["buffer"] == Buffer.B.value)
    return int((f["rows"][b] * TINY.b_word_bytes).sum())


def test_the_walk_reads_activations_once_per_tile_not_once_per_tap():
    cfg = dataclasses.replace(TINY, a_depth=512, b_depth=1024, acc_depth=256)  # room for 4 × 4-pixel tiles
    n, cin, cout, size = 4, 8, 8, 8
    x, w, _ = _data((n, cin, cout, size, 3), 3)
    walk = conv.ff_walk(w, size, size, 1, 1, 1)
    prog = conv.compile_walks(cfg, [walk], conv.ActLayout(n, cin, size, size, 1, 8), x,
                              conv.ActLayout(n, cout, size, size, 0, 8))
    walk_bytes = _b_load_bytes(prog.words)
    # the same convolution as a GEMM on im2col columns: K = 9·cin rows of B, P = n·size² columns
    im2col = compile_gemm(cfg, np.zeros((cout, 9 * cin), np.float32), np.zeros((9 * cin, n * size * size), np.float32))
    gemm_bytes = sum(_b_load_bytes(words) for words in im2col.run_words)
    activation_bytes = n * cin * size * size * 2
    assert walk_bytes < gemm_bytes / 3
    assert walk_bytes < 3 * activation_bytes  # the windows' halos, not nine copies


def test_bad_walks_are_clear_errors():
    w = bf16(np.ones((8, 8, 9, 9)))
    with pytest.raises(ValueError, match="at most 7 taps"):
        conv.plan_walk(TINY, conv.ff_walk(w, 12, 12, 1, 0, 1), conv.ActLayout(1, 8, 12, 12, 0, 8),
                       conv.ActLayout(1, 8, 4, 4, 0, 8))
    w = bf16(np.ones((8, 12, 3, 3)))
    walk = conv.ff_walk(w, 6, 6, 1, 1, 1)
    with pytest.raises(ValueError, match="whole groups of m"):
        conv.plan_walk(TINY, walk, conv.ActLayout(1, 12, 6, 6, 1, 4), conv.ActLayout(1, 8, 6, 6, 0, 8), (2, 8))
    with pytest.raises(ValueError, match="multiple of rows"):
        conv.plan_walk(TINY, walk, conv.ActLayout(1, 12, 6, 6, 1, 4), conv.ActLayout(1, 8, 6, 6, 0, 6))
    with pytest.raises(ValueError, match="outside the input's border"):
        conv.plan_walk(TINY, walk, conv.ActLayout(1, 12, 6, 6, 0, 4), conv.ActLayout(1, 8, 6, 6, 0, 8))
    with pytest.raises(ValueError, match="smaller channel block"):
        conv.plan_walk(TINY, walk, conv.ActLayout(1, 12, 6, 6, 1, 16), conv.ActLayout(1, 8, 6, 6, 0, 8))


# (batch, cin, cout, size, kernel, stride, padding)
WU_SHAPES = [(4, 8, 8, 6, 3, 1, 1), (3, 8, 4, 7, 3, 2, 1), (2, 4, 8, 5, 1, 1, 0), (4, 8, 12, 8, 3, 1, 1),
             (5, 4, 4, 6, 1, 2, 0)]


@pytest.mark.parametrize("shape", WU_SHAPES)
def test_wu_walk_is_the_weight_gradient(shape):
    """dW from transposed dY and X tiles: torch's conv2d weight gradient to fp32 accuracy (bf16 operands are
    exact in fp32 products; the sums' order differs)."""
    torch = pytest.importorskip("torch")
    n, cin, cout, size, kernel, stride, pad = shape
    rng = np.random.default_rng(sum(shape))
    x = f32_to_bf16_bits(rng.standard_normal((n, cin, size, size)).astype(np.float32))
    ho = (size + 2 * pad - kernel) // stride + 1
    dy = f32_to_bf16_bits(rng.standard_normal((n, cout, ho, ho)).astype(np.float32))
    prog = conv.compile_wu(TINY, dy, x, kernel, stride, pad)
    memory = prog.memory.copy()
    result = CoreModel(TINY).run_sequence(memory, prog.runs)
    assert result.ok and result.race_free
    w = torch.zeros(cout, cin, kernel, kernel, requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(bf16_bits_to_f32(x)), w, stride=stride, padding=pad).backward(
        torch.tensor(bf16_bits_to_f32(dy)))
    ref = w.grad.numpy().transpose(0, 2, 3, 1).reshape(cout, -1)  # BDWP's K order
    assert np.abs(prog.read_grad(memory) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_wu_walks_read_each_activation_a_few_times_not_once_per_tap():
    cfg = dataclasses.replace(TINY, a_depth=512, b_depth=1024, acc_depth=256)  # every tap's tiles at once
    n, cin, cout, size = 4, 8, 8, 8
    rng = np.random.default_rng(1)
    x = f32_to_bf16_bits(rng.standard_normal((n, cin, size, size)).astype(np.float32))
    dy = f32_to_bf16_bits(rng.standard_normal((n, cout, size, size)).astype(np.float32))
    prog = conv.compile_wu(cfg, dy, x, 3, 1, 1)
    assert prog.plan.tb == 9
    f = decode_program(to_bytes([w for words in prog.run_words for w in words]))
    b = (f["opcode"] == Opcode.LOAD.value) & (f["buffer"] == Buffer.B.value)
    assert (f["tile_transpose"][b] == 1).all()
    x_bytes_read = int((f["rows"][b] * TINY.rows * TINY.b_word_bytes).sum())
    assert x_bytes_read < 9 * x.nbytes / 2  # windows with halos, against im2col's nine copies


def test_bad_wu_walks_are_clear_errors():
    x = np.zeros((2, 6, 5, 5), np.uint16)
    with pytest.raises(ValueError, match="whole tiles"):
        conv.compile_wu(TINY, np.zeros((2, 4, 5, 5), np.uint16), x, 3, 1, 1)
    with pytest.raises(ValueError, match="rows must equal cols"):
        conv.plan_wu(dataclasses.replace(TINY, cols=8, b_depth=512), 8, 8, 3, 1, 1,
                     conv.ActLayout(2, 8, 5, 5, 0, 8), conv.ActLayout(2, 8, 5, 5, 1, 8))


@pytest.mark.parametrize("shape", [(3, 8, 8, 5, 1), (4, 8, 12, 6, 2)])
def test_a_walk_on_the_sparsifiers_records_is_the_walk_on_host_packed_forms(shape):
    """Pre-generation feeding a walk: SPARSIFY of the master weights then the FF walk reading its records, one
    program, race-free; the output is bit-identical to the walk on forms packed by the host."""
    n, cin, cout, size, stride = shape
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    x = f32_to_bf16_bits(rng.standard_normal((n, cin, size, size)).astype(np.float32))
    pregen = conv.compile_sparsified_walk(TINY, w, x, 2, 8, stride=stride, padding=1)
    y, result = run(pregen)
    assert result.busy["sparsify"] > 0
    host = conv.compile_walks(TINY, [conv.ff_walk(w, size, size, stride, 1, 1)], conv.ActLayout(n, cin, size, size, 1, cin),
                              x, conv.ActLayout(n, cout, pregen.dst.h, pregen.dst.w, 0, TINY.rows), (2, 8))
    assert np.array_equal(y, run(host)[0])
    walk = conv.ff_walk(w, size, size, stride, 1, 1)
    plan = conv.plan_walk(TINY, walk, conv.ActLayout(n, cin, size, size, 1, 8), conv.ActLayout(n, cout, 3, 3, 0, 4))
    blocks = conv.ActLayout(n, 16, size, size, 1, 8)
    with pytest.raises(ValueError, match="one channel block"):
        conv.walk_blocks(TINY, dataclasses.replace(plan, src=blocks), a_addr=0, src_addr=0, dst_addr=0, a_tile_stride=64)


#: (batch, cin, cout, size, kernel, stride, padding, pattern): a GEMM per tap (2 slots a tap), one walk GEMM
#: (4 slots), phases of stride 2, a 1×1 stride-2 conv (a phase with no tap), several channel blocks
BP_RECORD_SHAPES = [(3, 8, 8, 5, 3, 1, 1, (2, 8)), (2, 8, 8, 4, 3, 1, 1, (4, 8)), (3, 8, 16, 6, 3, 2, 1, (2, 8)),
                    (2, 8, 8, 4, 1, 2, 0, (2, 8)), (2, 8, 16, 4, 3, 1, 1, (4, 8)), (3, 4, 8, 5, 3, 1, 1, (1, 4))]


@pytest.mark.parametrize("shape", BP_RECORD_SHAPES)
def test_bp_walks_on_the_sparsifiers_records_are_the_walks_on_host_packed_forms(shape):
    """Pre-generation feeding BP: SPARSIFY of the master weights into the BP form (slots along Cout per K-tile),
    then every phase's BP walk loading its A tap by tap from the records of the flipped taps: race-free, and
    bit-identical to the walks on forms the host packs (weights bf16-valued, so both select on the same
    magnitudes)."""
    n, cin, cout, size, k, stride, pad, pattern = shape
    rng = np.random.default_rng(sum(shape[:7]))
    w = bf16(rng.standard_normal((cout, cin, k, k)))
    ho = (size + 2 * pad - k) // stride + 1
    dy = f32_to_bf16_bits(rng.standard_normal((n, cout, ho, ho)).astype(np.float32))
    pregen = conv.compile_sparsified_bp_walk(TINY, w, dy, *pattern, size, stride=stride, padding=pad)
    dx, result = run(pregen)
    assert result.busy["sparsify"] > 0
    host = conv.compile_walks(TINY, conv.bp_walks(w, size, size, stride, pad, 1), pregen.src, dy, pregen.dst, pattern)
    expected = run(host)[0]
    assert np.array_equal(dx, expected) and np.count_nonzero(expected)


def test_bp_walks_on_the_records_refuse_what_they_cannot_read():
    w = np.ones((8, 6, 3, 3), np.float32)
    with pytest.raises(ValueError, match="whole tiles"):
        conv.compile_sparsified_bp_walk(TINY, w, np.zeros((2, 8, 4, 4), np.uint16), 2, 8, 4, stride=1, padding=1)
    with pytest.raises(ValueError, match="dY is"):
        conv.compile_sparsified_bp_walk(TINY, np.ones((8, 8, 3, 3), np.float32), np.zeros((2, 8, 3, 3), np.uint16),
                                        2, 8, 4, stride=1, padding=1)
