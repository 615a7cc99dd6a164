"""Group convolutions of small groups (depthwise included) as kernel walks, a tile of ``rows`` channels at a
time, on the sparse mode's per-row operand select.

A group convolution of group size G maps output channel ``o`` to the G input channels of its group.  Per
tile of ``rows`` output channels and per batch group, one walk reads the same tile of input channels (one
channel block of the window layout: contiguous, so a walk of one block and one batch group) with the
tile's weights as a block-diagonal ``[rows, taps, rows]`` whose G-wide blocks sit inside groups of m
channels (m the largest of the config's ``sparse_m`` dividing ``rows``, G dividing m): every PE row has at
most G nonzeros among each m consecutive channels of a tap — a G:m pattern, which SPARSE_GEMM runs in
``rows/m · G`` slots a tap instead of ``rows`` (``nmsat.hw.isa.SparseGemmArgs``: each row takes its own
channels' B words).  Nothing is pruned: the kept slots are the group's weights (and zeros where a group of
m holds none of a row's).  The activations cross the port once per tile, as every walk's do; a row's useful
share of the slots is ``m / rows`` (``vcu1525``: 8 of 32; ``tiny``: all).

FF (:func:`ff_walk` of the tile weights) and BP (:func:`bp_walks`: the transposed, flipped tile —
block-diagonal too); WU (:func:`compile_group_wu`) is the WU walk of each diagonal tile alone (dY's tile
against X's tile, over transposed tiles, ``nmsat.dataflow.conv.plan_wu``), of whose ``rows × rows`` block per
tap the group's G columns a row are dW: the off-diagonal tiles, zeros, are never computed.  Not here: BDWP's
own N:M inside a group (the pattern is taken by the packing), groups wider than m.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..hw.config import SATConfig
from . import conv

__all__ = ["group_walk_pattern", "group_walkable", "tile_weight", "plan_group_walks", "group_walk_blocks",
           "compile_group_walks", "plan_group_wu", "group_wu_blocks", "GroupWuProgram", "compile_group_wu"]


def group_walk_pattern(cfg: SATConfig, group_size: int) -> tuple[int, int] | None:
    """The G:m pattern a group walk of ``group_size`` runs with, or None if it cannot (G past every m that
    divides ``rows``)."""
    ms = [m for m in cfg.sparse_m if cfg.rows % m == 0 and m % group_size == 0]
    return (group_size, max(ms)) if ms and group_size >= 1 else None


def group_walkable(cfg: SATConfig, channels: int, group_size: int, kernel: int) -> bool:
    """Whether a grouped convolution (Cin = Cout = ``channels``) runs as group walks."""
    return (group_walk_pattern(cfg, group_size) is not None and kernel <= conv.MAX_TAPS
            and channels % group_size == 0 and group_size < channels)


def tile_weight(cfg: SATConfig, weight: np.ndarray, tile: int) -> np.ndarray:
    """Tile ``tile``'s weights as a dense ``[rows, rows, kh, kw]`` (its output channels × its input channels):
    ``weight`` ``[C, G, kh, kw]`` (torch's grouped layout) on the block diagonal, zeros off it and past C."""
    c, g, kh, kw = weight.shape
    R = cfg.rows
    out = np.zeros((R, R, kh, kw), np.float32)
    for o in range(R):
        co = tile * R + o
        if co >= c:
            break
        first = co // g * g  # the group's first input channel
        for j in range(g):
            ci = first + j - tile * R
            if 0 <= ci < R:
                out[o, ci] = weight[co, j]
    return out


def _shapes(direction: str, h: int, w: int, kernel: int, stride: int, padding: int):
    """(input h, w, border; output h, w) of a direction's walks, from the conv's input size ``h × w``."""
    ho, wo = ((s + 2 * padding - kernel) // stride + 1 for s in (h, w))
    if direction == "FF":
        return h, w, padding, ho, wo
    return ho, wo, conv.bp_pad(kernel, stride, padding, 1), h, w


def _walks(direction: str, weight: np.ndarray, h: int, w: int, stride: int, padding: int) -> list[conv.WalkConv]:
    if direction == "FF":
        return [conv.ff_walk(weight, h, w, stride, padding, 1)]
    return conv.bp_walks(weight, h, w, stride, padding, 1)


def plan_group_walks(cfg: SATConfig, batch: int, channels: int, group_size: int, size: int, kernel: int,
                     stride: int = 1, padding: int = 0, direction: str = "FF", weight: np.ndarray | None = None):
    """Per tile, the plans of its walks (one batch group's layouts): ``[tiles][walks]`` and the full input and
    output layouts (channel blocks of ``rows``).  ``weight`` ``[C, G, k, k]`` (default zeros: plans only)."""
    if direction not in ("FF", "BP"):
        raise ValueError(f"group walk: direction must be FF or BP, got {direction!r}")
    pattern = group_walk_pattern(cfg, group_size)
    if pattern is None or not group_walkable(cfg, channels, group_size, kernel):
        raise ValueError(f"config {cfg.name}: a group walk of G = {group_size} over {channels} channels needs G to "
                         f"divide an m of {cfg.sparse_m} that divides rows ({cfg.rows}), and a kernel ≤ {conv.MAX_TAPS}")
    R = cfg.rows
    h_in, w_in, pad, h_out, w_out = _shapes(direction, size, size, kernel, stride, padding)
    src = conv.ActLayout(batch, channels, h_in, w_in, pad, R)
    dst = conv.ActLayout(batch, channels, h_out, w_out, 0, R)
    lanes = min(batch, cfg.cols)
    sub_src, sub_dst = conv.ActLayout(lanes, R, h_in, w_in, pad, R), conv.ActLayout(lanes, R, h_out, w_out, 0, R)
    w = np.zeros((channels, group_size, kernel, kernel), np.float32) if weight is None else weight
    plans = []
    for tile in range(src.blocks):
        walks = _walks(direction, tile_weight(cfg, w, tile), size, size, stride, padding)
        plans.append([conv.plan_walk(cfg, wk, sub_src, sub_dst, pattern if wk.weights is not None else None)
                      for wk in walks])
    return plans, src, dst


def group_walk_blocks(cfg: SATConfig, plans, src: conv.ActLayout, dst: conv.ActLayout, *, a_addrs, idx_addrs,
                      src_addr: int, dst_addr: int, relu: bool = False) -> list:
    """Every tile's walks over every batch group as one stream of blocks: tile ``t`` walk ``i``'s A at
    ``a_addrs[t][i]`` (IDX at ``idx_addrs[t][i]``); each (batch group, tile) reads and writes its own channel
    block of ``src`` and ``dst``."""
    ab = cfg.b_word_bytes
    blocks = []
    for nb in range(src.groups(cfg)):
        lanes = min(cfg.cols, src.batch - nb * cfg.cols)
        for tile, tile_plans in enumerate(plans):
            for i, plan in enumerate(tile_plans):
                if lanes != plan.src.batch:  # the last batch group: fewer samples, the same tile
                    plan = dataclasses.replace(plan, src=dataclasses.replace(plan.src, batch=lanes),
                                               dst=dataclasses.replace(plan.dst, batch=lanes))
                blocks += conv.walk_blocks(cfg, plan, a_addr=a_addrs[tile][i], idx_addr=idx_addrs[tile][i],
                                           src_addr=src_addr + src.word(nb, tile, 0, 0) * ab,
                                           dst_addr=dst_addr + dst.word(nb, tile, 0, 0) * ab,
                                           first_step=sum(len(b[0]) for b in blocks), first_block=len(blocks),
                                           relu=relu)
    return blocks


def compile_group_walks(cfg: SATConfig, weight: np.ndarray, x_bits: np.ndarray, *, stride: int = 1,
                        padding: int = 0, direction: str = "FF", size: int | None = None,
                        relu: bool = False) -> conv.ConvProgram:
    """A group convolution's FF (``x_bits`` the input ``[N, C, H, W]``) or BP (``x_bits`` the output gradient
    ``[N, C, Ho, Wo]``, ``size`` the input's side) as group walks, with its memory image; ``weight``
    ``[C, G, k, k]`` fp32 (square kernel and image)."""
    c, g, k, _ = weight.shape
    n = x_bits.shape[0]
    side = x_bits.shape[2] if direction == "FF" else size
    if side is None:
        raise ValueError("group walk: BP needs the input's size")
    plans, src, dst = plan_group_walks(cfg, n, c, g, side, k, stride, padding, direction, weight)
    if x_bits.shape != (n, c, src.h, src.w):
        raise ValueError(f"group walk: input {x_bits.shape} is not [N, {c}, {src.h}, {src.w}]")
    addr = 0
    src_addr, addr = addr, conv._align_up(src.nbytes(cfg))
    dst_addr, addr = addr, conv._align_up(addr + dst.nbytes(cfg))
    parts, a_addrs, idx_addrs = [], [], []
    for tile_plans in plans:
        a_row, idx_row = [], []
        for plan in tile_plans:
            packed = (conv.pack_walk_weights(cfg, plan) if plan.walk.weights is not None else
                      {"a": np.zeros(max(cfg.a_word_bytes, cfg.b_word_bytes) // 2, np.uint16)})
            a_row.append(addr)
            parts.append((addr, packed["a"]))
            addr = conv._align_up(addr + packed["a"].nbytes)
            idx_row.append(addr)
            if "idx" in packed:
                parts.append((addr, packed["idx"]))
                addr = conv._align_up(addr + packed["idx"].nbytes)
        a_addrs.append(a_row)
        idx_addrs.append(idx_row)
    blocks = group_walk_blocks(cfg, plans, src, dst, a_addrs=a_addrs, idx_addrs=idx_addrs, src_addr=src_addr,
                               dst_addr=dst_addr, relu=relu)
    run_words = conv._runs_of(cfg, blocks, -1)
    memory, runs = conv.memory_image([(src_addr, conv.pack_act(cfg, src, x_bits))] + parts, addr, run_words)
    return conv.ConvProgram(cfg, [p for row in plans for p in row], run_words, memory, runs, src, dst, dst_addr)


def plan_group_wu(cfg: SATConfig, batch: int, channels: int, group_size: int, size: int, kernel: int,
                  stride: int = 1, padding: int = 0):
    """The WU plan of one diagonal tile (``rows`` output by ``rows`` input channels, the full layouts' batch
    groups), the layouts of dY and X (channel blocks of ``rows``), and the bytes of a row of a tile's dW."""
    if not group_walkable(cfg, channels, group_size, kernel) or cfg.rows != cfg.cols:
        raise ValueError(f"config {cfg.name}: no group WU walk for G = {group_size} over {channels} channels "
                         f"(square array, G dividing an m of {cfg.sparse_m} that divides rows)")
    R = cfg.rows
    ho = (size + 2 * padding - kernel) // stride + 1
    dy = conv.ActLayout(batch, channels, ho, ho, 0, R)
    x = conv.ActLayout(batch, channels, size, size, padding, R)
    plan = conv.plan_wu(cfg, R, R, kernel, stride, 1, dy, x)
    return plan, dy, x, conv._align_up(plan.taps * R * 4, cfg.bus_bytes)


def group_wu_blocks(cfg: SATConfig, plan, dy: conv.ActLayout, x: conv.ActLayout, row_bytes: int, *, dy_addr: int,
                    x_addr: int, g_addr: int) -> list:
    """Every diagonal tile's WU walk as one stream of blocks: tile ``t`` reads channel block ``t`` of dY and X
    (the full layouts: an offset of one block keeps every batch group's address) and writes its
    ``[rows, taps·rows]`` fp32 block from ``g_addr + t·rows·row_bytes``."""
    ab, R = cfg.b_word_bytes, cfg.rows
    blocks = []
    for t in range(dy.blocks):
        blocks += conv.wu_blocks(cfg, plan, dy_addr=dy_addr + dy.word(0, t, 0, 0) * ab,
                                 x_addr=x_addr + x.word(0, t, 0, 0) * ab, g_addr=g_addr + t * R * row_bytes,
                                 g_row_bytes=row_bytes, first_step=sum(len(b[0]) for b in blocks),
                                 first_block=len(blocks))
    return blocks


@dataclasses.dataclass
class GroupWuProgram:
    """A grouped convolution's WU as group walks with its memory image; :meth:`read_grad` gives dW."""

    cfg: SATConfig
    run_words: list[list[int]]
    memory: np.ndarray
    runs: list[tuple[int, int]]
    channels: int
    group_size: int
    kernel: int
    g_addr: int
    row_bytes: int

    def read_grad(self, memory: np.ndarray | None = None) -> np.ndarray:
        """dW ``[C, G, k, k]`` fp32 (torch's grouped layout)."""
        mem = self.memory if memory is None else memory
        R, c, g, k = self.cfg.rows, self.channels, self.group_size, self.kernel
        tiles = -(-c // R)
        blk = mem[self.g_addr:self.g_addr + tiles * R * self.row_bytes].view(np.float32).reshape(tiles * R, -1)
        blk = blk[:, :k * k * R].reshape(tiles * R, k, k, R)  # [Cout, kh, kw, Cin within the tile]
        co = np.arange(c)
        ci = (co // g * g)[:, None] + np.arange(g)[None, :] - (co // R * R)[:, None]  # [C, G]
        return np.ascontiguousarray(blk[co[:, None], :, :, ci])  # the advanced indices first: [C, G, kh, kw]


def compile_group_wu(cfg: SATConfig, dy_bits: np.ndarray, x_bits: np.ndarray, group_size: int, kernel: int, *,
                     stride: int = 1, padding: int = 0) -> GroupWuProgram:
    """WU of a grouped convolution from bf16 ``dY [N, C, Ho, Wo]`` and ``X [N, C, H, W]`` (square)."""
    n, c, size, _ = x_bits.shape
    plan, dy, x, row_bytes = plan_group_wu(cfg, n, c, group_size, size, kernel, stride, padding)
    if dy_bits.shape != (n, c, dy.h, dy.w):
        raise ValueError(f"group WU: dY {dy_bits.shape} is not [N, {c}, {dy.h}, {dy.w}]")
    R = cfg.rows
    dy_addr = 0
    x_addr = conv._align_up(dy.nbytes(cfg))
    g_addr = conv._align_up(x_addr + x.nbytes(cfg))
    addr = conv._align_up(g_addr + dy.blocks * R * row_bytes)
    run_words = conv._runs_of(cfg, group_wu_blocks(cfg, plan, dy, x, row_bytes, dy_addr=dy_addr, x_addr=x_addr,
                                                   g_addr=g_addr), -1)
    memory, runs = conv.memory_image([(dy_addr, conv.pack_act(cfg, dy, dy_bits)), (x_addr, conv.pack_act(cfg, x, x_bits))],
                                     addr, run_words)
    return GroupWuProgram(cfg, run_words, memory, runs, c, group_size, kernel, g_addr, row_bytes)
