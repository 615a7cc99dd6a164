"""Interleave mapping: a layer's BP and WU tiles as one stream of double-buffered work.

BP (``dX = Wᵀ·dY``) of an N:M layer consumes its B operand (dY) m/n times
faster than dense, so its steps wait on the memory port (a 1×1 conv's BP at
2:8 loads four B words per cycle of MACs), while WU (``dW = dY·Xᵀ``, dense)
keeps the array busy on little traffic.  :func:`interleave` takes the work of
two independent computations as blocks (``nmsat.dataflow.gemm.place_tokens``'s
shape: per output block its steps of LOADs and GEMMs, then its STOREs) and
spreads their steps over each other, so one's transfers run under the
other's MACs: the array does not idle while BP waits for dY.  Each stream is
planned in half of every buffer half (``streams=STREAMS`` of the planners)
and double-buffers in its own share, A, B, IDX and accumulators alike, so a
step waits only for its own stream's step two before (:func:`_encode_run`):
two halves shared by alternating steps would leave each load only the other
stream's compute to hide under.  It pays where BP waits on memory and WU's
port has room (ResNet-50's 1×1 convolutions at 56²); the smaller tiles cost
traffic elsewhere, so ``nmsat.sw.iteration`` keeps it only where the
simulator times it faster (``compile_backward`` interleaves when asked).

Not here: fetching a dY tile once for both (BP reads dY with the batch in
the lanes, WU transposed with the channels in them: two LOADs of the same
bytes; one LOAD writing both buffers is not built), the timing of whole
layers (``nmsat.sw.iteration``).

:func:`compile_backward` compiles a convolution's backward (BP as kernel
walks of the flipped kernel, WU as walks over transposed tiles, both on one
copy of dY) with its operands, interleaved or as two runs one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import Buffer, Opcode, encode, to_bytes
from . import conv
from .gemm import software_pipelined

__all__ = ["STREAMS", "interleave", "BackwardProgram", "compile_backward"]

#: what the planners are told (``streams=STREAMS``) for work that :func:`interleave` will merge
STREAMS = 2


def _regions(cfg: SATConfig) -> dict:
    """Words of a buffer half, per buffer (ACC included); each stream has half of each half."""
    halves = {Buffer.A: cfg.a_depth // 2, Buffer.B: cfg.b_depth // 2, Buffer.IDX: cfg.idx_depth // 2,
              Buffer.ACC: cfg.acc_depth // 2}
    if halves[Buffer.B] // STREAMS % cfg.b_banks:
        raise ValueError(f"config {cfg.name}: a stream's share of a B half ({halves[Buffer.B] // STREAMS} words) "
                         f"must be whole groups of {cfg.b_banks}")
    return halves


def _mover(halves: dict, buffer: Buffer, stream: int, to_half: int):
    """Moves an address of ``buffer`` from where its emitter put it (half h, offset o < a stream's share) to half
    ``to_half`` of ``stream``'s share."""
    half, share = halves[buffer], halves[buffer] // STREAMS

    def move(addr: int, top: int) -> int:
        h, o = divmod(addr, half)
        if top - h * half > share:
            raise ValueError(f"interleave: {buffer.name} words up to {top - h * half} of a half, more than a "
                             f"stream's {share} (plan the work with streams=STREAMS)")
        return to_half * half + stream * share + o
    return move


def _move_step(cfg: SATConfig, step, halves: dict, stream: int, to_half: int):
    """A step's LOADs and GEMMs moved to half ``to_half`` of ``stream``'s share of A, B and IDX."""
    loads, gemms = step
    a, b, i = (_mover(halves, x, stream, to_half) for x in (Buffer.A, Buffer.B, Buffer.IDX))
    by = {Buffer.A: a, Buffer.B: b, Buffer.IDX: i}
    loads = [dict(x, sram_addr=by[x["buffer"]](x["sram_addr"], x["sram_addr"] + x["rows"]
                                                * (cfg.cols if x.get("tile_transpose") else 1))) for x in loads]
    moved = []
    for opcode, args in gemms:
        args = dict(args, a_addr=a(args["a_addr"], args["a_addr"] + 1), b_addr=b(args["b_addr"], args["b_addr"] + 1))
        if opcode is Opcode.SPARSE_GEMM:
            args["idx_addr"] = i(args["idx_addr"], args["idx_addr"] + 1)
        moved.append((opcode, args))
    return loads, moved


def _move_block_acc(cfg: SATConfig, block, halves: dict, stream: int, to_half: int):
    """A block with its accumulators moved to half ``to_half`` of ``stream``'s share."""
    steps, stores = block
    move = _mover(halves, Buffer.ACC, stream, to_half)
    steps = [(loads, [(op, dict(args, acc_addr=move(args["acc_addr"], args["acc_addr"] + cfg.rows)))
                      for op, args in gemms]) for loads, gemms in steps]
    return steps, [dict(x, sram_addr=move(x["sram_addr"], x["sram_addr"] + x["rows"])) for x in stores]


def _spread(first: list, second: list) -> list:
    """The items of two lists in one, each spread evenly over it (ties to ``first``)."""
    order = sorted([((2 * i + 1) * len(second), 0, i) for i in range(len(first))]
                   + [((2 * j + 1) * len(first), 1, j) for j in range(len(second))])
    return [first[i] if which == 0 else second[i] for _, which, i in order]


def _frames(first: list, second: list) -> list[list[tuple[int, tuple]]]:
    """Frames of whole blocks ``(stream, block)``: each block of the stream with fewer blocks, with its share of
    the other's blocks (in order); a run of the core may end between frames."""
    few, many, f = (first, second, 0) if len(first) <= len(second) else (second, first, 1)
    frames = []
    for i, block in enumerate(few):
        lo, hi = i * len(many) // len(few), (i + 1) * len(many) // len(few)
        frames.append([(f, block)] + [(1 - f, x) for x in many[lo:hi]])
    return frames


def _waits(users: list, done_at: list, what: str) -> tuple[set, set]:
    """Token placement for regions used in turn: ``users[t]`` is the earlier item whose region item ``t`` reuses
    (or None), ``done_at[u]`` the position by which ``u`` is issued.  A counting token answers waits in order, so
    item ``t`` waits (pops) only for a user later than every one waited for so far, and only those users push."""
    waits, pushers, latest = set(), set(), -1
    for t, u in enumerate(users):
        if u is not None and u > latest:
            if done_at[u] > t:
                raise ValueError(f"interleave: a wait for {what} comes before its answer is issued")
            latest = u
            waits.add(t)
            pushers.add(u)
    return waits, pushers


def _encode_run(cfg: SATConfig, frames: list) -> list[int]:
    """One run of frames as a program ending in FINISH: the steps of both streams spread over each other; stream
    ``s``'s k-th step in half ``k % 2`` of its share of A, B and IDX, its j-th block in half ``j % 2`` of its
    share of the accumulators.

    Tokens: a step's last LOAD pushes and its first GEMM pops (data ready), as in
    :func:`nmsat.dataflow.gemm.place_tokens`; a block's last GEMM pushes and its first STORE pops (tiles to
    store).  A step whose buffers its stream used two steps before has its first LOAD wait for that step's
    GEMMs (their last pushes back), and a block whose accumulators its stream used two blocks before has its
    first GEMM wait for that block's STOREs (their last pushes back), each by :func:`_waits`: the units run in
    order, so a wait covered by a later one is dropped."""
    halves = _regions(cfg)
    step_count, block_count = [0, 0], [0, 0]
    steps = []  # (loads, gemms, stream, block key, first?, last?, stream step index)
    stores_of = {}
    for frame in frames:
        streams = [[], []]
        for stream, block in frame:
            j = block_count[stream]
            block_count[stream] += 1
            block_steps, stores_of[(stream, j)] = _move_block_acc(cfg, block, halves, stream, j % 2)
            for i, step in enumerate(block_steps):
                streams[stream].append((step, stream, (stream, j), i == 0, i == len(block_steps) - 1))
        for step, stream, key, first, last in _spread(streams[0], streams[1]):
            k = step_count[stream]
            step_count[stream] += 1
            loads, gemms = _move_step(cfg, step, halves, stream, k % 2)
            steps.append((loads, gemms, stream, key, first, last, k))
    # buffers: step t reuses the region of its stream's step two before
    position = {(x[2], x[6]): t for t, x in enumerate(steps)}
    buffer_users = [position.get((x[2], x[6] - 2)) for x in steps]
    load_waits, compute_pushers = _waits(buffer_users, list(range(len(steps))), "a buffer half")
    # accumulators: a block's first step reuses the region of its stream's block two before, answered by its
    # STOREs (issued after the GEMMs of the step following its end)
    end_of = {x[3]: t for t, x in enumerate(steps) if x[5]}
    ends = sorted(end_of, key=end_of.get)
    end_index = {key: e for e, key in enumerate(ends)}
    acc_users = [None] * len(steps)
    for t, x in enumerate(steps):
        stream, j = x[3]
        if x[4] and j >= 2:
            acc_users[t] = end_index[(stream, j - 2)]
    gemm_waits, store_pushers = _waits(acc_users, [end_of[key] + 2 for key in ends], "accumulators")
    step_loads, step_gemms, step_stores = [], [], []
    for t, (loads, gemms, stream, key, first, last, _) in enumerate(steps):
        step_loads.append([encode(Opcode.LOAD, pop_next=int(i == 0 and t in load_waits),
                                  push_next=int(i == len(loads) - 1), **args) for i, args in enumerate(loads)])
        n = len(gemms) - 1
        step_gemms.append([encode(op, pop_prev=int(i == 0), pop_next=int(i == 0 and t in gemm_waits),
                                  push_prev=int(i == n and t in compute_pushers), push_next=int(last and i == n),
                                  **args) for i, (op, args) in enumerate(gemms)])
        mine = stores_of[key] if last else []
        pushes = last and end_index[key] in store_pushers
        step_stores.append([encode(Opcode.STORE, pop_prev=int(i == 0), push_prev=int(pushes and i == len(mine) - 1),
                                   **args) for i, args in enumerate(mine)])
    return software_pipelined(step_loads, step_gemms, step_stores) + [encode(Opcode.FINISH)]


def interleave(cfg: SATConfig, first: list[tuple[list, list]], second: list[tuple[list, list]],
               limit: int | None = -1) -> list[list[int]]:
    """Blocks of two independent computations (each planned with ``streams=STREAMS``, writing different memory)
    as programs of one interleaved stream, each ending in FINISH and of at most ``limit`` instructions (-1: the
    instruction memory; None: one program), cut between frames (:func:`_frames`; a frame too long for one
    program keeps the shared blocks that fit, the others run alone).  A block longer than a program is an error."""
    if not first or not second:
        raise ValueError("interleave: both streams need at least one block")
    limit = cfg.imem_depth if limit == -1 else limit

    def size(frame) -> int:
        return sum(sum(len(l) + len(g) for l, g in block[0]) + len(block[1]) for _, block in frame)
    frames = []
    for frame in _frames(first, second):  # a frame past the limit: the shared blocks that fit, the rest alone
        if limit is None:
            frames.append(frame)
            continue
        sizes = [size([x]) for x in frame]
        k, total = 1, sizes[0]
        while k < len(frame) and total + sizes[k] <= limit - 1:
            total += sizes[k]
            k += 1
        frames.append(frame[:k])
        frames += [[x] for x in frame[k:]]
    runs, current, used = [], [], 0
    for frame in frames:
        n = size(frame)
        if limit is not None and n > limit - 1:
            raise ValueError(f"interleave: a block of {n} instructions does not fit the {limit}-instruction memory")
        if limit is not None and current and used + n > limit - 1:
            runs.append(current)
            current, used = [], 0
        current.append(frame)
        used += n
    runs.append(current)
    return [_encode_run(cfg, run) for run in runs]


@dataclass
class BackwardProgram:
    """A convolution's BP and WU compiled with their operands: memory image, runs, where dX and dW land."""

    cfg: SATConfig
    bp_plans: list
    wu_plan: conv.WuPlan
    run_words: list[list[int]]
    memory: np.ndarray
    runs: list[tuple[int, int]]
    dx: conv.ActLayout
    dx_addr: int
    g_addr: int
    g_row_bytes: int

    def read_dx(self, memory: np.ndarray | None = None) -> np.ndarray:
        """dX ``[N, Cin, H, W]`` as bf16 bits."""
        mem = self.memory if memory is None else memory
        nbytes = self.dx.nbytes(self.cfg)
        return conv.unpack_act(self.cfg, self.dx, mem[self.dx_addr:self.dx_addr + nbytes].view(np.uint16))

    def read_grad(self, memory: np.ndarray | None = None) -> np.ndarray:
        """dW ``[Cout, K]`` fp32, K in BDWP's order (tap-major, Cin innermost)."""
        mem = self.memory if memory is None else memory
        plan, rows = self.wu_plan, -(-self.wu_plan.cout // self.cfg.rows) * self.cfg.rows
        g = mem[self.g_addr:self.g_addr + rows * self.g_row_bytes].view(np.float32).reshape(rows, -1)
        return g[:plan.cout, :plan.taps * plan.cin].copy()


def compile_backward(cfg: SATConfig, weight: np.ndarray, dy_bits: np.ndarray, x_bits: np.ndarray, *,
                     stride: int = 1, padding: int = 0, pattern: tuple[int, int] | None = None,
                     interleaved: bool = True, streams: int = 1) -> BackwardProgram:
    """BP and WU of a square convolution from ``weight [Cout, Cin, k, k]`` (bf16 values; the BP walks' A, N:M
    ``pattern`` along Cout), bf16 ``dY [N, Cout, Ho, Wo]`` and ``X [N, Cin, H, W]``: one copy of dY in BP's
    padded layout, which WU reads inside its border.  ``interleaved``: one stream (:func:`interleave`); else
    BP's runs, then WU's, planned for ``streams`` (2: the plans of the interleaved program, so the two can be
    compared bit for bit)."""
    cout, cin, k, _ = weight.shape
    n, h = x_bits.shape[0], x_bits.shape[-1]
    streams = STREAMS if interleaved else streams
    bp_plans = conv.plan_conv(cfg, n, cin, cout, h, k, stride, padding, "BP", pattern, weight=weight,
                              streams=streams)
    dy, dx = bp_plans[0].src, bp_plans[0].dst
    if dy_bits.shape != (n, cout, dy.h, dy.w):
        raise ValueError(f"compile_backward: dY is {dy_bits.shape}, the convolution's output is "
                         f"{(n, cout, dy.h, dy.w)}")
    x = conv.ActLayout(n, cin, h, h, padding, cfg.cols)
    wu_plan = conv.plan_wu(cfg, cin, cout, k, stride, 1, dy, x, streams)
    addr, parts = 0, []

    def place(arr) -> int:
        nonlocal addr
        at = addr
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        parts.append((at, flat))
        addr = conv._align_up(addr + flat.nbytes)
        return at

    dy_addr = place(conv.pack_act(cfg, dy, dy_bits))
    x_addr = place(conv.pack_act(cfg, x, x_bits))
    dx_addr = place(np.zeros(dx.nbytes(cfg), np.uint8))
    g_row_bytes = conv._align_up(wu_plan.taps * cin * 4, cfg.bus_bytes)
    g_addr = place(np.zeros(-(-cout // cfg.rows) * cfg.rows * g_row_bytes, np.uint8))
    bp_blocks = []
    for plan in bp_plans:
        packed = (conv.pack_walk_weights(cfg, plan) if plan.walk.weights is not None
                  else {"a": np.zeros(max(cfg.a_word_bytes, cfg.b_word_bytes) // 2, np.uint16)})
        a_addr = place(packed["a"])
        idx_addr = place(packed["idx"]) if "idx" in packed else 0
        bp_blocks += conv.walk_blocks(cfg, plan, a_addr=a_addr, src_addr=dy_addr, dst_addr=dx_addr,
                                      idx_addr=idx_addr, first_step=sum(len(b[0]) for b in bp_blocks),
                                      first_block=len(bp_blocks))
    wu_blocks = conv.wu_blocks(cfg, wu_plan, dy_addr=dy_addr, x_addr=x_addr, g_addr=g_addr, g_row_bytes=g_row_bytes)
    if interleaved:
        run_words = interleave(cfg, bp_blocks, wu_blocks)
    else:
        run_words = conv._runs_of(cfg, bp_blocks, -1) + conv._runs_of(cfg, wu_blocks, -1)
    runs = []
    for words in run_words:
        blob = np.frombuffer(to_bytes(words), dtype=np.uint8)
        runs.append((place(blob), len(words)))
    memory = np.zeros(addr, dtype=np.uint8)
    for at, flat in parts:
        memory[at:at + flat.nbytes] = flat
    return BackwardProgram(cfg, bp_plans, wu_plan, run_words, memory, runs, dx, dx_addr, g_addr, g_row_bytes)
