"""The RTL against the simulator: same status, error, error PC, cycle count and memory bytes.

Two benches: Amaranth's own simulator with the config's memory model (a few
programs: it is slow), and the Verilog under Verilator with cocotb,
cocotbext-axi's ``AxiRam`` and ``AxiLiteMaster`` (many programs in one
simulator start).  Programs: the compiler's GEMMs on random and conv-layer
shapes, serial and pipelined, random race-free programs with one fault each
(``random_programs``: every error code, strided transfers, memory past the
end), and hand-made runs that do work before an error.  Every run compares
status, error code, error PC, cycles and all of memory, errors included.
"""

import dataclasses
import shutil

import numpy as np
import pytest
from random_programs import VARIANTS, random_cases

from nmsat.dataflow.gemm import compile_gemm, compile_sparse_gemm, link_runs
from nmsat.dataflow.layers import conv2d_gemms
from nmsat.dataflow.sparsify import compile_sparsified_gemm, compile_sparsify, compile_weight_update
from nmsat.dataflow import conv
from nmsat.dataflow.chain import compile_relu_mlp
from nmsat.dataflow.groupconv import compile_packed_groups
from nmsat.dataflow.groupwalk import compile_group_walks, compile_group_wu
from nmsat.dataflow.step import compile_linear_step
from nmsat.dataflow.vector import compile_vector
from nmsat.hw import timing
from nmsat.hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits
from nmsat.hw.config import SATConfig
from nmsat.hw.isa import Buffer, Csr, ErrorCode, Opcode, Status, VectorFunc, encode, to_bytes
from nmsat.sim.core import CoreModel

from nmsat.sw.driver import Device
from nmsat.sw.transports.amaranth import AmaranthTransport

TINY = SATConfig.tiny()


def run_core_amaranth(cfg, memory, program_addr, program_len, *, serial=False, max_cycles=200_000, registers=None):
    """The gateware in Amaranth's simulator through the driver, on a device memory of the image's size (beats
    past it get DECERR): the outcome with the memory it leaves."""
    device = Device(cfg, AmaranthTransport(cfg, memory_size=memory.size))
    return device.run_image(memory, [(program_addr, program_len)], serial=serial, registers=registers,
                            max_cycles=max_cycles, check=False)


def gemm_program(cfg, m, n, k, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32) * np.float32(4.0) ** rng.integers(-3, 4, (m, k))
    b = rng.standard_normal((k, n)).astype(np.float32)
    return compile_gemm(cfg, a, b)


def sparse_program(cfg, m, n, k, pattern, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32) * np.float32(4.0) ** rng.integers(-3, 4, (m, k))
    return compile_sparse_gemm(cfg, a, rng.standard_normal((k, n)).astype(np.float32), *pattern)


def sparsify_program(cfg, cout, k, pattern, groups, seed):
    """Both compressed forms of awkward fp32 weights: ties, signed zeros, NaN, infinities, ragged lengths."""
    rng = np.random.default_rng(seed)
    w = rng.choice(np.float32([0.0, -0.0, 0.5, -0.5, 1.0, -2.0, np.nan, np.inf]), size=(cout, k))
    w = np.where(rng.random((cout, k)) < 0.5, rng.standard_normal((cout, k)).astype(np.float32), w)
    return compile_sparsify(cfg, w.astype(np.float32), *pattern, groups=groups)


def sparsified_gemm_program(cfg, cout, k, n_cols, pattern, direction, seed):
    """SPARSIFY, then the sparse GEMM reading the form it wrote (waiting on the p2l token)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, k)).astype(np.float32)
    x = rng.standard_normal((k if direction == "FF" else cout, n_cols)).astype(np.float32)
    return compile_sparsified_gemm(cfg, w, x, *pattern, direction=direction)


def vector_program(cfg, func, bf16, elements, seed, in_place=None):
    """One VECTOR operation on awkward elements: signed zeros, NaN, infinities, subnormals, ties, normals."""
    rng = np.random.default_rng(seed)
    special = np.float32([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -1e-40, 1.0, -1.0])
    x, y = (np.where(rng.random(elements) < 0.3, rng.choice(special, elements),
                     rng.standard_normal(elements)).astype(np.float32) for _ in range(2))
    y[::7] = x[::7]  # ties
    if bf16:
        x_bits, y_bits = f32_to_bf16_bits(x), f32_to_bf16_bits(y)
        x_bits[:2], y_bits[2:4] = (0x0001, 0x8001), (0x0003, 0x807F)  # bf16 subnormals
        x_bits[4:6], y_bits[6:8] = (0x7F81, 0xFFC1), (0xFF85, 0x7FFF)  # NaNs with payloads
    else:
        x_bits, y_bits = x.view(np.uint32).copy(), y.view(np.uint32).copy()
        x_bits[4:6], y_bits[6:8] = (0x7F800001, 0xFFC12345), (0xFF800100, 0x7FFFFFFF)  # NaNs with payloads
    return compile_vector(cfg, func, x_bits, y_bits, in_place=in_place)


def conv_walk_program(cfg, shape, direction, pattern, seed):
    """FF or BP of a convolution on the kernel walk (``nmsat.dataflow.conv``), random bf16 data."""
    n, cin, cout, hw, kernel, stride, pad = shape
    rng = np.random.default_rng(seed)
    weight = bf16_bits_to_f32(f32_to_bf16_bits(rng.standard_normal((cout, cin, kernel, kernel)).astype(np.float32)))
    ho = (hw + 2 * pad - kernel) // stride + 1
    if direction == "FF":
        walks, src = [conv.ff_walk(weight, hw, hw, stride, pad, 1)], conv.ActLayout(n, cin, hw, hw, pad, 8)
        dst = conv.ActLayout(n, cout, ho, ho, 0, 8)
    else:
        walks = conv.bp_walks(weight, hw, hw, stride, pad, 1)
        src = conv.ActLayout(n, cout, ho, ho, conv.bp_pad(kernel, stride, pad, 1), 8)
        dst = conv.ActLayout(n, cin, hw, hw, 0, 8)
    data = f32_to_bf16_bits(rng.standard_normal((n, src.channels, src.h, src.w)).astype(np.float32))
    return conv.compile_walks(cfg, walks, src, data, dst, pattern)


def wu_walk_program(cfg, shape, seed):
    """WU of a convolution on the kernel walk over transposed tiles (``nmsat.dataflow.conv.compile_wu``)."""
    n, cin, cout, hw, kernel, stride, pad = shape
    rng = np.random.default_rng(seed)
    ho = (hw + 2 * pad - kernel) // stride + 1
    x = f32_to_bf16_bits(rng.standard_normal((n, cin, hw, hw)).astype(np.float32))
    dy = f32_to_bf16_bits(rng.standard_normal((n, cout, ho, ho)).astype(np.float32))
    return conv.compile_wu(cfg, dy, x, kernel, stride, pad)


def interleaved_backward_program(cfg, shape, seed):
    """A convolution's BP and WU walks interleaved in one program (``nmsat.dataflow.interleave``)."""
    from nmsat.dataflow.interleave import compile_backward
    n, cin, cout, hw, kernel, stride, pad, pattern = shape
    rng = np.random.default_rng(seed)
    weight = bf16_bits_to_f32(f32_to_bf16_bits(rng.standard_normal((cout, cin, kernel, kernel)).astype(np.float32)))
    ho = (hw + 2 * pad - kernel) // stride + 1
    dy = f32_to_bf16_bits(rng.standard_normal((n, cout, ho, ho)).astype(np.float32))
    x = f32_to_bf16_bits(rng.standard_normal((n, cin, hw, hw)).astype(np.float32))
    return compile_backward(cfg, weight, dy, x, stride=stride, padding=pad, pattern=pattern)


#: interleaved BP + WU through the RTL: (batch, cin, cout, size, kernel, stride, padding, pattern)
INTERLEAVED = [(4, 4, 8, 5, 3, 1, 1, None), (4, 16, 8, 6, 1, 2, 0, (2, 8))]

#: WU walks through the RTL: stride 1 (a row of pixels per run), stride 2 (a pixel per run), 1 × 1
WU_WALKS = [(4, 8, 8, 5, 3, 1, 1), (3, 8, 4, 7, 3, 2, 1), (2, 4, 8, 4, 1, 1, 0)]

#: convolutions on the kernel walk through the RTL: (batch, cin, cout, size, kernel, stride, padding), direction,
#: pattern — strided FF, BP by phases (one phase of a 1×1 stride-2 conv reaches no tap: zeros)
CONV_WALKS = [((3, 8, 8, 5, 3, 1, 1), "FF", None), ((4, 8, 4, 6, 3, 2, 1), "FF", (2, 8)),
              ((3, 8, 8, 5, 3, 1, 1), "BP", (2, 8)), ((2, 8, 8, 5, 3, 2, 1), "BP", None),
              ((2, 8, 8, 4, 1, 2, 0), "BP", None)]


def cnn_iteration_jobs(batch=4, seed=3):
    """The programs of one iteration of ``nmsat.sw.cnn_step.SmallCNN`` (each with its input image)."""
    import torch
    from nmsat.sw.cnn_step import NAMES, CnnState, SmallCNN, cnn_iteration, sim_runner

    torch.manual_seed(seed)
    model = SmallCNN()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 8, 6, 6)).astype(np.float32)
    state = CnnState({k: getattr(model, k).weight.detach().numpy().copy() for k in NAMES},
                     {k: rng.standard_normal(getattr(model, k).weight.shape).astype(np.float32) * 0.01 for k in NAMES})
    recorded = []
    cnn_iteration(TINY, state, x, rng.integers(0, 4, batch), sim_runner(TINY, recorded), lr=0.1, momentum=0.9,
                  weight_decay=5e-4)
    return [job for job, _, _ in recorded]


def update_program(cfg, cout, k, pattern, groups, seed):
    """WEIGHT_UPDATE of a layer's master weights, then the SPARSIFYs of the new weights (pre-generation)."""
    rng = np.random.default_rng(seed)
    w, v, g = (rng.standard_normal((cout, k)).astype(np.float32) * s for s in (1.0, 0.1, 1.0))
    g[rng.random(g.shape) < 0.05] = 0.0
    return compile_weight_update(cfg, w, v, g, *pattern, lr=float(rng.uniform(0.01, 0.5)),
                                 momentum=float(rng.uniform(0, 0.95)), weight_decay=float(rng.uniform(0, 1e-3)),
                                 groups=groups)


#: (cout, K per group, groups): whole and ragged tiles and groups, a grouped conv
SPARSIFY_SHAPES = [(8, 16, 1), (11, 21, 1), (12, 27, 3), (5, 70, 1)]

#: the N:M patterns the tiny preset runs (its sparse_m is (4, 8))
SPARSE_PATTERNS = [(1, 4), (2, 4), (3, 4), (1, 8), (2, 8), (4, 8), (7, 8)]


def assert_same(expected, sim_memory, rtl, what=""):
    """Everything the host can see: status, error code, error PC, cycles and every byte of memory."""
    assert not rtl.timed_out, f"{what}: the core did not finish (simulator: {expected.status.name} after {expected.cycles})"
    assert (rtl.status, rtl.error, rtl.error_pc, rtl.cycles) == \
        (expected.status, expected.error, expected.error_pc, expected.cycles), what
    assert np.array_equal(rtl.memory, sim_memory), f"{what}: memory differs at " \
        f"{np.flatnonzero(rtl.memory != sim_memory)[:8]} ({expected.status.name} {expected.error.name})"


def words_memory(words, size=0x3000, data=None):
    memory = np.zeros(size, dtype=np.uint8)
    memory[:len(words) * 16] = np.frombuffer(to_bytes(words), dtype=np.uint8)
    for addr, raw in (data or {}).items():
        memory[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return memory


ONES = np.array([0x3F80] * 4, dtype=np.uint16).tobytes()  # bf16 1.0 x 4: one A or B word at tiny

def chained_memory(next_addr, next_len, second=(), size=0x3000):
    """A run whose first program (at 0) computes a tile of ones and STOREs it at 0x2000, then chains to
    ``next_len`` instructions at ``next_addr`` (``second``: the words put there)."""
    first = [encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=0x1000, dram_stride=8),
             encode(Opcode.LOAD, buffer=Buffer.B, rows=1, dram_addr=0x1000, dram_stride=8, push_next=1),
             encode(Opcode.GEMM, k=1, pop_prev=1, push_next=1),
             encode(Opcode.STORE, buffer=Buffer.ACC, rows=4, dram_addr=0x2000, dram_stride=16, pop_prev=1),
             encode(Opcode.FINISH, next_addr=next_addr, next_len=next_len)]
    data = {0x1000: ONES}
    if second:
        data[next_addr] = to_bytes(list(second))
    return words_memory(first, size=size, data=data)


#: hand-made runs that end in an error after some work has been done (the issue 7 reproducers among them)
ERROR_RUNS = {
    # a FINISH chaining to a program too long for the instruction memory, one not on a bus word, one past
    # the end of the memory (its fetch gets DECERR), and one whose second instruction is illegal: the error
    # PC counts the first program's five instructions
    "chain-too-long": (chained_memory(0x800, TINY.imem_depth + 1), 5, ErrorCode.PROGRAM_TOO_LONG),
    "chain-unaligned": (chained_memory(0x804, 4), 5, ErrorCode.DRAM_RANGE),
    "chain-backwards": (chained_memory(0, 5), 5, ErrorCode.BAD_ARGS),  # back to itself: it would never end
    "chain-past-memory": (chained_memory(0x2F80, 16), 5, ErrorCode.AXI_ERROR),
    "chain-bad-opcode": (chained_memory(0x800, 3, [encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=0x1000,
                                                          dram_stride=8), 0, encode(Opcode.FINISH)]),
                         5, ErrorCode.BAD_OPCODE),
    # both units deadlock at PC 4 after a STORE has written C: the bytes it wrote stay
    "store-then-deadlock": (words_memory([
        encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=0x1000, dram_stride=8),
        encode(Opcode.LOAD, buffer=Buffer.B, rows=1, dram_addr=0x1000, dram_stride=8, push_next=1),
        encode(Opcode.GEMM, k=1, pop_prev=1, push_next=1),
        encode(Opcode.STORE, buffer=Buffer.ACC, rows=4, dram_addr=0x2000, dram_stride=16, pop_prev=1),
        encode(Opcode.GEMM, k=1, pop_prev=1),
        encode(Opcode.FINISH)], data={0x1000: ONES}), 6, ErrorCode.DEADLOCK),
    # a LOAD past the end of a 4 KiB memory: DECERR, AXI_ERROR
    "load-past-memory": (words_memory([encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=4096, dram_stride=8),
                                       encode(Opcode.FINISH)], size=4096), 2, ErrorCode.AXI_ERROR),
    # a SPARSIFY whose source runs past the end of the memory (its first beats come back, then DECERR)
    "sparsify-source-past-memory": (words_memory([
        encode(Opcode.SPARSIFY, src_addr=0x1F80, transpose=1, length=16, src_stride=0x40, n=2, m_log2=3,
               dst_offset=0x200),
        encode(Opcode.FINISH)], size=0x2000, data={0x1000: ONES}), 2, ErrorCode.AXI_ERROR),
    # a SPARSIFY whose output runs past the end: the words before it are written
    "sparsify-output-past-memory": (words_memory([
        encode(Opcode.SPARSIFY, src_addr=0x1000, transpose=0, length=24, src_stride=0x10, n=2, m_log2=2,
               dst_offset=0x2000 - 0x1000 - 40),
        encode(Opcode.FINISH)], size=0x2000, data={0x1000: ONES * 48}), 2, ErrorCode.AXI_ERROR),
    # a WEIGHT_UPDATE whose gradients run past the end of the memory: DECERR on the first g beat past it
    "update-past-memory": (words_memory([
        encode(Opcode.WEIGHT_UPDATE, w_addr=0x1000, words=24, v_offset=0x400, g_offset=0xF80),
        encode(Opcode.FINISH)], size=0x2000, data={0x1000: ONES * 96}), 2, ErrorCode.AXI_ERROR),
    # a VECTOR whose y runs past the end of the memory (DECERR on its first beat past it), and one whose z does
    # (the bursts before it are written)
    "vector-y-past-memory": (words_memory([
        encode(Opcode.VECTOR, x_addr=0x1000, beats=40, func=VectorFunc.ADD, y_offset=30, z_offset=4),
        encode(Opcode.FINISH)], size=0x2000, data={0x1000: ONES * 96}), 2, ErrorCode.AXI_ERROR),
    "vector-z-past-memory": (words_memory([
        encode(Opcode.VECTOR, x_addr=0x1000, beats=40, func=VectorFunc.MUL, y_offset=0, z_offset=30, bf16=1),
        encode(Opcode.FINISH)], size=0x2000, data={0x1000: ONES * 96}), 2, ErrorCode.AXI_ERROR),
    # a strided STORE whose last row is past the end: the rows before it are written
    "store-past-memory": (words_memory([
        encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=0x1000, dram_stride=8),
        encode(Opcode.LOAD, buffer=Buffer.B, rows=1, dram_addr=0x1000, dram_stride=8, push_next=1),
        encode(Opcode.GEMM, k=1, pop_prev=1, push_next=1),
        encode(Opcode.STORE, buffer=Buffer.ACC, rows=4, dram_addr=0x2000 - 48, dram_stride=32, pop_prev=1),
        encode(Opcode.FINISH)], size=0x2000, data={0x1000: ONES}), 5, ErrorCode.AXI_ERROR),
}


# ---------------------------------------------------------------- Amaranth simulator


@pytest.mark.parametrize("m,n,k,serial", [(4, 4, 4, False), (7, 9, 13, True), (9, 6, 21, False)])
def test_amaranth_core_matches_simulator_on_gemms(m, n, k, serial):
    prog = gemm_program(TINY, m, n, k, seed=m * n * k)
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length, serial=serial)
    assert expected.ok
    rtl = run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length, serial=serial)
    assert_same(expected, memory, rtl)


@pytest.mark.parametrize("pattern,serial", [((2, 8), False), ((1, 4), True)])
def test_amaranth_core_matches_simulator_on_sparse_gemms(pattern, serial):
    prog = sparse_program(TINY, 9, 6, 45, pattern, seed=sum(pattern))
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run_sequence(memory, prog.runs, serial=serial)
    assert expected.ok and expected.race_free
    rtl = run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length, serial=serial)
    assert_same(expected, memory, rtl)


@pytest.mark.parametrize("words,code", [
    ([0xF, encode(Opcode.FINISH)], ErrorCode.BAD_OPCODE),
    ([encode(Opcode.GEMM, pop_prev=1, k=3), encode(Opcode.FINISH)], ErrorCode.DEADLOCK),
    ([encode(Opcode.GEMM, k=2)], ErrorCode.NO_FINISH),
])
def test_amaranth_core_matches_simulator_on_errors(words, code):
    memory = words_memory(words, size=4096)
    expected = CoreModel(TINY).run(memory, 0, len(words))
    assert expected.error is code
    rtl = run_core_amaranth(TINY, words_memory(words, size=4096), 0, len(words))
    assert_same(expected, memory, rtl)


def test_a_chained_run_is_its_programs_run_one_after_another_in_the_core():
    """Programs linked by their FINISHes (``link_runs``: a GEMM's program, then a copy of it elsewhere): one
    START, the core fetches the second itself; the same bytes and the same cycles as the host running them in
    turn (plus ``timing.CHAIN_GAP``), and the Amaranth core agrees in everything."""
    prog = gemm_program(TINY, 6, 9, 5, seed=98)
    (addr, length), = prog.runs
    copy = addr + 0x1000
    image = np.zeros(copy + 0x1000, np.uint8)
    image[:prog.memory.size] = prog.memory
    image[copy:copy + length * 16] = prog.memory[addr:addr + length * 16]
    runs = [(addr, length), (copy, length)]
    apart = image.copy()
    one_by_one = CoreModel(TINY).run_sequence(apart, runs)
    linked = image.copy()
    first = link_runs(linked, runs)
    memory = linked.copy()
    chained = CoreModel(TINY).run(memory, *first)
    # the same work, and one cycle more for the registered reset before the second program
    assert chained.ok and chained.cycles == one_by_one.cycles + timing.CHAIN_GAP and chained.instructions == 2 * (length - 1)
    assert np.array_equal(memory[:addr], apart[:addr])
    assert_same(chained, memory, run_core_amaranth(TINY, linked, *first))
    with pytest.raises(ValueError, match="plain FINISH"):
        link_runs(linked, runs)  # already linked
    with pytest.raises(ValueError, match="increasing addresses"):
        link_runs(image.copy(), runs[::-1])


def test_chain_errors_count_the_programs_before():
    for name, pc in (("chain-too-long", 5), ("chain-bad-opcode", 6), ("chain-backwards", 4)):
        image, length, code = ERROR_RUNS[name]
        result = CoreModel(TINY).run(image.copy(), 0, length)
        assert (result.error, result.error_pc) == (code, pc), name


@pytest.mark.parametrize("name", list(ERROR_RUNS))
def test_amaranth_core_matches_simulator_after_work_then_an_error(name):
    """What memory holds after an error: the bytes of every STORE that started, none of the others."""
    image, length, code = ERROR_RUNS[name]
    memory = image.copy()
    expected = CoreModel(TINY).run(memory, 0, length)
    assert expected.error is code and expected.executed > 0
    assert_same(expected, memory, run_core_amaranth(TINY, image, 0, length), name)
    if name.startswith("sparsify-output"):
        assert memory[0x2000 - 40:0x2000 - 32].view(np.uint16).tolist() == [0x3F80] * 4  # a slot word was written
    elif name.startswith("vector-z"):
        assert memory[0x1F00:0x2000].view(np.uint16).tolist() == [0x3F80] * 128  # the bursts before the end
    elif name == "chain-backwards":  # raised when the FINISH is current: the STORE before it never started
        assert not memory[0x2000:0x2010].any()
    elif name not in ("load-past-memory", "sparsify-source-past-memory", "update-past-memory", "vector-y-past-memory"):
        first_row = 0x2000 - 48 if name == "store-past-memory" else 0x2000
        assert memory[first_row:first_row + 16].view(np.float32).tolist() == [1.0] * 4  # a STORE did write


@pytest.mark.parametrize("pattern,serial", [((2, 8), False), ((3, 4), True)])
def test_amaranth_core_matches_simulator_on_sparsify(pattern, serial):
    prog = sparsify_program(TINY, 11, 21, pattern, 1, seed=sum(pattern))
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length, serial=serial)
    assert expected.ok and expected.race_free
    rtl = run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length, serial=serial)
    assert_same(expected, memory, rtl)


def test_amaranth_core_matches_simulator_on_sparsify_with_more_lanes_than_chunk_elements():
    """32 lanes, chunks of 16 elements (the cap of ``SATConfig.sparsify_chunk``): a chunk's BP read is fewer
    source rows than lanes, its FF read shorter rows than lanes; both forms, ragged lengths."""
    cfg = SATConfig(name="tall", rows=32, cols=4, a_depth=64, b_depth=64, acc_depth=128, bus_bytes=8,
                    max_burst_beats=16, queue_depth=8, imem_depth=256, mem_read_latency=2, mem_write_latency=1)
    assert cfg.sparsify_chunk < cfg.rows  # the case this test is for
    prog = sparsify_program(cfg, 35, 21, (2, 8), 1, seed=9)
    memory = prog.memory.copy()
    expected = CoreModel(cfg).run(memory, prog.program_addr, prog.length)
    assert expected.ok and expected.race_free
    assert_same(expected, memory, run_core_amaranth(cfg, prog.memory, prog.program_addr, prog.length))


def test_amaranth_core_matches_simulator_on_a_weight_update_then_sparsify():
    prog = update_program(TINY, 10, 21, (2, 8), 1, seed=8)
    memory = prog.memory.copy()
    core = CoreModel(TINY)
    for reg, value in prog.registers.items():
        core.write_csr(reg, value)
    expected = core.run(memory, prog.program_addr, prog.length)
    assert expected.ok and expected.race_free and not np.array_equal(memory, prog.memory)
    rtl = run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length, registers=prog.registers)
    assert_same(expected, memory, rtl)


@pytest.mark.parametrize("func,bf16,in_place", [(VectorFunc.RELU_GRAD, False, None), (VectorFunc.ADD, True, "y")])
def test_amaranth_core_matches_simulator_on_vector(func, bf16, in_place):
    prog = vector_program(TINY, func, bf16, 300, seed=func.value, in_place=in_place)  # several bursts, a short last
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length)
    assert expected.ok and expected.race_free and not np.array_equal(memory, prog.memory)
    assert_same(expected, memory, run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length))


@pytest.mark.parametrize("shape,serial", [(WU_WALKS[1], False), (WU_WALKS[2], True)])
def test_amaranth_core_matches_simulator_on_wu_walks(shape, serial):
    prog = wu_walk_program(TINY, shape, seed=3)
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run_sequence(memory, prog.runs, serial=serial)
    assert expected.ok and expected.race_free
    rtl = run_core_amaranth(TINY, prog.memory, *prog.runs[0], serial=serial)
    assert len(prog.runs) == 1
    assert_same(expected, memory, rtl)


@pytest.mark.parametrize("cg,groups,kg,n", [(1, 6, 9, 7), (2, 3, 18, 5)])
def test_amaranth_core_matches_simulator_on_packed_group_gemms(cg, groups, kg, n):
    """Small groups packed into one pass (1:m SPARSE_GEMMs whose rows each take their own group's B word):
    every pack's program, a last one not full among them, in the Amaranth core as in the simulator."""
    rng = np.random.default_rng(cg * 100 + groups)
    packed = compile_packed_groups(TINY, rng.standard_normal((groups, cg, kg)), rng.standard_normal((groups, kg, n)))
    assert len(packed.programs) == 2
    for prog in packed.programs:
        memory = prog.memory.copy()
        expected = CoreModel(TINY).run_sequence(memory, prog.runs)
        assert expected.ok and expected.race_free and len(prog.runs) == 1
        assert_same(expected, memory, run_core_amaranth(TINY, prog.memory, *prog.runs[0]))


#: grouped convolutions as group walks: (batch, channels, G, size, stride, direction), a short batch group, a
#: partial last tile, BP by phases
GROUP_WALKS = [(6, 8, 1, 5, 1, "FF"), (3, 6, 2, 6, 2, "BP"), (2, 8, 4, 4, 2, "FF")]


def group_walk_program(cfg, n, c, g, size, stride, direction, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, g, 3, 3)).astype(np.float32)
    side = size if direction == "FF" else (size + 2 - 3) // stride + 1
    x = f32_to_bf16_bits(rng.standard_normal((n, c, side, side)).astype(np.float32))
    return compile_group_walks(cfg, w, x, stride=stride, padding=1, direction=direction, size=size)


def test_amaranth_core_matches_simulator_on_a_group_walk():
    prog = group_walk_program(TINY, *GROUP_WALKS[1], seed=3)
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run_sequence(memory, prog.runs)
    assert expected.ok and expected.race_free and len(prog.runs) == 1
    assert_same(expected, memory, run_core_amaranth(TINY, prog.memory, *prog.runs[0]))


def test_amaranth_core_matches_simulator_on_an_interleaved_bp_and_wu():
    prog = interleaved_backward_program(TINY, INTERLEAVED[1], seed=5)
    assert len(prog.runs) == 1
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run_sequence(memory, prog.runs)
    assert expected.ok and expected.race_free
    assert_same(expected, memory, run_core_amaranth(TINY, prog.memory, *prog.runs[0]))


@pytest.mark.parametrize("case,serial", [(CONV_WALKS[1], False), (CONV_WALKS[3], True)])
def test_amaranth_core_matches_simulator_on_kernel_walk_convolutions(case, serial):
    prog = conv_walk_program(TINY, *case, seed=7)
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length, serial=serial)
    assert expected.ok and expected.race_free
    rtl = run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length, serial=serial)
    assert_same(expected, memory, rtl)


def transposing_program(cfg, seed, blocks=3):
    """Transposing LOADs into A and B, each followed at once by a plain LOAD (whose beats wait for the last
    block's writes); GEMMs of transposed A by plain B and plain A by transposed B; their STOREs."""
    rng = np.random.default_rng(seed)
    block = cfg.rows * cfg.b_word_bytes
    data = {0x1000: f32_to_bf16_bits(rng.standard_normal(0x1000 // 2).astype(np.float32)).tobytes()}
    k = blocks * cfg.cols
    plain = 64  # buffer words of the plain operands
    words = [encode(Opcode.LOAD, buffer=Buffer.A, tile_transpose=1, sram_addr=0, rows=blocks, dram_addr=0x1000,
                    dram_stride=2 * block),
             encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=plain, rows=k, dram_addr=0x1800, dram_stride=cfg.a_word_bytes),
             encode(Opcode.LOAD, buffer=Buffer.B, tile_transpose=1, sram_addr=0, rows=blocks, dram_addr=0x1000 + block,
                    dram_stride=2 * block),
             encode(Opcode.LOAD, buffer=Buffer.B, sram_addr=plain, rows=k, dram_addr=0x1900, dram_stride=cfg.b_word_bytes,
                    push_next=1),
             encode(Opcode.GEMM, pop_prev=1, a_addr=0, b_addr=plain, acc_addr=0, k=k),
             encode(Opcode.GEMM, push_next=1, a_addr=plain, b_addr=0, acc_addr=cfg.rows, k=k),
             encode(Opcode.STORE, pop_prev=1, buffer=Buffer.ACC, sram_addr=0, rows=2 * cfg.rows, dram_addr=0x2000,
                    dram_stride=cfg.acc_word_bytes),
             encode(Opcode.FINISH)]
    return words_memory(words, data=data), len(words)


@pytest.mark.parametrize("serial", [False, True])
def test_amaranth_core_matches_simulator_on_transposing_loads(serial):
    image, length = transposing_program(TINY, seed=5)
    memory = image.copy()
    expected = CoreModel(TINY).run(memory, 0, length, serial=serial)
    assert expected.ok and expected.race_free
    rtl = run_core_amaranth(TINY, image, 0, length, serial=serial)
    assert_same(expected, memory, rtl)


def mlp_chain_program(cfg, shape, seed):
    """Two linear layers with a ReLU, forward and backward: four GEMMs and two VECTORs in one program."""
    rng = np.random.default_rng(seed)
    m1, k1, m2, n = shape
    return compile_relu_mlp(cfg, *(rng.standard_normal(s).astype(np.float32)
                                   for s in ((m1, k1), (m2, m1), (k1, n), (m2, n))))


def test_amaranth_core_matches_simulator_on_a_chain_of_gemms_in_one_program():
    prog = mlp_chain_program(TINY, (10, 13, 7, 9), seed=3)
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length)
    assert expected.ok and expected.race_free
    assert_same(expected, memory, run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length))


def test_amaranth_core_matches_simulator_on_a_gemm_of_the_sparsifiers_form():
    prog = sparsified_gemm_program(TINY, 10, 21, 6, (2, 8), "BP", seed=4)
    memory = prog.memory.copy()
    expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length)
    assert expected.ok and expected.race_free
    assert_same(expected, memory, run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length))


@pytest.mark.parametrize("variant", ["axi_store", "token_overflow", "sram_range", "axi_load", "axi_sparsify"])
def test_amaranth_core_matches_simulator_on_random_programs(variant):
    case = random_cases(TINY, seed=VARIANTS.index(variant), count=len(VARIANTS))[VARIANTS.index(variant)]
    memory = case.memory.copy()
    core = CoreModel(TINY)
    for reg, value in case.registers:
        core.write_csr(reg, value)
    expected = core.run(memory, case.program_addr, case.program_len, serial=case.serial)
    assert expected.race_free
    rtl = run_core_amaranth(TINY, case.memory, case.program_addr, case.program_len, serial=case.serial,
                            registers=dict(case.registers))
    assert_same(expected, memory, rtl, variant)


def test_amaranth_bench_reports_a_core_that_does_not_finish():
    """The bench's cycle limit: a run longer than it ends as timed out instead of hanging the suite."""
    prog = gemm_program(TINY, 8, 8, 64, seed=1)
    rtl = run_core_amaranth(TINY, prog.memory, prog.program_addr, prog.length, max_cycles=50)
    assert rtl.timed_out and rtl.status is Status.BUSY


# ---------------------------------------------------------------- Verilator + cocotb


def conv_shapes():
    shapes = []
    for cin, cout, hw, kernel, stride in ((3, 8, 6, 3, 1), (8, 16, 4, 3, 2), (16, 8, 4, 1, 1)):
        for g in conv2d_gemms("c", 2, cin, cout, hw, hw, kernel, stride, kernel // 2):
            shapes.append((g.m, g.n, g.k))
    return shapes


def _sparse(**args):
    base = dict(groups=2, n=2, m_log2=3, a_addr=0, b_addr=0, acc_addr=0, idx_addr=0)
    base.update(args)
    return encode(Opcode.SPARSE_GEMM, **base)


def _update(**args):
    base = dict(w_addr=0x1000, words=8, v_offset=0x400, g_offset=0x800)
    base.update(args)
    return encode(Opcode.WEIGHT_UPDATE, **base)


def _vector(**args):
    base = dict(x_addr=0x1000, beats=8, func=VectorFunc.ADD, y_offset=2, z_offset=4)  # offsets in 128-byte bursts
    base.update(args)
    return encode(Opcode.VECTOR, **base)


def _sparsify(**args):
    base = dict(src_addr=0x1000, transpose=1, length=13, src_stride=0x40, n=2, m_log2=3, dst_offset=0x800)
    base.update(args)
    return encode(Opcode.SPARSIFY, **base)


#: every static check of SPARSE_GEMM and LOAD/STORE of IDX, each once, deterministically (random programs
#: reach each only by chance)
STATIC_CASES = [
    (encode(Opcode.FINISH, next_addr=0, next_len=1), ErrorCode.BAD_ARGS),  # a chain back to itself
    (_sparse(groups=0), ErrorCode.BAD_ARGS), (_sparse(n=0), ErrorCode.BAD_ARGS), (_sparse(n=9), ErrorCode.BAD_ARGS),
    (_sparse(m_log2=4), ErrorCode.BAD_ARGS), (_sparse(m_log2=1), ErrorCode.BAD_ARGS),
    (_sparse(b_addr=4), ErrorCode.BAD_ARGS), (_sparse(m_log2=2, b_addr=2), ErrorCode.BAD_ARGS),
    (_sparse(a_addr=TINY.a_depth - 3), ErrorCode.SRAM_RANGE), (_sparse(b_addr=TINY.b_depth - 8), ErrorCode.SRAM_RANGE),
    (_sparse(idx_addr=TINY.idx_depth - 0), ErrorCode.SRAM_RANGE),
    (_sparse(acc_addr=TINY.acc_depth - TINY.rows + 1), ErrorCode.SRAM_RANGE),
    (_sparse(groups=2, n=2, idx_addr=TINY.idx_depth - 1), ErrorCode.NONE),
    # the kernel walk: tap strides of a SPARSE_GEMM in multiples of m; A, B and IDX ranges over every tap
    (_sparse(taps_w=2, tap_w_stride=4), ErrorCode.BAD_ARGS), (_sparse(taps_h=2, tap_h_stride=12), ErrorCode.BAD_ARGS),
    (_sparse(taps_h=3, taps_w=2, tap_h_stride=24, tap_w_stride=8), ErrorCode.NONE),
    (_sparse(taps_h=2, tap_h_stride=TINY.b_depth - 16), ErrorCode.NONE),
    (_sparse(taps_h=2, tap_h_stride=TINY.b_depth - 8), ErrorCode.SRAM_RANGE),
    (_sparse(taps_h=4, taps_w=4, n=4, groups=3), ErrorCode.NONE),  # (A words below the LOAD's 200, 201)
    (_sparse(taps_h=4, taps_w=4, n=4, groups=3, a_addr=65), ErrorCode.SRAM_RANGE),
    (_sparse(taps_h=7, taps_w=7, n=1, groups=1, idx_addr=TINY.idx_depth - 12), ErrorCode.SRAM_RANGE),
    (_sparse(taps_h=7, taps_w=7, n=1, groups=1, idx_addr=TINY.idx_depth - 13), ErrorCode.NONE),
    (encode(Opcode.GEMM, k=4, taps_h=3, taps_w=3, tap_h_stride=100, tap_w_stride=20), ErrorCode.NONE),
    (encode(Opcode.GEMM, k=4, taps_h=3, taps_w=3, tap_h_stride=100, tap_w_stride=27), ErrorCode.SRAM_RANGE),
    (encode(Opcode.GEMM, k=22, taps_h=3, taps_w=3, a_addr=2), ErrorCode.NONE),
    (encode(Opcode.GEMM, k=29, taps_h=3, taps_w=3), ErrorCode.SRAM_RANGE),
    (encode(Opcode.GEMM, k=1, taps_w=7, tap_w_stride=2047), ErrorCode.SRAM_RANGE),
    (encode(Opcode.STORE, buffer=Buffer.IDX, rows=1, dram_addr=0, dram_stride=8), ErrorCode.BAD_ARGS),
    (encode(Opcode.LOAD, buffer=Buffer.IDX, sram_addr=TINY.idx_depth - 1, rows=2, dram_addr=0x1000, dram_stride=8),
     ErrorCode.SRAM_RANGE),
    (encode(Opcode.LOAD, buffer=Buffer.IDX, sram_addr=TINY.idx_depth - 1, rows=1, dram_addr=0x1000, dram_stride=8),
     ErrorCode.NONE),
    # transposing LOADs: into A or B only, rows · cols words written, blocks of rows B words read
    (encode(Opcode.LOAD, buffer=Buffer.A, tile_transpose=1, sram_addr=4, rows=2, dram_addr=0x1000, dram_stride=32),
     ErrorCode.NONE),
    (encode(Opcode.LOAD, buffer=Buffer.B, tile_transpose=1, sram_addr=TINY.b_depth - 8, rows=2, dram_addr=0x1000,
            dram_stride=64), ErrorCode.NONE),
    (encode(Opcode.LOAD, buffer=Buffer.B, tile_transpose=1, sram_addr=TINY.b_depth - 7, rows=2, dram_addr=0x1000,
            dram_stride=64), ErrorCode.SRAM_RANGE),
    (encode(Opcode.LOAD, buffer=Buffer.IDX, tile_transpose=1, rows=1, dram_addr=0x1000, dram_stride=32),
     ErrorCode.BAD_ARGS),
    (encode(Opcode.STORE, buffer=Buffer.ACC, tile_transpose=1, rows=1, dram_addr=0x1000, dram_stride=16),
     ErrorCode.BAD_ARGS),
    (encode(Opcode.LOAD, buffer=Buffer.A, tile_transpose=1, rows=2, dram_addr=0x3000 - 64, dram_stride=32),
     ErrorCode.NONE),  # ends at the memory's end: blocks of 4 B words
    (encode(Opcode.LOAD, buffer=Buffer.A, tile_transpose=1, rows=2, dram_addr=(1 << 32) - 64, dram_stride=40),
     ErrorCode.DRAM_RANGE),
    # LOAD and STORE past the top of the address space (the random programs reach it only by chance)
    (encode(Opcode.LOAD, buffer=Buffer.B, rows=2, dram_addr=(1 << 32) - 8, dram_stride=8), ErrorCode.DRAM_RANGE),
    (encode(Opcode.STORE, buffer=Buffer.ACC, rows=1, dram_addr=(1 << 32) - 8, dram_stride=16), ErrorCode.DRAM_RANGE),
    # a LOAD does not convert; a bf16 STORE's words are half an ACC word (its end checked with them)
    (encode(Opcode.LOAD, buffer=Buffer.B, rows=1, dram_addr=0x1000, dram_stride=8, bf16=1), ErrorCode.BAD_ARGS),
    (encode(Opcode.LOAD, buffer=Buffer.A, rows=1, dram_addr=0x1000, dram_stride=8, relu=1), ErrorCode.BAD_ARGS),
    (encode(Opcode.STORE, buffer=Buffer.ACC, rows=2, dram_addr=0x3000 - 16, dram_stride=8, bf16=1),
     ErrorCode.NONE),  # ends at the memory's end in bf16 words (fp32 words would reach past it)
    (encode(Opcode.STORE, buffer=Buffer.ACC, rows=2, dram_addr=(1 << 32) - 8, dram_stride=8, bf16=1),
     ErrorCode.DRAM_RANGE),
    # SPARSIFY: every static check once, and one that passes them
    (_sparsify(length=0), ErrorCode.BAD_ARGS), (_sparsify(n=0), ErrorCode.BAD_ARGS),
    (_sparsify(n=5, m_log2=2), ErrorCode.BAD_ARGS), (_sparsify(m_log2=1), ErrorCode.BAD_ARGS),
    (_sparsify(m_log2=4), ErrorCode.BAD_ARGS), (_sparsify(src_addr=0x1004), ErrorCode.DRAM_RANGE),
    (_sparsify(src_stride=0x44), ErrorCode.DRAM_RANGE), (_sparsify(dst_offset=0x804), ErrorCode.DRAM_RANGE),
    (_sparsify(src_addr=(1 << 32) - 0x40, dst_offset=0), ErrorCode.DRAM_RANGE),
    (_sparsify(src_addr=(1 << 32) - (1 << 30), dst_offset=(1 << 30) - 8), ErrorCode.DRAM_RANGE),
    (_sparsify(transpose=0, src_addr=(1 << 32) - 0x200, dst_offset=0), ErrorCode.DRAM_RANGE),
    (_sparsify(), ErrorCode.NONE), (_sparsify(transpose=0), ErrorCode.NONE),
    # WEIGHT_UPDATE: no words; w, v or g off a burst boundary; past the address space; one that passes
    (_update(words=0), ErrorCode.BAD_ARGS), (_update(w_addr=0x1040), ErrorCode.DRAM_RANGE),
    (_update(v_offset=0x408), ErrorCode.DRAM_RANGE), (_update(g_offset=0x810), ErrorCode.DRAM_RANGE),
    (_update(w_addr=(1 << 32) - 0x80, words=9), ErrorCode.DRAM_RANGE), (_update(), ErrorCode.NONE),
    # VECTOR: no beats; a function it lacks; x off a burst boundary; y or z below address 0; past the top of the
    # address space (x, or z only); ones that pass (in place, bf16, a negative offset)
    (_vector(beats=0), ErrorCode.BAD_ARGS), (_vector(func=5), ErrorCode.BAD_ARGS), (_vector(func=15), ErrorCode.BAD_ARGS),
    (_vector(func=4), ErrorCode.NONE),
    (_vector(x_addr=0x1040), ErrorCode.DRAM_RANGE), (_vector(y_offset=-33), ErrorCode.DRAM_RANGE),
    (_vector(z_offset=-33), ErrorCode.DRAM_RANGE), (_vector(x_addr=(1 << 32) - 0x80, beats=17), ErrorCode.DRAM_RANGE),
    (_vector(x_addr=(1 << 32) - 0x200, z_offset=4), ErrorCode.DRAM_RANGE),
    (_vector(z_offset=0, func=VectorFunc.MAX), ErrorCode.NONE),
    (_vector(y_offset=-32, z_offset=-16, bf16=1, func=VectorFunc.RELU_GRAD), ErrorCode.NONE),
]


def static_case_memory(word):
    """A LOAD (into A words no case reads), the instruction under test, FINISH: an error comes after some work."""
    return words_memory([encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=200, rows=2, dram_addr=0x1000, dram_stride=8), word,
                         encode(Opcode.FINISH)], data={0x1000: ONES * 2})


def test_static_cases_raise_what_they_say_in_the_simulator():
    for word, code in STATIC_CASES:
        assert CoreModel(TINY).run(static_case_memory(word), 0, 3).error is code


def needs_cxx():
    if not (shutil.which("make") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("Verilator needs make and a C++ compiler, and this machine has none")


#: random programs through the RTL: every variant this many times
RANDOM_PER_VARIANT = 6


@pytest.fixture(scope="module")
def verilator_results():
    """One batch on one core: GEMMs (pipelined, then serial), random programs of every variant, hand-made
    error runs.  Buffers persist from job to job on the core, so the simulator runs the same jobs in the same
    order on one CoreModel."""
    needs_cxx()
    from nmsat.sw.rtl import RtlJob

    rng = np.random.default_rng(2026)
    jobs, names = [], []
    shapes = [tuple(int(x) for x in rng.integers(1, 24, 3)) for _ in range(6)] + conv_shapes()
    for i, (m, n, k) in enumerate(shapes):
        prog = gemm_program(TINY, m, n, k, seed=i)
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, prog.program_addr, prog.length, serial))
            names.append(f"gemm {m}x{n}x{k}{' serial' if serial else ''}")
    for i, pattern in enumerate(SPARSE_PATTERNS):  # every pattern, random shapes, pipelined then serial
        m, n, k = (int(x) for x in rng.integers(1, 40, 3))
        prog = sparse_program(TINY, m, n, k, pattern, seed=100 + i)
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, *prog.runs[0], serial, more_runs=tuple(prog.runs[1:])))
            names.append(f"gemm {pattern[0]}:{pattern[1]} {m}x{n}x{k}{' serial' if serial else ''}")
    for i, (m, n, k) in enumerate(conv_shapes()):  # BDWP's FF and BP of conv layers as sparse GEMMs
        pattern = SPARSE_PATTERNS[i % len(SPARSE_PATTERNS)]
        prog = sparse_program(TINY, m, n, k, pattern, seed=200 + i)
        jobs.append(RtlJob(prog.memory, *prog.runs[0], more_runs=tuple(prog.runs[1:])))
        names.append(f"sparse conv {pattern[0]}:{pattern[1]} {m}x{n}x{k}")
    for i, (cout, k, groups) in enumerate(SPARSIFY_SHAPES):  # the sparsifier on every pattern, FF and BP forms
        for j, pattern in enumerate(SPARSE_PATTERNS[i::len(SPARSIFY_SHAPES)]):
            prog = sparsify_program(TINY, cout, k, pattern, groups, seed=300 + 10 * i + j)
            for serial in (False, True):
                jobs.append(RtlJob(prog.memory, prog.program_addr, prog.length, serial))
                names.append(f"sparsify {pattern[0]}:{pattern[1]} {cout}x{k}/{groups}{' serial' if serial else ''}")
    for i, (direction, pattern) in enumerate([("FF", (2, 8)), ("BP", (2, 8)), ("FF", (1, 4)), ("BP", (4, 8))]):
        prog = sparsified_gemm_program(TINY, 9 + i, 20 + 3 * i, 5 + i, pattern, direction, seed=400 + i)
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, prog.program_addr, prog.length, serial))
            names.append(f"sparsify then {direction} gemm {pattern[0]}:{pattern[1]}{' serial' if serial else ''}")
    for i, (cout, k, groups) in enumerate(SPARSIFY_SHAPES[:3]):  # weight update, then the new weights' forms
        prog = update_program(TINY, cout, k, SPARSE_PATTERNS[i], groups, seed=500 + i)
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, prog.program_addr, prog.length, serial,
                               registers=tuple((int(r), v) for r, v in prog.registers.items())))
            names.append(f"sparsify after update {cout}x{k}/{groups}{' serial' if serial else ''}")
    for i, shape in enumerate([(10, 13, 7, 9), (9, 20, 6, 12), (4, 8, 4, 4)]):  # GEMMs chained in one program
        prog = mlp_chain_program(TINY, shape, seed=800 + i)
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, prog.program_addr, prog.length, serial))
            names.append(f"relu mlp chain {shape}{' serial' if serial else ''}")
    for i, case in enumerate(CONV_WALKS):  # convolutions on the kernel walk (on-chip im2col)
        prog = conv_walk_program(TINY, *case, seed=900 + i)
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, prog.program_addr, prog.length, serial))
            names.append(f"conv walk {case}{' serial' if serial else ''}")
    for words in (47, 64):  # a WEIGHT_UPDATE of many chunks, two in the buffers at once, the last one short
        upd = words_memory([encode(Opcode.WEIGHT_UPDATE, w_addr=0x1000, words=words, v_offset=0x1000, g_offset=0x2000),
                            encode(Opcode.FINISH)], size=0x4000)
        upd[0x1000:0x4000] = rng.standard_normal(0x3000 // 4).astype(np.float32).view(np.uint8)
        jobs.append(RtlJob(upd, 0, 2, registers=((int(Csr.LR), 0x3DCCCCCD), (int(Csr.MOMENTUM), 0x3F666666))))
        names.append(f"weight update of {words} words")
    for func in VectorFunc:  # the vector unit: every function on fp32 and bf16 elements, in place and apart
        for bf16 in (False, True):
            prog = vector_program(TINY, func, bf16, 77 + 150 * bf16 + 31 * func.value, seed=700 + func.value,
                                  in_place=[None, "x", "y"][(func.value + bf16) % 3])
            for serial in (False, True):
                jobs.append(RtlJob(prog.memory, prog.program_addr, prog.length, serial))
                names.append(f"vector {func.name} {'bf16' if bf16 else 'fp32'}{' serial' if serial else ''}")
    for i, pattern in enumerate([None, (2, 8), (3, 4)]):  # C stored as bf16 (a layer's output for the next)
        m_, n_, k_ = (int(x) for x in rng.integers(1, 30, 3))
        a_ = rng.standard_normal((m_, k_)).astype(np.float32)
        b_ = rng.standard_normal((k_, n_)).astype(np.float32)
        prog = compile_gemm(TINY, a_, b_, out_bf16=True, relu=bool(i % 2 == 0)) if pattern is None else \
            compile_sparse_gemm(TINY, a_, b_, *pattern, out_bf16=bool(i % 2))
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, *prog.runs[0], serial, more_runs=tuple(prog.runs[1:])))
            names.append(f"gemm bf16 out {pattern or 'dense'} {m_}x{n_}x{k_}{' serial' if serial else ''}")
    rng_step = np.random.default_rng(600)  # a linear layer's whole BDWP step: five programs on one memory
    w, v = rng_step.standard_normal((10, 21)).astype(np.float32), np.zeros((10, 21), np.float32)
    step = compile_linear_step(TINY, w, v, rng_step.standard_normal((21, 6)).astype(np.float32),
                               rng_step.standard_normal((10, 6)).astype(np.float32), 2, 8, lr=0.1, momentum=0.9,
                               weight_decay=5e-4)
    jobs.append(RtlJob(step.memory, *step.runs[0], more_runs=tuple(step.runs[1:]),
                       registers=tuple((int(r), v) for r, v in step.registers.items())))
    names.append("linear layer step 2:8 in 5 programs")
    for serial in (False, True):  # pre-generation feeding a walk: SPARSIFY, then the FF walk on its records
        rng_w = np.random.default_rng(960)
        prog = conv.compile_sparsified_walk(TINY, rng_w.standard_normal((8, 8, 3, 3)).astype(np.float32),
                                            f32_to_bf16_bits(rng_w.standard_normal((3, 8, 5, 5)).astype(np.float32)),
                                            2, 8, stride=2, padding=1)
        jobs.append(RtlJob(prog.memory, prog.program_addr, prog.length, serial))
        names.append(f"sparsified walk{' serial' if serial else ''}")
    for i, (n_, cin, cout, hw, k, s, pad, pattern) in enumerate(  # pre-generation feeding BP: per-tap A loads
            [(3, 8, 8, 5, 3, 1, 1, (2, 8)), (2, 8, 16, 6, 3, 2, 1, (4, 8))]):
        rng_w = np.random.default_rng(980 + i)
        ho = (hw + 2 * pad - k) // s + 1
        prog = conv.compile_sparsified_bp_walk(
            TINY, rng_w.standard_normal((cout, cin, k, k)).astype(np.float32),
            f32_to_bf16_bits(rng_w.standard_normal((n_, cout, ho, ho)).astype(np.float32)), *pattern, hw, stride=s,
            padding=pad)
        jobs.append(RtlJob(prog.memory, *prog.runs[0], more_runs=tuple(prog.runs[1:])))
        names.append(f"sparsified bp walk {pattern} stride {s}")
    for i, shape in enumerate(WU_WALKS):  # WU on the kernel walk over transposed tiles
        prog = wu_walk_program(TINY, shape, seed=950 + i)
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, *prog.runs[0], serial, more_runs=tuple(prog.runs[1:])))
            names.append(f"wu walk {shape}{' serial' if serial else ''}")
    for i, shape in enumerate(INTERLEAVED):  # a convolution's BP and WU interleaved in one program
        prog = interleaved_backward_program(TINY, shape, seed=970 + i)
        for serial in (False, True):
            jobs.append(RtlJob(prog.memory, *prog.runs[0], serial, more_runs=tuple(prog.runs[1:])))
            names.append(f"interleaved bp+wu {shape}{' serial' if serial else ''}")
    for i, (n_, c, g, size, s_, direction) in enumerate(GROUP_WALKS):  # grouped convs a tile at a time, packed
        prog = group_walk_program(TINY, n_, c, g, size, s_, direction, seed=990 + i)
        jobs.append(RtlJob(prog.memory, *prog.runs[0], i % 2 == 1, more_runs=tuple(prog.runs[1:])))
        names.append(f"group walk {direction} G={g} C={c} N={n_} stride {s_}{' serial' if i % 2 else ''}")
    rng_g = np.random.default_rng(995)  # a grouped conv's WU: the diagonal tiles' WU walks
    x_g = f32_to_bf16_bits(rng_g.standard_normal((6, 6, 4, 4)).astype(np.float32))
    dy_g = f32_to_bf16_bits(rng_g.standard_normal((6, 6, 2, 2)).astype(np.float32))
    prog = compile_group_wu(TINY, dy_g, x_g, 2, 3, stride=2, padding=1)
    jobs.append(RtlJob(prog.memory, *prog.runs[0], more_runs=tuple(prog.runs[1:])))
    names.append("group wu G=2 C=6 N=6 stride 2")
    for serial in (False, True):  # transposing LOADs, and plain ones waiting behind their last block
        image, length = transposing_program(TINY, seed=11)
        jobs.append(RtlJob(image, 0, length, serial))
        names.append(f"transposing loads{' serial' if serial else ''}")
    for job in cnn_iteration_jobs():  # a small residual CNN's whole BDWP iteration, program by program
        jobs.append(RtlJob(job.memory, *job.runs[0], more_runs=tuple(job.runs[1:]),
                           registers=tuple((int(r), v) for r, v in job.registers.items())))
        names.append(f"cnn iteration: {job.name}")
    long = gemm_program(TINY, 64, 200, 40, seed=99)  # longer than the instruction memory: several programs
    assert len(long.runs) > 1
    jobs.append(RtlJob(long.memory, *long.runs[0], more_runs=tuple(long.runs[1:])))
    names.append(f"gemm 64x200x40 in {len(long.runs)} programs")
    linked = long.memory.copy()
    jobs.append(RtlJob(linked, *link_runs(linked, long.runs)))
    names.append(f"linked: gemm 64x200x40 in {len(long.runs)} programs, one START")
    for case in random_cases(TINY, seed=7, count=RANDOM_PER_VARIANT * len(VARIANTS)):
        jobs.append(RtlJob(case.memory, case.program_addr, case.program_len, case.serial,
                           registers=tuple((int(r), v) for r, v in case.registers)))
        names.append(f"random {case.variant} #{len(names)}")
    for name, (image, length, _) in ERROR_RUNS.items():
        jobs.append(RtlJob(image, 0, length))
        names.append(name)
    for i, (word, code) in enumerate(STATIC_CASES):
        jobs.append(RtlJob(static_case_memory(word), 0, 3))
        names.append(f"static case {i} ({code.name})")
    return jobs, names, run_on_verilator(TINY, jobs)


def run_on_verilator(cfg, jobs):
    """The jobs in turn on one Verilated core through the driver (the ``verilator`` transport: memory model and
    bus transactions in its C++ harness), each on a device memory of its image's size."""
    from nmsat.sw.transports.verilator import VerilatorTransport

    transport = VerilatorTransport(cfg, memory_size=4096)
    device = Device(cfg, transport)
    results = []
    for job in jobs:
        transport.resize(job.memory.size)
        results.append(device.run_image(job.memory, job.runs, serial=job.serial, registers=dict(job.registers),
                                        max_cycles=job.max_cycles, check=False))
    transport.close()
    return results


def test_verilator_core_id_register_reads_the_config_hash(verilator_results):
    """The ID register, read over AXI4-Lite on every job, holds the hash of the config the core was built for."""
    *_, results = verilator_results
    assert {r.id for r in results} == {TINY.hash32}


def test_verilator_core_matches_simulator(verilator_results):
    jobs, names, results = verilator_results
    core = CoreModel(TINY)  # one core for the batch, like the RTL
    seen = set()
    for job, name, rtl in zip(jobs, names, results):
        memory = job.memory.copy()
        for reg, value in job.registers:  # written before the run, as the bench does
            core.write_csr(reg, value)
        expected = core.run_sequence(memory, job.runs, serial=job.serial)
        assert expected.race_free, (name, expected.hazards[:3])
        assert_same(expected, memory, rtl, name)
        seen.add(rtl.error)
    # the random programs reach every outcome
    assert seen == set(ErrorCode)


def test_verilator_serial_equals_pipelined(verilator_results):
    jobs, names, results = verilator_results
    gemm = [(job, r) for job, name, r in zip(jobs, names, results) if name.startswith(("gemm", "sparsify "))]
    for (job_p, rtl_p), (job_s, rtl_s) in zip(gemm[0::2], gemm[1::2]):
        assert not job_p.serial and job_s.serial
        assert rtl_p.ok and rtl_s.ok and np.array_equal(rtl_p.memory, rtl_s.memory)
        assert rtl_s.cycles > rtl_p.cycles


def test_verilator_bench_reports_a_core_that_does_not_finish():
    """The cocotb bench's cycle limit: the job ends as timed out, the core is reset, the next job runs."""
    needs_cxx()
    from nmsat.sw.rtl import RtlJob, run_programs

    prog = gemm_program(TINY, 8, 8, 64, seed=1)
    slow, after = run_programs(TINY, [RtlJob(prog.memory, prog.program_addr, prog.length, max_cycles=64),
                                      RtlJob(prog.memory, prog.program_addr, prog.length)])
    assert slow.timed_out and slow.status is Status.BUSY
    memory = prog.memory.copy()
    assert_same(CoreModel(TINY).run(memory, prog.program_addr, prog.length), memory, after)


@pytest.mark.parametrize("memory_model", ["axiram", "axiram-backpressure"])
def test_verilator_with_cocotbext_axiram_gives_the_same_bytes(memory_model):
    """cocotbext-axi's AxiRam has no fixed latency, so only status and bytes are compared there;
    with back-pressure on every channel the core must still finish with the same bytes, later."""
    needs_cxx()
    from nmsat.sw.rtl import RtlJob, run_programs

    progs = [gemm_program(TINY, m, n, k, seed=m + n + k) for m, n, k in ((5, 7, 9), (12, 16, 33))]
    results = run_programs(TINY, [RtlJob(p.memory, p.program_addr, p.length) for p in progs],
                           memory_model=memory_model)
    for prog, rtl in zip(progs, results):
        memory = prog.memory.copy()
        expected = CoreModel(TINY).run(memory, prog.program_addr, prog.length)
        assert rtl.ok and rtl.error is ErrorCode.NONE
        assert np.array_equal(rtl.memory, memory)
        if memory_model == "axiram-backpressure":
            assert rtl.cycles > expected.cycles


OTHER_CONFIGS = [
    SATConfig(name="narrow", rows=2, cols=8, a_depth=64, b_depth=64, acc_depth=32, bus_bytes=4, max_burst_beats=8,
              queue_depth=2, imem_depth=512, mem_read_latency=3, mem_write_latency=1),
    SATConfig(name="wide", rows=8, cols=2, a_depth=64, b_depth=128, acc_depth=32, bus_bytes=4, max_burst_beats=4,
              queue_depth=3, imem_depth=512, mem_read_latency=1, mem_write_latency=5),
    SATConfig(name="short-bursts", rows=4, cols=4, a_depth=64, b_depth=64, acc_depth=32, bus_bytes=8,
              max_burst_beats=2, queue_depth=1, imem_depth=256, mem_read_latency=6, mem_write_latency=3),
    # an odd accumulator depth: the two row-parity banks of ACC differ in size by nothing, one row unused
    SATConfig(name="odd-acc", rows=2, cols=4, a_depth=64, b_depth=64, acc_depth=13, bus_bytes=4, max_burst_beats=4,
              queue_depth=2, imem_depth=512, mem_read_latency=2, mem_write_latency=2),
]


@pytest.mark.parametrize("cfg", OTHER_CONFIGS, ids=[c.name for c in OTHER_CONFIGS])
def test_amaranth_core_matches_simulator_on_other_configs(cfg):
    """Non-square arrays, narrow buses, short bursts, one-entry queues, other latencies: the same contract."""
    prog = gemm_program(cfg, 3, 17, 40, seed=7)
    memory = prog.memory.copy()
    expected = CoreModel(cfg).run(memory, prog.program_addr, prog.length)
    assert expected.ok
    assert_same(expected, memory, run_core_amaranth(cfg, prog.memory, prog.program_addr, prog.length))


def _tall(**changes) -> SATConfig:
    """32 rows: the drain (17 cycles) outlasts a GEMM of a few steps."""
    return dataclasses.replace(SATConfig(name="tall", rows=32, cols=4, a_depth=64, b_depth=64, acc_depth=128,
                                         bus_bytes=8, max_burst_beats=16, queue_depth=8, imem_depth=64,
                                         mem_read_latency=2, mem_write_latency=1), **changes)


def _random_bf16(memory, rng, regions) -> None:
    """Random bf16 values into ``memory`` at each ``(address, shape)``."""
    for addr, shape in regions:
        bits = f32_to_bf16_bits(rng.standard_normal(shape).astype(np.float32)).astype("<u2").view(np.uint8).ravel()
        memory[addr:addr + bits.size] = bits


def _run_both_race_free(cfg, memory, program, at) -> None:
    """``program`` at ``at`` in ``memory``: a race-free run in the simulator, and the same in the RTL."""
    blob = np.frombuffer(to_bytes(program), np.uint8)
    memory[at:at + blob.size] = blob
    expected_memory = memory.copy()
    expected = CoreModel(cfg).run(expected_memory, at, len(program))
    assert expected.ok and expected.race_free
    assert_same(expected, expected_memory, run_core_amaranth(cfg, memory, at, len(program)))


def test_amaranth_core_matches_simulator_when_short_gemms_wait_for_the_drain():
    """32 rows drain in 17 cycles, longer than a GEMM of two steps takes to its latch: back-to-back GEMMs wait
    for the drain reading the accumulator registers (the simulator's rule, which costs cycles here), else a
    result would overwrite rows still being written."""
    cfg = _tall()
    k, gemms = 2, 4
    assert timing.drain_cycles(cfg) + 1 > timing.gemm_mac_cycles(k)  # the case this test is for
    memory = np.zeros(0x4000, np.uint8)
    _random_bf16(memory, np.random.default_rng(5), ((0, (k, cfg.rows)), (0x1000, (gemms * k, cfg.cols))))
    program = [encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=0, rows=k, dram_addr=0, dram_stride=cfg.a_word_bytes),
               encode(Opcode.LOAD, buffer=Buffer.B, sram_addr=0, rows=gemms * k, dram_addr=0x1000,
                      dram_stride=cfg.b_word_bytes, push_next=1)]
    program += [encode(Opcode.GEMM, a_addr=0, b_addr=g * k, acc_addr=g * cfg.rows, k=k, pop_prev=int(g == 0),
                       push_next=int(g == gemms - 1)) for g in range(gemms)]
    program += [encode(Opcode.STORE, buffer=Buffer.ACC, sram_addr=0, rows=gemms * cfg.rows, dram_addr=0x2000,
                       dram_stride=cfg.acc_word_bytes, pop_prev=1), encode(Opcode.FINISH)]
    _run_both_race_free(cfg, memory, program, 0x3000)


def test_amaranth_core_matches_simulator_when_short_sparse_gemms_wait_for_the_drain():
    """The same wait for SPARSE_GEMMs of 1 .. 4 slots (groups × n below the drain's gap: the saturated
    step count the compute unit decides on)."""
    cfg = _tall(b_depth=128, acc_depth=256)
    shapes = [(1, 1), (2, 1), (1, 2), (2, 2), (1, 1), (3, 1)]  # (groups, n) of m = 4
    rng = np.random.default_rng(6)
    memory = np.zeros(0x4000, np.uint8)
    _random_bf16(memory, rng, ((0, (4, cfg.rows)), (0x1000, (4 * 3 * len(shapes), cfg.cols))))
    idx = rng.integers(0, 4, (2, cfg.rows, 4))  # two IDX words: slot j of lane r in nibble j
    memory[0x800:0x800 + 2 * cfg.a_word_bytes] = (idx[..., 0] | idx[..., 1] << 4 | idx[..., 2] << 8 |
                                                  idx[..., 3] << 12).astype("<u2").view(np.uint8).ravel()
    program = [encode(Opcode.LOAD, buffer=Buffer.A, sram_addr=0, rows=4, dram_addr=0, dram_stride=cfg.a_word_bytes),
               encode(Opcode.LOAD, buffer=Buffer.IDX, sram_addr=0, rows=2, dram_addr=0x800, dram_stride=cfg.a_word_bytes),
               encode(Opcode.LOAD, buffer=Buffer.B, sram_addr=0, rows=12 * len(shapes), dram_addr=0x1000,
                      dram_stride=cfg.b_word_bytes, push_next=1)]
    program += [encode(Opcode.SPARSE_GEMM, a_addr=0, b_addr=12 * g, acc_addr=g * cfg.rows, groups=groups, n=n, m_log2=2,
                       idx_addr=0, pop_prev=int(g == 0), push_next=int(g == len(shapes) - 1))
                for g, (groups, n) in enumerate(shapes)]
    program += [encode(Opcode.STORE, buffer=Buffer.ACC, sram_addr=0, rows=len(shapes) * cfg.rows, dram_addr=0x2000,
                       dram_stride=cfg.acc_word_bytes, pop_prev=1), encode(Opcode.FINISH)]
    _run_both_race_free(cfg, memory, program, 0x3800)


@pytest.mark.slow
def test_amaranth_core_with_several_instructions_per_bus_beat():
    """A 256-bit bus carries two instructions per beat (the vcu1525 path: four); 16x16 array. About a minute."""
    cfg = SATConfig(name="bus32", rows=16, cols=16, a_depth=64, b_depth=64, acc_depth=64, bus_bytes=32,
                    max_burst_beats=4, queue_depth=2, imem_depth=256, mem_read_latency=5, mem_write_latency=2)
    prog = gemm_program(cfg, 20, 18, 9, seed=3)
    memory = prog.memory.copy()
    expected = CoreModel(cfg).run(memory, prog.program_addr, prog.length)
    assert expected.ok
    assert_same(expected, memory, run_core_amaranth(cfg, prog.memory, prog.program_addr, prog.length))
