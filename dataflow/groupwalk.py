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

Both directions: FF (:func:`ff_walk` of the tile weights) and BP (:func:`bp_walks`: the transposed, flipped
tile — block-diagonal too).  Not here: WU (dW of a group conv: the diagonal tiles' WU walks), BDWP's own N:M
inside a group (the pattern is taken by the packing), groups wider than m.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import to_bytes
from . import conv

__all__ = ["group_walk_pattern", "group_walkable", "tile_weight", "plan_group_walks", "group_walk_blocks",
           "compile_group_walks"]


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
    blobs = [np.frombuffer(to_bytes(words), dtype=np.uint8) for words in run_words]
    runs = []
    for words, blob in zip(run_words, blobs):
        runs.append((addr, len(words)))
        addr = conv._align_up(addr + len(blob))
    memory = np.zeros(addr, np.uint8)
    packed_src = conv.pack_act(cfg, src, x_bits)
    memory[src_addr:src_addr + packed_src.nbytes] = packed_src.reshape(-1).view(np.uint8)
    for at, arr in parts:
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        memory[at:at + flat.nbytes] = flat
    for (at, _), blob in zip(runs, blobs):
        memory[at:at + len(blob)] = blob
    return conv.ConvProgram(cfg, [p for row in plans for p in row], run_words, memory, runs, src, dst, dst_addr)
