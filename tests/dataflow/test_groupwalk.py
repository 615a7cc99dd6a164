"""Group walks (``nmsat.dataflow.groupwalk``): a grouped convolution a tile of channels at a time on the sparse
mode's row select — FF bit for bit against the rule computed here from the compressed tile weights, FF and BP
against torch's grouped ``conv2d`` and its input gradient, the activations read once per tile, the timer's
data-less programs ≡ the compiled ones, bad input."""

import numpy as np
import pytest

from nmsat.dataflow import groupwalk
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Buffer, Opcode, decode_program, to_bytes
from nmsat.hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits
from nmsat.hw.sparsity import compress
from nmsat.sim import numerics
from nmsat.sim.core import CoreModel

TINY = SATConfig.tiny()


def run(cfg, program):
    memory = program.memory.copy()
    result = CoreModel(cfg).run_sequence(memory, list(program.runs))
    assert result.ok and result.race_free, (result.status, result.error, result.hazards[:3])
    return program.read_output(memory), result


def data(shape, seed):
    n, c, g, size = shape[:4]
    rng = np.random.default_rng(seed)
    x = f32_to_bf16_bits(rng.standard_normal((n, c, size, size)).astype(np.float32))
    w = bf16_bits_to_f32(f32_to_bf16_bits(rng.standard_normal((c, g, 3, 3)).astype(np.float32)))
    w[rng.random(w.shape) < 0.1] = 0.0  # zeros among the group's own weights
    return x, w, rng


def reference(cfg, weight, x_bits, stride, padding):
    """The rule: per tile, the tile weights in walk order (tap-major, channels inner) compressed G:m; each PE
    row's slot j multiplies the input channel its index names at slot j's tap; the slots summed in order
    (``mac_sequence_per_row``), stored bf16."""
    n, c, h, w = x_bits.shape
    g = weight.shape[1]
    pattern = groupwalk.group_walk_pattern(cfg, g)
    R = cfg.rows
    tiles = -(-c // R)
    xp = np.zeros((n, tiles * R, h + 2 * padding, w + 2 * padding), np.uint16)
    xp[:, :c, padding:padding + h, padding:padding + w] = x_bits
    ho, wo = (h + 2 * padding - 3) // stride + 1, (w + 2 * padding - 3) // stride + 1
    out = np.zeros((n, tiles * R, ho, wo), np.uint16)
    for t in range(tiles):
        wt = groupwalk.tile_weight(cfg, weight, t).transpose(0, 2, 3, 1).reshape(R, 9 * R)
        vals, idx = compress(wt, *pattern)  # [R, slots]
        pos = (np.arange(vals.shape[1]) // pattern[0])[None, :] * pattern[1] + idx  # position in [taps][R]
        tap, ci = pos // R, pos % R
        ki, kj = tap // 3, tap % 3
        for a in range(ho):
            for b in range(wo):
                bw = xp[:, t * R + ci, a * stride + ki, b * stride + kj]  # [N, R, slots]
                acc = numerics.mac_sequence_per_row(vals.T, bw.transpose(2, 1, 0))  # [R, N]
                out[:, t * R:(t + 1) * R, a, b] = f32_to_bf16_bits(acc).T
    return out[:, :c]


# (batch, channels, G, size, stride): a last tile not full (6 channels on 4 rows), two batch groups the second
# short, stride 2
SHAPES = [(3, 8, 1, 5, 1), (6, 6, 2, 4, 1), (2, 8, 4, 6, 2), (5, 12, 1, 5, 2)]


@pytest.mark.parametrize("shape", SHAPES)
def test_ff_group_walks_are_the_rule_bit_for_bit(shape):
    n, c, g, size, stride = shape
    x, w, _ = data(shape, sum(shape))
    y, _ = run(TINY, groupwalk.compile_group_walks(TINY, w, x, stride=stride, padding=1))
    assert np.array_equal(y, reference(TINY, w, x, stride, 1))


@pytest.mark.parametrize("cfg,shape", [(TINY, s) for s in SHAPES] + [(SATConfig.vcu1525(), (4, 64, 4, 6, 2))])
def test_group_walks_compute_torchs_grouped_conv2d_and_its_input_gradient(cfg, shape):
    torch = pytest.importorskip("torch")
    n, c, g, size, stride = shape
    x, w, rng = data(shape, 7 + sum(shape))
    xt = torch.tensor(bf16_bits_to_f32(x), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, torch.tensor(w), stride=stride, padding=1, groups=c // g)
    y, _ = run(cfg, groupwalk.compile_group_walks(cfg, w, x, stride=stride, padding=1))
    ref = yt.detach().numpy()
    assert np.abs(bf16_bits_to_f32(y) - ref).max() <= 2 ** -7 * np.abs(ref).max()
    dy = f32_to_bf16_bits(rng.standard_normal(ref.shape).astype(np.float32))
    yt.backward(torch.tensor(bf16_bits_to_f32(dy)))
    dx, _ = run(cfg, groupwalk.compile_group_walks(cfg, w, dy, stride=stride, padding=1, direction="BP", size=size))
    grad = xt.grad.numpy()
    assert np.abs(bf16_bits_to_f32(dx) - grad).max() <= 2 ** -7 * np.abs(grad).max()


def test_each_tile_reads_only_its_own_channels_once():
    """A depthwise layer's B loads: every tile's window of its own channel block, not every channel per tile."""
    x, w, _ = data((4, 16, 1, 6), 1)
    prog = groupwalk.compile_group_walks(TINY, w, x, padding=1)
    f = decode_program(to_bytes(prog.run_words[0] if len(prog.run_words) == 1 else sum(prog.run_words, [])))
    b = (f["opcode"] == Opcode.LOAD.value) & (f["buffer"] == Buffer.B.value)
    loaded = int(f["rows"][b].sum()) * TINY.b_word_bytes
    assert prog.src.nbytes(TINY) <= loaded < 2 * prog.src.nbytes(TINY)  # halos only


def test_the_timers_programs_take_the_compiled_programs_cycles():
    from nmsat.dataflow.models import ConvGeometry, GemmShape
    from nmsat.sw.iteration import Timer

    x, w, _ = data((6, 8, 2, 5), 2)
    for direction, data_in in (("FF", x), ("BP", x[:, :, :3, :3])):
        prog = groupwalk.compile_group_walks(TINY, w, data_in, stride=2, padding=1, direction=direction, size=5)
        _, compiled = run(TINY, prog)
        geo = ConvGeometry(6, 8, 8, 5, 3, 2, 1, 4, False)
        g = GemmShape("g", direction, 2, 6 * 9, 18, count=4)
        timed = Timer(TINY, CoreModel(TINY)).group_walk(geo, direction, g)
        assert timed == compiled.cycles


def test_bad_group_walks_are_clear_errors():
    x, w, _ = data((2, 8, 1, 4), 3)
    with pytest.raises(ValueError, match="G = 3"):
        groupwalk.compile_group_walks(TINY, np.zeros((6, 3, 3, 3), np.float32), x[:, :6], padding=1)
    with pytest.raises(ValueError, match="is not"):
        groupwalk.compile_group_walks(TINY, w, x[:, :, :3], padding=1, direction="BP", size=4)
    with pytest.raises(ValueError, match="direction"):
        groupwalk.plan_group_walks(TINY, 2, 8, 1, 4, 3, direction="WU")
    with pytest.raises(ValueError, match="input's size"):
        groupwalk.compile_group_walks(TINY, w, x, direction="BP")
    assert not groupwalk.group_walkable(TINY, 8, 8, 3) and groupwalk.group_walkable(TINY, 8, 4, 3)
    assert groupwalk.group_walk_pattern(SATConfig.vcu1525(), 4) == (4, 8)


@pytest.mark.parametrize("cfg,shape", [(TINY, (3, 8, 1, 5, 1)), (TINY, (6, 6, 2, 4, 2)), (TINY, (5, 8, 4, 6, 1)),
                                       (SATConfig.vcu1525(), (40, 64, 4, 8, 2))])
def test_group_wu_walks_are_torchs_weight_gradient(cfg, shape):
    """dW from the diagonal tiles' WU walks: bf16 products are exact and summed in fp32, so within fp32
    rounding of torch's (a short batch group, a partial last tile and stride 2 among them)."""
    torch = pytest.importorskip("torch")
    n, c, g, size, stride = shape
    x, w, rng = data(shape, 11 + sum(shape))
    wt = torch.tensor(w, requires_grad=True)
    yt = torch.nn.functional.conv2d(torch.tensor(bf16_bits_to_f32(x)), wt, stride=stride, padding=1, groups=c // g)
    dy = f32_to_bf16_bits(rng.standard_normal(yt.shape).astype(np.float32))
    yt.backward(torch.tensor(bf16_bits_to_f32(dy)))
    prog = groupwalk.compile_group_wu(cfg, dy, x, g, 3, stride=stride, padding=1)
    memory = prog.memory.copy()
    result = CoreModel(cfg).run_sequence(memory, list(prog.runs))
    assert result.ok and result.race_free
    grad = prog.read_grad(memory)
    ref = wt.grad.numpy()
    assert grad.shape == (c, g, 3, 3) and np.abs(grad - ref).max() <= 1e-5 * np.abs(ref).max()
    timed = CoreModel(cfg).time_programs(prog.run_words).cycles
    assert timed == result.cycles
    with pytest.raises(ValueError, match="is not"):
        groupwalk.compile_group_wu(cfg, dy[:, :, :1], x, g, 3, stride=stride, padding=1)
