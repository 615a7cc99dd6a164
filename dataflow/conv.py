"""Convolutions on the kernel walk (on-chip im2col): FF, and BP as a convolution of the output gradient.

A convolution never exists as an im2col matrix in memory.  Activations are
kept in the *window layout* (:class:`ActLayout`): ``[Nb][blocks][Hp][Wp][cb]``
B words of ``cols`` batch samples each (``Nb = ceil(N/cols)`` batch groups,
channel blocks of ``cb`` words, a border of ``pad`` zero pixels).  A block of
the program LOADs, per reduction step (one channel block), the A tiles of
``mb`` output-channel tiles and the input *window* of its ``ht × wt`` output
pixels once (one LOAD per window row, contiguous), then one GEMM per
(channel tile, pixel) whose kernel walk (``nmsat.hw.isa.GemmArgs``) reads each
tap's ``cb`` words out of the window: the activations cross the memory port
once per tile, not ``taps`` times.  The STOREs write each pixel's channels
(bf16) straight into the next layer's window layout.

One primitive, :class:`WalkConv`, covers both directions: output pixel ``a``
along an axis is ``o0 + os·a`` of the output tensor and reads input pixel
``a·istride + i·idil + ioff`` (padded coordinates) for tap ``i``.

* FF: ``o0 = 0, os = 1, istride = stride, idil = dilation, ioff = 0`` over X
  padded by ``padding``, taps = the kernel.
* BP: ``dX = Σ W ⋆ dY`` is a convolution of dY with the transposed, flipped
  kernel (:func:`bp_walks`).  Stride 1: one walk over dY padded by
  ``dilation·(k−1) − padding``.  Stride ``s``: ``s²`` phases — the dX pixels
  ``ph + s·a`` take only the taps ``kh`` with ``(ph + padding − kh·dilation) ≡ 0
  (mod s)``, which read consecutive dY rows, so each phase is a stride-1 walk
  with its own sub-kernel; a phase with no tap stores zeros.

The reduction of every GEMM is tap-major with channels innermost (BDWP's
order: N:M groups of BP run along Cout inside a tap).  A (weights) is packed
per output-channel tile and channel block as ``[taps][cb]`` words
(:func:`pack_walk_weights`); sparse A is compressed N:M along each tap's
channels (``cb`` a multiple of m).

WU (:func:`compile_wu`) reduces over pixels and batch, so it needs channels
in the lanes: transposing LOADs (``nmsat.hw.isa.MemArgs.tile_transpose``)
turn R-word tiles of dY and X into words of one (pixel, sample), and a walk
per (tap, Cout tile, Cin tile) runs over rows of output pixels.

Not here: grouped convolutions (:mod:`nmsat.dataflow.groupwalk`: a tile of channels a walk), kernels
past 7 taps a side (GEMMs on im2col operands, :mod:`nmsat.dataflow.layers`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..hw import timing
from ..hw.config import IDX_SLOTS_PER_WORD, SATConfig
from ..hw.isa import Buffer, Opcode, encode, to_bytes, with_flags
from ..hw.sparsity import check_pattern, compress
from .gemm import gemm_args, pack_indices, place_tokens, software_pipelined

__all__ = ["ActLayout", "Axis", "WalkConv", "ff_walk", "bp_walks", "ConvPlan", "plan_walk", "walk_blocks", "walk_programs",
           "pack_act", "unpack_act", "pack_walk_weights", "MAX_TAPS", "bp_pad", "ConvProgram", "walkable", "plan_conv", "WuPlan", "plan_wu", "wu_blocks",
           "wu_programs", "WuProgram", "compile_wu", "wu_walkable", "plan_conv_wu", "memory_image",
           "compile_sparsified_walk", "compile_sparsified_bp_walk",
           "compile_walks"]

#: kernel taps a walk takes along one axis (the 3-bit taps_h / taps_w fields)
MAX_TAPS = 7


@dataclass(frozen=True)
class ActLayout:
    """An activation tensor ``[N, C, H, W]`` in the window layout at some address: B words ``[Nb][blocks][Hp][Wp][cb]``,
    lanes the batch samples, zero border ``pad`` and zero pad channels/lanes (see the module docstring)."""

    batch: int
    channels: int
    h: int
    w: int
    pad: int
    cb: int

    def groups(self, cfg: SATConfig) -> int:
        return -(-self.batch // cfg.cols)

    @property
    def blocks(self) -> int:
        return -(-self.channels // self.cb)

    @property
    def hp(self) -> int:
        return self.h + 2 * self.pad

    @property
    def wp(self) -> int:
        return self.w + 2 * self.pad

    def words(self, cfg: SATConfig) -> int:
        return self.groups(cfg) * self.blocks * self.hp * self.wp * self.cb

    def nbytes(self, cfg: SATConfig) -> int:
        return self.words(cfg) * cfg.b_word_bytes

    def word(self, nb: int, channel_block: int, y: int, x: int) -> int:
        """Index of the first word (channel 0 of the block) of padded pixel (y, x)."""
        return (((nb * self.blocks + channel_block) * self.hp + y) * self.wp + x) * self.cb


def pack_act(cfg: SATConfig, layout: ActLayout, bits: np.ndarray) -> np.ndarray:
    """bf16 bits ``[N, C, H, W]`` → the window layout's words ``[Nb, blocks, Hp, Wp, cb, cols]`` (uint16)."""
    n, c, h, w = bits.shape
    if (n, c, h, w) != (layout.batch, layout.channels, layout.h, layout.w):
        raise ValueError(f"pack_act: tensor {bits.shape} is not the layout's {layout}")
    nb, p = layout.groups(cfg), layout.pad
    out = np.zeros((nb * cfg.cols, layout.blocks * layout.cb, layout.hp, layout.wp), dtype=np.uint16)
    out[:n, :c, p:p + h, p:p + w] = bits
    out = out.reshape(nb, cfg.cols, layout.blocks, layout.cb, layout.hp, layout.wp)
    return np.ascontiguousarray(out.transpose(0, 2, 4, 5, 3, 1))


def unpack_act(cfg: SATConfig, layout: ActLayout, words: np.ndarray) -> np.ndarray:
    """The window layout's words (any shape of the right size) → bf16 bits ``[N, C, H, W]`` (border dropped)."""
    nb, p = layout.groups(cfg), layout.pad
    x = np.asarray(words, dtype=np.uint16).reshape(nb, layout.blocks, layout.hp, layout.wp, layout.cb, cfg.cols)
    x = x.transpose(0, 5, 1, 4, 2, 3).reshape(nb * cfg.cols, layout.blocks * layout.cb, layout.hp, layout.wp)
    return np.ascontiguousarray(x[:layout.batch, :layout.channels, p:p + layout.h, p:p + layout.w])


@dataclass(frozen=True)
class Axis:
    """One axis of a walk: ``count`` output pixels at ``o0 + os·a``; tap ``i`` (of ``taps``) reads input pixel
    ``a·istride + i·idil + ioff`` of the padded input."""

    count: int
    o0: int
    os: int
    istride: int
    idil: int
    ioff: int
    taps: int

    def window(self, first: int, pixels: int) -> tuple[int, int]:
        """(first input pixel, input pixels) the output pixels ``first .. first+pixels-1`` read."""
        return first * self.istride + self.ioff, (pixels - 1) * self.istride + (self.taps - 1) * self.idil + 1


@dataclass(frozen=True)
class WalkConv:
    """``out[n, o, y(a), x(b)] = Σ_{i, j, c} weights[o, i, j, c] · in[n, c, row(a, i), col(b, j)]``: the axes say which
    pixels; ``weights`` ``[Cout, taps_h, taps_w, Cin]`` (fp32) are the taps in walk order (``None`` for a phase with
    no tap: its pixels are zeros)."""

    cin: int
    cout: int
    rows: Axis
    cols: Axis
    weights: np.ndarray | None
    kernel_taps: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # the kernel's (kh, kw) of each walk tap


def ff_walk(weight: np.ndarray, h: int, w: int, stride: int, padding: int, dilation: int) -> WalkConv:
    """FF of ``conv2d(x, weight)`` (``weight [Cout, Cin, kh, kw]``) over X padded by ``padding``."""
    cout, cin, kh, kw = weight.shape
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    rows, cols = Axis(ho, 0, 1, stride, dilation, 0, kh), Axis(wo, 0, 1, stride, dilation, 0, kw)
    return WalkConv(cin, cout, rows, cols, np.ascontiguousarray(np.asarray(weight, np.float32).transpose(0, 2, 3, 1)),
                    (tuple(range(kh)), tuple(range(kw))))


def bp_pad(kernel: int, stride: int, padding: int, dilation: int) -> int:
    """The zero border dY needs for :func:`bp_walks` (each side)."""
    return max(dilation * (kernel - 1) - padding, 0) + stride


def _bp_axis(size: int, out_size: int, kernel: int, stride: int, padding: int, dilation: int, phase: int,
             pad: int) -> tuple[Axis, list[int]]:
    """The walk of one phase along one axis of BP and the kernel taps it takes (flipped: dY rows ascending)."""
    taps = [k for k in range(kernel) if (phase + padding - k * dilation) % stride == 0]
    count = len(range(phase, size, stride))
    taps.sort(reverse=True)  # larger kh reads the earlier dY row
    if not taps:
        return Axis(count, phase, stride, 1, 1, 0, 0), []
    q = [(phase + padding - k * dilation) // stride for k in taps]  # dY row of pixel a = 0 for each tap
    idil = q[1] - q[0] if len(q) > 1 else 1
    return Axis(count, phase, stride, 1, idil, q[0] + pad, len(taps)), taps


def bp_walks(weight: np.ndarray, h: int, w: int, stride: int, padding: int, dilation: int) -> list[WalkConv]:
    """BP of ``conv2d(x, weight)``: ``dX [N, Cin, h, w]`` from ``dY`` padded by :func:`bp_pad`, one walk per phase."""
    cout, cin, kh, kw = weight.shape
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    pad = bp_pad(max(kh, kw), stride, padding, dilation)
    wt = np.asarray(weight, np.float32).transpose(1, 2, 3, 0)  # [Cin, kh, kw, Cout]
    out = []
    for ph in range(min(stride, h)):
        rows, taps_h = _bp_axis(h, ho, kh, stride, padding, dilation, ph, pad)
        for pw in range(min(stride, w)):
            cols, taps_w = _bp_axis(w, wo, kw, stride, padding, dilation, pw, pad)
            weights = np.ascontiguousarray(wt[:, taps_h][:, :, taps_w]) if taps_h and taps_w else None
            out.append(WalkConv(cout, cin, rows, cols, weights, (tuple(taps_h), tuple(taps_w))))
    return out


@dataclass(frozen=True)
class ConvPlan:
    """How one walk is cut: output tiles of ``ht × wt`` pixels and ``mb`` channel tiles per block; one reduction
    step per input channel block (``src.cb`` words per tap)."""

    walk: WalkConv
    src: ActLayout
    dst: ActLayout
    ht: int
    wt: int
    mb: int
    pattern: tuple[int, int] | None
    estimated_cycles: int

    @property
    def taps(self) -> int:
        return self.walk.rows.taps * self.walk.cols.taps

    def a_words(self) -> int:
        """A words (slots) of one channel tile and channel block: every tap's cb words, or their kept slots."""
        cb = self.src.cb
        return self.taps * (cb if self.pattern is None else cb // self.pattern[1] * self.pattern[0])

    def window(self, ht: int, wt: int) -> tuple[int, int]:
        return self.walk.rows.window(0, ht)[1], self.walk.cols.window(0, wt)[1]


def _check_walk(cfg: SATConfig, walk: WalkConv, src: ActLayout, dst: ActLayout, pattern) -> None:
    if walk.rows.taps > MAX_TAPS or walk.cols.taps > MAX_TAPS:
        raise ValueError(f"conv: a kernel walk takes at most {MAX_TAPS} taps per axis, got "
                         f"{walk.rows.taps} × {walk.cols.taps}")
    if src.channels != walk.cin or dst.channels != walk.cout or src.batch != dst.batch:
        raise ValueError(f"conv: layouts {src} → {dst} do not fit a walk of {walk.cin} → {walk.cout} channels")
    if dst.cb % cfg.rows:
        raise ValueError(f"conv: the output's channel block ({dst.cb}) must be a multiple of rows ({cfg.rows}): a "
                         f"STORE writes a tile's {cfg.rows} channels as one run")
    if pattern is not None:
        check_pattern(*pattern)
        if pattern[1] not in cfg.sparse_m:
            raise ValueError(f"config {cfg.name}: N:M with m = {pattern[1]} is not supported (sparse_m = {cfg.sparse_m})")
        if src.cb % pattern[1] or walk.cin % pattern[1]:
            raise ValueError(f"conv: a sparse walk needs the input channels ({walk.cin}) and their block ({src.cb}) "
                             f"in whole groups of m = {pattern[1]}")
    for axis in (walk.rows, walk.cols):
        if axis.taps:
            lo, span = axis.window(0, axis.count)
            if lo < 0 or lo + span > (src.hp if axis is walk.rows else src.wp):
                raise ValueError(f"conv: the walk reads outside the input's border ({axis}, layout {src})")


def _halves(cfg: SATConfig, pattern, streams: int = 1) -> tuple[int, int, int, int]:
    """Words of one half of A, B (whole groups of m), IDX and the accumulators (one stream's share of each, with
    ``streams`` interleaved: ``nmsat.dataflow.interleave``)."""
    m = pattern[1] if pattern else 1
    return (cfg.a_depth // 2 // streams, cfg.b_depth // 2 // streams // m * m, cfg.idx_depth // 2 // streams,
            cfg.acc_depth // 2 // streams)


def plan_walk(cfg: SATConfig, walk: WalkConv, src: ActLayout, dst: ActLayout,
              pattern: tuple[int, int] | None = None, streams: int = 1) -> ConvPlan:
    """The tile shape (pixels and channel tiles per block) of lowest estimated cycles that fits the buffers and the
    walk's stride fields (``streams`` 2: one of two interleaved streams, in half of each buffer half)."""
    _check_walk(cfg, walk, src, dst, pattern)
    a_half, b_half, idx_half, acc_half = _halves(cfg, pattern, streams)
    R = cfg.rows
    mt = -(-walk.cout // R)
    cb = src.cb
    bpw = cfg.b_word_bytes // cfg.bus_bytes
    best, best_key = None, None
    per_tap = cb if pattern is None else cb // pattern[1] * pattern[0]
    taps = walk.rows.taps * walk.cols.taps
    for ht in range(1, walk.rows.count + 1):
        for wt in range(1, walk.cols.count + 1):
            for mb in range(1, mt + 1):
                if mb * ht * wt * R > acc_half:
                    break
                hh, ww = walk.rows.window(0, ht)[1], walk.cols.window(0, wt)[1]
                a_words = max(taps, 1) * per_tap
                idx = -(-a_words // IDX_SLOTS_PER_WORD) if pattern else 0
                if (hh * ww * cb > b_half or mb * a_words > a_half or mb * idx > idx_half
                        or walk.cols.idil * cb >= 1 << 11 or walk.rows.idil * ww * cb >= 1 << 14):
                    continue
                blocks = -(-walk.rows.count // ht) * -(-walk.cols.count // wt) * -(-mt // mb) * src.groups(cfg)
                loads = (mb * (a_words + idx) * (cfg.a_word_bytes // cfg.bus_bytes) + hh * ww * cb * bpw
                         + cfg.mem_read_latency)
                gemm = max(timing.gemm_mac_cycles(a_words) + 1, timing.drain_cycles(cfg))
                per_step = max(loads, mb * ht * wt * gemm)
                cost = blocks * (src.blocks * per_step + mb * ht * wt * R * (cfg.acc_word_bytes // 2 // cfg.bus_bytes))
                traffic = blocks * src.blocks * loads  # ties (compute-bound tiles) go to the least memory traffic
                if best is None or (cost, traffic) < best_key:
                    best, best_key = ConvPlan(walk, src, dst, ht, wt, mb, pattern, cost), (cost, traffic)
    if best is None:
        raise ValueError(f"config {cfg.name}: no tile of this walk fits the buffers (channel block {cb}, "
                         f"{taps} taps): use a smaller channel block")
    return best


def pack_walk_weights(cfg: SATConfig, plan: ConvPlan) -> dict[str, np.ndarray]:
    """A (and IDX, sparse) of a walk: per channel tile and channel block, ``[taps][cb]`` words of ``rows`` lanes
    (``"a"`` ``[Mt, blocks, words, R]``; sparse: the kept slots and ``"idx"`` ``[Mt, blocks, idx words, R]``)."""
    walk, src, R = plan.walk, plan.src, cfg.rows
    mt, blocks, cb = -(-walk.cout // R), src.blocks, src.cb
    w = np.zeros((mt * R, walk.rows.taps, walk.cols.taps, blocks * cb), dtype=np.float32)
    w[:walk.cout, :, :, :walk.cin] = walk.weights
    w = w.reshape(mt * R, plan.taps, blocks, cb).transpose(0, 2, 1, 3)  # [Cout, blocks, taps, cb]
    if plan.pattern is None:
        from ..hw.numerics import f32_to_bf16_bits
        a = f32_to_bf16_bits(w).reshape(mt, R, blocks, plan.taps * cb)
        return {"a": np.ascontiguousarray(a.transpose(0, 2, 3, 1))}
    n, m = plan.pattern
    values, idx = compress(w.reshape(mt * R * blocks, plan.taps * cb), n, m)
    slots = values.shape[1]
    values = values.reshape(mt, R, blocks, slots).transpose(0, 2, 1, 3).reshape(mt * blocks * R, slots)
    idx = idx.reshape(mt, R, blocks, slots).transpose(0, 2, 1, 3).reshape(mt * blocks * R, slots)
    words = -(-slots // IDX_SLOTS_PER_WORD)
    packed_idx = pack_indices(cfg, idx).reshape(mt, blocks, words, R)
    a = values.reshape(mt, blocks, R, slots).transpose(0, 1, 3, 2)
    return {"a": np.ascontiguousarray(a), "idx": packed_idx}


def walk_blocks(cfg: SATConfig, plan: ConvPlan, *, a_addr: int, src_addr: int, dst_addr: int, idx_addr: int = 0,
                first_step: int = 0, first_block: int = 0, relu: bool = False,
                a_tile_stride: int | None = None, a_taps=None) -> list[tuple[list, list]]:
    """The work of one walk as blocks for :func:`nmsat.dataflow.gemm.place_tokens` (steps of LOADs and GEMMs, then
    STOREs): A (``[Mt, blocks, words, R]``) at ``a_addr``, the input in ``plan.src`` at ``src_addr``, the output
    stored (bf16) in ``plan.dst`` at ``dst_addr``.  A walk with no taps (a BP phase no tap reaches) stores zeros:
    a one-word GEMM of a zero A word it loads from ``a_addr`` (the caller leaves one there).  When the output's
    channel block is one tile (``dst.cb == rows``) a row of a tile's pixels is one STORE; ``relu``: the STOREs
    apply ReLU.  ``a_tile_stride`` (one channel block): bytes from one Cout tile's A words (and IDX words) to the
    next's — the sparsifier's FF records (``nmsat.dataflow.sparsify``: with the whole Cin in one block a walk's
    A is the FF form of ``W[Cout, K]``, K tap-major) instead of the packed arrays.  ``a_taps(mi, block, tap)``
    (sparse): the byte addresses (slot words, IDX words) of one tap's slots for output tile ``mi`` and input
    channel block ``block`` — a LOAD per tap, as from the sparsifier's BP records; when a tap's slots do not
    fill whole IDX words, one GEMM per tap (each starting its indices on a word)."""
    if a_tile_stride is not None and plan.src.blocks != 1:
        raise ValueError("conv: a walk reads the sparsifier's records only with the whole Cin in one channel block")
    walk, src, dst, R = plan.walk, plan.src, plan.dst, cfg.rows
    a_half, b_half, idx_half, acc_half = _halves(cfg, plan.pattern)
    aw, ab = cfg.a_word_bytes, cfg.b_word_bytes
    mt = -(-walk.cout // R)
    a_words = plan.a_words()
    idx_words = -(-a_words // IDX_SLOTS_PER_WORD) if plan.pattern else 0
    per_tap = a_words // max(plan.taps, 1)
    per_tap_idx = -(-per_tap // IDX_SLOTS_PER_WORD)
    split = a_taps is not None and per_tap % IDX_SLOTS_PER_WORD != 0  # a GEMM per tap
    if a_taps is not None:
        if plan.pattern is None:
            raise ValueError("conv: per-tap A (a_taps) is for sparse walks")
        idx_words = plan.taps * per_tap_idx
        if plan.mb * idx_words > idx_half:
            raise ValueError(f"conv: {plan.mb} tiles of {idx_words} IDX words per tap-aligned tile exceed an IDX half")
    cb = src.cb
    blocks = []
    step_index, block_index = first_step, first_block
    for nb in range(src.groups(cfg)):
        for m0 in range(0, mt, plan.mb):
            mis = range(m0, min(m0 + plan.mb, mt))
            for y0 in range(0, walk.rows.count, plan.ht):
                for x0 in range(0, walk.cols.count, plan.wt):
                    ys = range(y0, min(y0 + plan.ht, walk.rows.count))
                    xs = range(x0, min(x0 + plan.wt, walk.cols.count))
                    acc_base = (block_index % 2) * acc_half
                    tiles = [(x, mi, a, b) for x, mi in enumerate(mis) for a in ys for b in xs]
                    steps = []
                    for cblk in range(src.blocks if plan.taps else 1):
                        half = step_index % 2
                        loads, gemms = [], []
                        if not plan.taps:  # zeros: a zero A word times a zero B word
                            loads.append(dict(buffer=Buffer.A, sram_addr=half * a_half, rows=1, dram_addr=a_addr,
                                              dram_stride=aw))
                            loads.append(dict(buffer=Buffer.B, sram_addr=half * b_half, rows=1,
                                              dram_addr=a_addr, dram_stride=ab))
                            for t, (x, mi, a, b) in enumerate(tiles):
                                gemms.append((Opcode.GEMM, dict(a_addr=half * a_half, b_addr=half * b_half,
                                                                acc_addr=acc_base + t * R, k=1, accumulate=0)))
                        else:
                            for x, mi in enumerate(mis):
                                tile_a = (mi * src.blocks + cblk) * a_words * aw
                                tile_i = (mi * src.blocks + cblk) * idx_words * aw
                                if a_tile_stride is not None:
                                    tile_a = tile_i = mi * a_tile_stride
                                if a_taps is not None:
                                    for ti in range(plan.taps):
                                        slot_at, idx_at = a_taps(mi, cblk, ti)
                                        loads.append(dict(buffer=Buffer.A, rows=per_tap, dram_addr=slot_at,
                                                          sram_addr=half * a_half + x * a_words + ti * per_tap,
                                                          dram_stride=aw))
                                        loads.append(dict(buffer=Buffer.IDX, rows=per_tap_idx, dram_addr=idx_at,
                                                          sram_addr=half * idx_half + x * idx_words + ti * per_tap_idx,
                                                          dram_stride=aw))
                                    continue
                                loads.append(dict(buffer=Buffer.A, sram_addr=half * a_half + x * a_words, rows=a_words,
                                                  dram_addr=a_addr + tile_a, dram_stride=aw))
                                if plan.pattern:
                                    loads.append(dict(buffer=Buffer.IDX, sram_addr=half * idx_half + x * idx_words,
                                                      rows=idx_words, dram_addr=idx_addr + tile_i, dram_stride=aw))
                            wy, hh = walk.rows.window(y0, len(ys))
                            wx, ww = walk.cols.window(x0, len(xs))
                            for r in range(hh):
                                loads.append(dict(buffer=Buffer.B, sram_addr=half * b_half + r * ww * cb, rows=ww * cb,
                                                  dram_addr=src_addr + src.word(nb, cblk, wy + r, wx) * ab,
                                                  dram_stride=ab))
                            walk_fields = dict(taps_h=walk.rows.taps, taps_w=walk.cols.taps,
                                               tap_h_stride=walk.rows.idil * ww * cb, tap_w_stride=walk.cols.idil * cb)
                            for t, (x, mi, a, b) in enumerate(tiles):
                                py, px = (a - y0) * walk.rows.istride, (b - x0) * walk.cols.istride
                                units = cb if plan.pattern is None else cb // plan.pattern[1]
                                if split:  # one GEMM per tap, its slots and indices on their own words
                                    for ti in range(plan.taps):
                                        i, j = divmod(ti, walk.cols.taps)
                                        gemms.append(gemm_args(
                                            plan.pattern, units, half * idx_half + x * idx_words + ti * per_tap_idx,
                                            a_addr=half * a_half + x * a_words + ti * per_tap,
                                            b_addr=(half * b_half + (py * ww + px) * cb + i * walk_fields["tap_h_stride"]
                                                    + j * walk_fields["tap_w_stride"]),
                                            acc_addr=acc_base + t * R, accumulate=int(cblk > 0 or ti > 0)))
                                    continue
                                gemms.append(gemm_args(plan.pattern, units, half * idx_half + x * idx_words,
                                                       a_addr=half * a_half + x * a_words,
                                                       b_addr=half * b_half + (py * ww + px) * cb,
                                                       acc_addr=acc_base + t * R, accumulate=int(cblk > 0),
                                                       **walk_fields))
                        steps.append((loads, gemms))
                        step_index += 1
                    stores = []
                    run = len(xs) if dst.cb == R and walk.cols.os == 1 else 1  # pixels per STORE
                    for t, (x, mi, a, b) in enumerate(tiles):
                        if (b - x0) % run:
                            continue
                        c = mi * R
                        y, xx = walk.rows.o0 + walk.rows.os * a + dst.pad, walk.cols.o0 + walk.cols.os * b + dst.pad
                        stores.append(dict(buffer=Buffer.ACC, sram_addr=acc_base + t * R, rows=R * run, bf16=1,
                                           relu=int(relu),
                                           dram_addr=dst_addr + (dst.word(nb, c // dst.cb, y, xx) + c % dst.cb) * ab,
                                           dram_stride=ab))
                    blocks.append((steps, stores))
                    block_index += 1
    return blocks


def walk_programs(cfg: SATConfig, plans: list[ConvPlan], *, a_addrs: list[int], src_addr: int, dst_addr: int,
                  idx_addrs: list[int] | None = None, limit: int | None = -1, relu: bool = False,
                  a_tile_stride: int | None = None) -> list[list[int]]:
    """The walks of one direction as programs (each ending in FINISH) of at most ``limit`` instructions (default:
    the instruction memory; None: one program), cut between blocks: each run of the core starts its tokens afresh."""
    blocks = []
    for i, plan in enumerate(plans):
        blocks += walk_blocks(cfg, plan, a_addr=a_addrs[i], src_addr=src_addr, dst_addr=dst_addr,
                              idx_addr=(idx_addrs or [0] * len(plans))[i], first_step=sum(len(b[0]) for b in blocks),
                              first_block=len(blocks), relu=relu, a_tile_stride=a_tile_stride)
    # each run of the core starts its tokens afresh (place_tokens from step 0); the halves follow the blocks' own
    # addresses, so a run may start in either half
    return _runs_of(cfg, blocks, limit)


@dataclass
class ConvProgram:
    """One direction of a convolution compiled with its operands: the memory image, its programs (``runs``
    ``(program_addr, length)``, run one after another; ``run_words`` their instructions), the layouts."""

    cfg: SATConfig
    plans: list[ConvPlan]
    run_words: list[list[int]]
    memory: np.ndarray
    runs: list[tuple[int, int]]
    src: ActLayout
    dst: ActLayout
    dst_addr: int

    def _single(self):
        if len(self.runs) != 1:
            raise ValueError(f"this convolution runs as {len(self.runs)} programs: use `runs`")
        return self.runs[0]

    @property
    def program_addr(self) -> int:
        return self._single()[0]

    @property
    def length(self) -> int:
        return self._single()[1]

    @property
    def words(self) -> list[int]:
        self._single()
        return self.run_words[0]

    def read_output(self, memory: np.ndarray | None = None) -> np.ndarray:
        """The output tensor ``[N, C, H, W]`` as bf16 bits, read from a memory image (default: this one)."""
        mem = self.memory if memory is None else memory
        nbytes = self.dst.nbytes(self.cfg)
        return unpack_act(self.cfg, self.dst, mem[self.dst_addr:self.dst_addr + nbytes].view(np.uint16))


def _align_up(x: int, a: int = 4096) -> int:
    return -(-x // a) * a


def memory_image(parts: list[tuple[int, np.ndarray]], top: int, run_words: list[list[int]]):
    """A program's memory image: each ``(address, array)`` of ``parts`` (its bytes), then the programs of
    ``run_words`` from ``top``, each page aligned; returns (memory, runs ``(program_addr, length)``)."""
    blobs = [np.frombuffer(to_bytes(words), dtype=np.uint8) for words in run_words]
    runs = []
    for words, blob in zip(run_words, blobs):
        runs.append((top, len(words)))
        top = _align_up(top + len(blob))
    memory = np.zeros(top, dtype=np.uint8)
    for at, arr in parts:
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        memory[at:at + flat.size] = flat
    for (at, _), blob in zip(runs, blobs):
        memory[at:at + len(blob)] = blob
    return memory, runs


def compile_walks(cfg: SATConfig, walks: list[WalkConv], src: ActLayout, src_bits: np.ndarray, dst: ActLayout,
                  pattern: tuple[int, int] | None = None, *, relu: bool = False) -> ConvProgram:
    """Compile the walks of one convolution direction (:func:`ff_walk`, or :func:`bp_walks`) on an input tensor
    (bf16 bits ``[N, C, H, W]``, stored in ``src``) into one program whose output lands in ``dst`` (``relu``:
    ReLU fused into the STOREs)."""
    plans = [plan_walk(cfg, w, src, dst, pattern if w.weights is not None else None) for w in walks]
    addr = 0
    src_addr, addr = addr, _align_up(src.nbytes(cfg))
    dst_addr, addr = addr, _align_up(addr + dst.nbytes(cfg))
    parts, a_addrs, idx_addrs = [], [], []
    for plan in plans:
        if plan.walk.weights is None:
            packed = {"a": np.zeros(max(cfg.a_word_bytes, cfg.b_word_bytes) // 2, np.uint16)}
        else:
            packed = pack_walk_weights(cfg, plan)
        a_addrs.append(addr)
        parts.append((addr, packed["a"]))
        addr = _align_up(addr + packed["a"].nbytes)
        idx_addrs.append(addr)
        if "idx" in packed:
            parts.append((addr, packed["idx"]))
            addr = _align_up(addr + packed["idx"].nbytes)
    run_words = walk_programs(cfg, plans, a_addrs=a_addrs, src_addr=src_addr, dst_addr=dst_addr, idx_addrs=idx_addrs,
                              relu=relu)
    memory, runs = memory_image([(src_addr, pack_act(cfg, src, src_bits))] + parts, addr, run_words)
    return ConvProgram(cfg, plans, run_words, memory, runs, src, dst, dst_addr)


def walkable(kernel: int, groups: int = 1) -> bool:
    """Whether a convolution runs as kernel walks (else as GEMMs on im2col operands)."""
    return kernel <= MAX_TAPS and groups == 1


def plan_conv(cfg: SATConfig, batch: int, cin: int, cout: int, size: int | tuple[int, int], kernel: int,
              stride: int = 1, padding: int = 0, direction: str = "FF", pattern: tuple[int, int] | None = None,
              weight: np.ndarray | None = None, streams: int = 1) -> list[ConvPlan]:
    """The walks of one direction of a convolution (square kernel; ``size`` the input's side, or its
    ``(h, w)``) with their plans: the input's channel block is the one of lowest estimated cycles among the
    channel count and its halvings (whole groups of m when sparse); the output's is ``rows`` (a row of pixels
    per STORE).  ``weight`` (default zeros) only feeds the walks' weights."""
    if direction not in ("FF", "BP"):
        raise ValueError(f"conv: direction must be FF or BP, got {direction!r}")
    w = np.zeros((cout, cin, kernel, kernel), np.float32) if weight is None else weight
    h_in, w_in = (size, size) if isinstance(size, int) else size
    ho, wo = ((s + 2 * padding - kernel) // stride + 1 for s in (h_in, w_in))
    if direction == "FF":
        walks, channels, pad, out_ch = [ff_walk(w, h_in, w_in, stride, padding, 1)], cin, padding, cout
        (h, wd), (out_h, out_w) = (h_in, w_in), (ho, wo)
    else:
        walks = bp_walks(w, h_in, w_in, stride, padding, 1)
        channels, pad, out_ch = cout, bp_pad(kernel, stride, padding, 1), cin
        (h, wd), (out_h, out_w) = (ho, wo), (h_in, w_in)
    unit = pattern[1] if pattern else 1
    candidates, cb = [], -(-channels // unit) * unit
    while cb >= unit:
        candidates.append(cb)
        if cb == unit:
            break
        cb = max(unit, -(-(cb // 2) // unit) * unit)
    dst = ActLayout(batch, out_ch, out_h, out_w, 0, -(-out_ch // cfg.rows) * cfg.rows if out_ch < cfg.rows else cfg.rows)
    best, errors = None, []
    for cb in candidates:
        src = ActLayout(batch, channels, h, wd, pad, cb)
        try:
            plans = [plan_walk(cfg, wk, src, dst, pattern if wk.weights is not None else None, streams)
                     for wk in walks]
        except ValueError as e:
            errors.append(str(e))
            continue
        cost = sum(p.estimated_cycles for p in plans)
        if best is None or cost < best[0]:
            best = (cost, plans)
    if best is None:
        raise ValueError(f"conv {cin}→{cout} k{kernel} s{stride} at {h_in}×{w_in}: no channel block fits ({errors[-1]})")
    return best[1]


# ---------------------------------------------------------------------- WU on the kernel walk


@dataclass(frozen=True)
class WuPlan:
    """WU ``dW[co, tap, ci] = Σ_{n, y, x} dY[n, co, y, x] · X[n, ci, y·s + i·d, x·s + j·d]`` (padded X) as walks
    over transposed tiles: output-pixel tiles of ``ht × wt`` per reduction step (with every batch group), ``mb``
    Cout tiles × ``nb`` Cin tiles × ``tb`` taps per block of accumulators."""

    cin: int
    cout: int
    kernel: int
    stride: int
    dilation: int
    dy: ActLayout  # the output gradient (interior read)
    x: ActLayout  # the input, its border the conv's padding
    ht: int
    wt: int
    mb: int
    nb: int
    tb: int
    estimated_cycles: int

    @property
    def taps(self) -> int:
        return self.kernel * self.kernel

    def window(self, ht: int, wt: int) -> tuple[int, int]:
        span = (self.kernel - 1) * self.dilation + 1
        return (ht - 1) * self.stride + span, (wt - 1) * self.stride + span


def _wu_fits(cfg: SATConfig, stride: int, ht: int, wt: int, hh: int, ww: int, mb: int, nb: int, tb: int,
             streams: int) -> bool:
    C = cfg.cols
    a_half, b_half, _, acc_half = _halves(cfg, None, streams)
    rows_ok = ht <= MAX_TAPS and (stride == 1 or wt <= MAX_TAPS)
    strides_ok = ww * C * stride < 1 << 14 and stride * C < 1 << 11 and wt * C < 1 << 16
    return (rows_ok and strides_ok and mb * ht * wt * C <= a_half and nb * hh * ww * C <= b_half
            and tb * mb * nb * cfg.rows <= acc_half)


def plan_wu(cfg: SATConfig, cin: int, cout: int, kernel: int, stride: int, dilation: int, dy: ActLayout,
            x: ActLayout, streams: int = 1) -> WuPlan:
    """The WU tile shape of lowest estimated cycles (a core with rows == cols; Cin in whole ``cols`` tiles;
    ``streams`` 2: one of two interleaved streams, in half of each buffer half)."""
    R, C = cfg.rows, cfg.cols
    if R != C:
        raise ValueError(f"config {cfg.name}: WU walks transpose R × cols tiles, so rows must equal cols")
    if cin % C or dy.cb % R or x.cb % C:
        raise ValueError(f"conv WU: Cin ({cin}) and the channel blocks ({dy.cb}, {x.cb}) must be whole tiles of {C}")
    if kernel > MAX_TAPS:
        raise ValueError(f"conv WU: a kernel walk takes at most {MAX_TAPS} taps per axis, got {kernel}")
    ho, wo = dy.h, dy.w
    mt, nt = -(-cout // R), cin // C
    taps = kernel * kernel
    best = None
    for tb in sorted({-(-taps // g) for g in range(1, taps + 1)}, reverse=True):  # taps per block, in even groups
        for ht in range(1, min(ho, MAX_TAPS) + 1):
            for wt in range(1, wo + 1):
                for mb in range(1, mt + 1):
                    for nb in range(1, nt + 1):
                        hh, ww = ((ht - 1) * stride + (kernel - 1) * dilation + 1,
                                  (wt - 1) * stride + (kernel - 1) * dilation + 1)
                        if not _wu_fits(cfg, stride, ht, wt, hh, ww, mb, nb, tb, streams):
                            continue
                        steps = dy.groups(cfg) * -(-ho // ht) * -(-wo // wt)
                        blocks = -(-mt // mb) * -(-nt // nb) * -(-taps // tb)
                        loads = ((mb * ht * wt + nb * hh * ww) * C + (mb * ht + nb * hh) * (C + 2)
                                 + cfg.mem_read_latency)
                        gemms = tb * mb * nb * (ht * wt * C + 2)
                        cost = blocks * (steps * max(loads, gemms)
                                         + tb * mb * nb * R * (cfg.acc_word_bytes // cfg.bus_bytes))
                        if best is None or cost < best.estimated_cycles:
                            best = WuPlan(cin, cout, kernel, stride, dilation, dy, x, ht, wt, mb, nb, tb, cost)
    if best is None:
        raise ValueError(f"config {cfg.name}: no WU tile of this convolution fits the buffers")
    return best


def wu_blocks(cfg: SATConfig, plan: WuPlan, *, dy_addr: int, x_addr: int, g_addr: int, g_row_bytes: int,
              first_step: int = 0, first_block: int = 0) -> list[tuple[list, list]]:
    """The work of a WU walk as blocks for :func:`nmsat.dataflow.gemm.place_tokens`: dW (fp32) stored row-major,
    row ``co`` at ``g_addr + co · g_row_bytes``, columns in BDWP's K order (tap-major, Cin innermost)."""
    R, C = cfg.rows, cfg.cols
    a_half, b_half, _, acc_half = _halves(cfg, None)
    ab = cfg.b_word_bytes
    dy, x, s, d = plan.dy, plan.x, plan.stride, plan.dilation
    mt, nt = -(-plan.cout // R), plan.cin // C
    blocks = []
    step_index, block_index = first_step, first_block
    for m0, n0, t0 in [(m0, n0, t0) for m0 in range(0, mt, plan.mb) for n0 in range(0, nt, plan.nb)
                       for t0 in range(0, plan.taps, plan.tb)]:
        mis = range(m0, min(m0 + plan.mb, mt))
        njs = range(n0, min(n0 + plan.nb, nt))
        acc_base = (block_index % 2) * acc_half
        tiles = [(t, xi, mi, yj, nj) for t in range(t0, min(t0 + plan.tb, plan.taps)) for xi, mi in enumerate(mis)
                 for yj, nj in enumerate(njs)]
        steps = []
        first = True
        for g in range(dy.groups(cfg)):
            for y0 in range(0, dy.h, plan.ht):
                for x0 in range(0, dy.w, plan.wt):
                    ht, wt = min(plan.ht, dy.h - y0), min(plan.wt, dy.w - x0)
                    hh, ww = plan.window(ht, wt)
                    half = step_index % 2
                    loads, gemms = [], []
                    for xi, mi in enumerate(mis):  # dYᵀ: a block per output pixel, a LOAD per row of them
                        co = mi * R
                        for r in range(ht):
                            word = dy.word(g, co // dy.cb, y0 + r + dy.pad, x0 + dy.pad) + co % dy.cb
                            loads.append(dict(buffer=Buffer.A, tile_transpose=1, rows=wt,
                                              sram_addr=half * a_half + (xi * ht * wt + r * wt) * C,
                                              dram_addr=dy_addr + word * ab, dram_stride=dy.cb * ab))
                    for yj, nj in enumerate(njs):  # Xᵀ: the window, a LOAD per row
                        ci = nj * C
                        for r in range(hh):
                            word = x.word(g, ci // x.cb, y0 * s + r, x0 * s) + ci % x.cb
                            loads.append(dict(buffer=Buffer.B, tile_transpose=1, rows=ww,
                                              sram_addr=half * b_half + (yj * hh * ww + r * ww) * C,
                                              dram_addr=x_addr + word * ab, dram_stride=x.cb * ab))
                    if s == 1:  # a row of pixels is one run of wt·cols words
                        shape = dict(k=wt * C, taps_h=ht, taps_w=1, tap_h_stride=ww * C, tap_w_stride=0)
                    else:  # a pixel's cols words, pixels s apart
                        shape = dict(k=C, taps_h=ht, taps_w=wt, tap_h_stride=s * ww * C, tap_w_stride=s * C)
                    for idx, (t, xi, mi, yj, nj) in enumerate(tiles):
                        kh, kw = divmod(t, plan.kernel)
                        gemms.append((Opcode.GEMM, dict(
                            a_addr=half * a_half + xi * ht * wt * C,
                            b_addr=half * b_half + yj * hh * ww * C + (kh * d * ww + kw * d) * C,
                            acc_addr=acc_base + idx * R, accumulate=int(not first), **shape)))
                    steps.append((loads, gemms))
                    step_index += 1
                    first = False
        stores = []
        for idx, (t, xi, mi, yj, nj) in enumerate(tiles):
            col = t * plan.cin + nj * C
            stores.append(dict(buffer=Buffer.ACC, sram_addr=acc_base + idx * R, rows=R,
                               dram_addr=g_addr + mi * R * g_row_bytes + col * 4, dram_stride=g_row_bytes))
        blocks.append((steps, stores))
        block_index += 1
    return blocks


def wu_programs(cfg: SATConfig, plan: WuPlan, *, dy_addr: int, x_addr: int, g_addr: int, g_row_bytes: int,
                limit: int | None = -1) -> list[list[int]]:
    """A WU walk as programs (each ending in FINISH) of at most ``limit`` instructions (default: the
    instruction memory), cut between blocks."""
    blocks = wu_blocks(cfg, plan, dy_addr=dy_addr, x_addr=x_addr, g_addr=g_addr, g_row_bytes=g_row_bytes)
    return _runs_of(cfg, blocks, limit)


def _runs_of(cfg: SATConfig, blocks: list, limit: int | None) -> list[list[int]]:
    """Blocks cut into programs of at most ``limit`` instructions (-1: the instruction memory; None: one), each
    with its tokens placed, software-pipelined and ending in FINISH."""
    limit = cfg.imem_depth if limit == -1 else limit
    runs, current, used = [], [], 0
    for block in blocks:
        size = sum(len(l) + len(g) for l, g in block[0]) + len(block[1])
        if limit is not None and current and used + size > limit - 1:
            runs.append(current)
            current, used = [], 0
        current.append(block)
        used += size
    runs.append(current)
    return [software_pipelined(*place_tokens(run)) + [encode(Opcode.FINISH)] for run in runs]


@dataclass
class WuProgram:
    """A WU walk compiled with its operands: memory image, runs, where dW lands."""

    cfg: SATConfig
    plan: WuPlan
    run_words: list[list[int]]
    memory: np.ndarray
    runs: list[tuple[int, int]]
    g_addr: int
    g_row_bytes: int

    def read_grad(self, memory: np.ndarray | None = None) -> np.ndarray:
        """dW ``[Cout, K]`` fp32, K in BDWP's order."""
        mem = self.memory if memory is None else memory
        rows = -(-self.plan.cout // self.cfg.rows) * self.cfg.rows
        k = self.plan.taps * self.plan.cin
        g = mem[self.g_addr:self.g_addr + rows * self.g_row_bytes].view(np.float32).reshape(rows, -1)
        return g[:self.plan.cout, :k].copy()


def compile_wu(cfg: SATConfig, dy_bits: np.ndarray, x_bits: np.ndarray, kernel: int, stride: int = 1,
               padding: int = 0, dilation: int = 1) -> WuProgram:
    """Compile WU of a convolution from bf16 ``dY [N, Cout, Ho, Wo]`` and ``X [N, Cin, H, W]``."""
    n, cout, ho, wo = dy_bits.shape
    cin, h, w = x_bits.shape[1:]
    dy = ActLayout(n, cout, ho, wo, 0, -(-cout // cfg.rows) * cfg.rows if cout < cfg.rows else cfg.rows)
    x = ActLayout(n, cin, h, w, padding, cfg.cols)
    plan = plan_wu(cfg, cin, cout, kernel, stride, dilation, dy, x)
    dy_addr, x_addr = 0, _align_up(dy.nbytes(cfg))
    g_addr = _align_up(x_addr + x.nbytes(cfg))
    g_row_bytes = _align_up(plan.taps * cin * 4, cfg.bus_bytes)
    rows = -(-cout // cfg.rows) * cfg.rows
    addr = _align_up(g_addr + rows * g_row_bytes)
    run_words = wu_programs(cfg, plan, dy_addr=dy_addr, x_addr=x_addr, g_addr=g_addr, g_row_bytes=g_row_bytes)
    memory, runs = memory_image([(dy_addr, pack_act(cfg, dy, dy_bits)), (x_addr, pack_act(cfg, x, x_bits))], addr,
                                run_words)
    return WuProgram(cfg, plan, run_words, memory, runs, g_addr, g_row_bytes)


def wu_walkable(cfg: SATConfig, cin: int, kernel: int, groups: int = 1) -> bool:
    """Whether a convolution's WU runs as a walk (a square array, Cin in whole tiles, a walkable kernel)."""
    return cfg.rows == cfg.cols and cin % cfg.cols == 0 and walkable(kernel, groups)


def plan_conv_wu(cfg: SATConfig, batch: int, cin: int, cout: int, size: int, kernel: int, stride: int = 1,
                 padding: int = 0, streams: int = 1) -> WuPlan:
    """The WU walk of a square convolution over the layouts its FF and BP leave (dY with channel blocks of
    rows, X with its padding and blocks of cols)."""
    ho = (size + 2 * padding - kernel) // stride + 1
    dy = ActLayout(batch, cout, ho, ho, 0, cfg.rows if cout >= cfg.rows else -(-cout // cfg.rows) * cfg.rows)
    return plan_wu(cfg, cin, cout, kernel, stride, 1, dy, ActLayout(batch, cin, size, size, padding, cfg.cols),
                   streams)


def compile_sparsified_walk(cfg: SATConfig, weight: np.ndarray, x_bits: np.ndarray, n: int, m: int, *,
                            stride: int = 1, padding: int = 0, relu: bool = False) -> ConvProgram:
    """Pre-generation feeding a walk: SPARSIFY the master weights ``weight [Cout, Cin, k, k]`` (fp32, kept in
    BDWP's ``[Cout, K]`` layout, K tap-major) into their FF form, then the conv's sparse FF walk on it, one
    program: the walk's first LOAD waits for the last SPARSIFY (``p2l``) and its A LOADs read the records."""
    from .sparsify import layout_sparsify, _directions
    cout, cin, kh, kw = weight.shape
    h = x_bits.shape[-1]
    walk = ff_walk(weight, h, h, stride, padding, 1)
    ho = walk.rows.count
    src = ActLayout(x_bits.shape[0], cin, h, h, padding, -(-cin // m) * m)
    dst = ActLayout(x_bits.shape[0], cout, ho, ho, 0, cfg.rows)
    plan = plan_walk(cfg, walk, src, dst, (n, m))
    lay = layout_sparsify(cfg, cout, kh * kw * cin, n, m)
    sparsify = [word for word, d in zip(lay.instructions(), _directions(lay)) if d == "FF"]
    record = lay.record_bytes(lay.k_g)
    src_addr = _align_up(lay.end)
    dst_addr = _align_up(src_addr + src.nbytes(cfg))
    runs = walk_programs(cfg, [plan], a_addrs=[lay.ff_record(0, 0)], src_addr=src_addr, dst_addr=dst_addr,
                         idx_addrs=[lay.ff_record(0, 0) + lay.slots(lay.k_g) * cfg.a_word_bytes],
                         a_tile_stride=record, limit=cfg.imem_depth - len(sparsify), relu=relu)
    if len(runs) != 1:
        raise ValueError("compile_sparsified_walk: the walk must fit one program beside its SPARSIFYs")
    run_words, runs, memory = _after_sparsify(cfg, lay, weight, sparsify, runs, src, src_addr, x_bits,
                                              _align_up(dst_addr + dst.nbytes(cfg)))
    return ConvProgram(cfg, [plan], run_words, memory, runs, src, dst, dst_addr)


def _after_sparsify(cfg: SATConfig, lay, weight: np.ndarray, sparsify: list[int], run_words: list[list[int]],
                    src: ActLayout, src_addr: int, bits: np.ndarray, program_addr: int):
    """The memory image of walks that read a sparsifier's records: the SPARSIFYs open the first run (the last
    pushes ``p2l``, the walks' first LOAD pops it), the runs laid out from ``program_addr``, the master weights
    (``weight [Cout, Cin, k, k]``, BDWP's ``[Cout, K]`` layout) and the input in ``src`` in place.
    Returns (run words, runs, memory)."""
    from .sparsify import pack_master
    first_load = next(i for i, word in enumerate(run_words[0]) if word & 0xF == Opcode.LOAD.value)
    run_words[0][first_load] = with_flags(run_words[0][first_load], pop_prev=1)  # wait for the sparsifier
    run_words[0] = sparsify[:-1] + [with_flags(sparsify[-1], push_next=1)] + run_words[0]
    cout = weight.shape[0]
    master = pack_master(lay, np.ascontiguousarray(np.asarray(weight, np.float32).transpose(0, 2, 3, 1)
                                                   .reshape(cout, -1)))
    memory, runs = memory_image([(lay.base, master), (src_addr, pack_act(cfg, src, bits))], program_addr, run_words)
    return run_words, runs, memory


def compile_sparsified_bp_walk(cfg: SATConfig, weight: np.ndarray, dy_bits: np.ndarray, n: int, m: int, size: int, *,
                               stride: int = 1, padding: int = 0) -> ConvProgram:
    """Pre-generation feeding BP: SPARSIFY the master weights ``weight [Cout, Cin, k, k]`` (fp32, BDWP's
    ``[Cout, K]`` layout) into their BP form, then the conv's BP walks (every phase) on it, one program.  A BP
    record holds one K-tile's slots along Cout (a tap's ``rows`` input channels: Cin in whole tiles), so the
    walks' A comes a LOAD per tap (``walk_blocks``' ``a_taps``) from the records of the flipped taps.  ``size``:
    the input's (dX's) height and width.  Walks longer than the instruction memory continue in more runs."""
    from .sparsify import layout_sparsify, _directions
    cout, cin, kh, kw = weight.shape
    R, aw = cfg.rows, cfg.a_word_bytes
    if cin % R:
        raise ValueError(f"conv: a BP walk on the sparsifier's records needs Cin ({cin}) in whole tiles of {R}")
    batch = dy_bits.shape[0]
    plans = plan_conv(cfg, batch, cin, cout, size, kh, stride, padding, "BP", (n, m), weight=weight)
    src, dst = plans[0].src, plans[0].dst
    if dy_bits.shape != (batch, cout, src.h, src.w):
        raise ValueError(f"conv: dY is {dy_bits.shape}, the convolution's output is {(batch, cout, src.h, src.w)}")
    if src.blocks > 1 and src.cb // m * n % IDX_SLOTS_PER_WORD:
        # a later block's slots start inside a record's IDX word: one block of all Cout instead
        src = dataclasses.replace(src, cb=-(-cout // m) * m)
        plans = [plan_walk(cfg, p.walk, src, dst, (n, m) if p.walk.weights is not None else None) for p in plans]
    per_block = src.cb // m * n
    lay = layout_sparsify(cfg, cout, kh * kw * cin, n, m)
    sparsify = [word for word, d in zip(lay.instructions(), _directions(lay)) if d == "BP"]
    zero_addr = _align_up(lay.end)
    src_addr = _align_up(zero_addr + max(aw, cfg.b_word_bytes))
    dst_addr = _align_up(src_addr + src.nbytes(cfg))
    blocks = []
    for plan in plans:
        walk = plan.walk

        def a_taps(mi, cblk, ti, walk=walk):
            i, j = divmod(ti, walk.cols.taps)
            tap = walk.kernel_taps[0][i] * kw + walk.kernel_taps[1][j]
            record = lay.bp_record(0, (tap * cin + mi * R) // R)
            return (record + cblk * per_block * aw,
                    record + (lay.slots(cout) + cblk * per_block // IDX_SLOTS_PER_WORD) * aw)
        blocks += walk_blocks(cfg, plan, a_addr=zero_addr, src_addr=src_addr, dst_addr=dst_addr,
                              first_step=sum(len(b[0]) for b in blocks), first_block=len(blocks),
                              a_taps=a_taps if walk.weights is not None else None)
    run_words = _runs_of(cfg, blocks, cfg.imem_depth - len(sparsify))  # the SPARSIFYs go first, in the first run
    run_words, runs, memory = _after_sparsify(cfg, lay, weight, sparsify, run_words, src, src_addr, dy_bits,
                                              _align_up(dst_addr + dst.nbytes(cfg)))
    return ConvProgram(cfg, plans, run_words, memory, runs, src, dst, dst_addr)
