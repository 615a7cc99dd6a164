"""Cycles of one training iteration of a model on the accelerator, layer by layer (timing-only simulation).

:func:`time_iteration` takes a model's work (``nmsat.dataflow.models``) and
charges, per layer:

* **GEMMs** (FF, BP, WU): the compiler's programs (``nmsat.dataflow.gemm``)
  timed on the simulator; FF and BP of the layers BDWP prunes as SPARSE_GEMMs
  of the pattern, WU dense; FF and BP outputs stored bf16, dW fp32.  The
  GEMMs of a layer run one after another, each its own program(s).  With
  ``im2col`` (on-chip, the default) a convolution's FF and BP are kernel
  walks (``nmsat.dataflow.conv``: activations read once per tile, BP by
  phases of the flipped kernel) and its WU a walk over transposed tiles
  (transposing LOADs give dY and X with channels in the lanes; Cin in
  whole tiles, so not the 3-channel stem); kernels past 7 taps a side
  (ViT's patch embedding, stride = kernel: im2col is a reshape there) stay
  GEMMs; a grouped convolution's dense FF and BP run as group walks
  (``nmsat.dataflow.groupwalk``: a tile of channels a walk, its groups on
  the sparse mode's row select) and its WU as the diagonal tiles' WU walks
  where they are faster — both mappings simulated, the faster kept: the
  sparse walk's planner estimate missed by 2× at G = 4, batch 8 — else as
  GEMMs with its small groups packed several per pass
  (``nmsat.dataflow.groupconv``) where that is faster; its BDWP-sparse
  stages (FF, BP) run group by group as SPARSE_GEMMs or as the same group
  walks on the pruned weights (zeros and all: the pattern is not
  exploited there), whichever is faster.  A walk's lanes are the batch, so below
  ``cols`` samples it leaves lanes idle: each direction takes the mapping
  the planners estimate faster (as a compiler would), and only that one is
  simulated.  Without, every convolution is
  GEMMs on im2col operands (the B operand read ``k²`` times).
* **Batch norms** (``norms="walks"``, the default): as built
  (``nmsat.dataflow.norm``): per norm the channel-sums and apply walks on
  the array, forward and backward, timed on the simulator and charged
  serially (``LayerCycles.norm``; array work: nothing hides them).
  With ``norms="stream"`` (and for layer norms) they are vector passes.
* **Vector passes** (norms, ReLU's gradient, residual adds, pooling, the
  loss): each by the stream rule of the vector unit
  (``nmsat.hw.timing.stream_cycles``: the arrays read and written, beat by
  beat, on its port).  Those a VECTOR function does today are marked
  ``built``; the others (layer norms, batch norms with ``norms="stream"``,
  pooling windows, softmax, GELU) are charged by the same rule as the
  passes they would be.
  Forward they are charged serially (the next GEMM waits for them).  With
  ``offline`` scheduling (the default) the backward passes between a
  weighted layer's BP and the BP of the one before it (its gradient's fork
  add, ReLU gradient, the norm's backward) run on the vector unit while the
  array runs that weighted layer's WU, which does not wait for them: they
  are charged only past ``HIDE_SHARE`` of that WU's cycles
  (``benchmarks/vector_under_wu.py``: 100% hidden for ResNet-18; the memory
  model gives each port its own memory, so DRAM contention is not in it).
  Without, every pass is serial.  Offline scheduling also puts the
  independent GEMMs of one stage (attention's heads) in one program
  (``Timer.gemm_batch``): each one's transfers run under the MACs of the one
  before, where apart each fills and drains the pipeline alone.
* **Pre-generation** (per layer with weights): WEIGHT_UPDATE of its fp32
  master weights, then (sparse layers) the SPARSIFY program of its next FF
  and BP forms, or (dense layers) two passes writing its bf16 forms, timed
  on the simulator / by the stream rule.  With ``pregeneration`` it runs on
  the vector unit's own port under the GEMMs (measured 100% hidden for
  ResNet-18, ``benchmarks/sparsify_resnet18.py``) and is charged only past
  ``HIDE_SHARE`` of the GEMM cycles, less what the hidden backward passes
  took; without, it is charged serially.

* **Interleave mapping** (``interleave``, the default): a layer whose BP
  waits on memory (planned cycles past ``INTERLEAVE_BOUND`` × its MAC
  bound: a sparse BP reads dY m/n times faster) has its BP and WU timed as
  one interleaved stream (``nmsat.dataflow.interleave``), kept where that
  is faster than the two apart (and not tried where the stream cannot be
  cut into programs); ``LayerCycles.interleave_saved`` is the difference.

Not here: the model shapes (``nmsat.dataflow.models``), the programs' data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..dataflow import conv
from ..dataflow.gemm import gemm_blocks, layout_gemm, plan_gemm
from ..dataflow.groupconv import pack_factor
from ..dataflow.groupwalk import group_walk_blocks, group_walkable, group_wu_blocks, plan_group_walks, plan_group_wu
from ..dataflow.interleave import STREAMS, interleave
from ..dataflow.models import LayerWork, VectorPass
from ..dataflow.norm import norm_programs
from ..dataflow.sparsify import layout_sparsify, update_instructions
from ..hw.config import SATConfig
from ..hw.isa import ErrorCode, Opcode, encode
from ..hw.timing import UPDATE_STREAMS, stream_cycles
from ..sim.core import CoreModel

__all__ = ["HIDE_SHARE", "LayerCycles", "IterationReport", "Timer", "time_iteration", "pass_cycles", "charged_passes"]

#: share of the GEMMs' cycles pre-generation may fill on the vector unit's port (the placement of
#: benchmarks/sparsify_resnet18.py fills each host GEMM up to 90%)
HIDE_SHARE = 0.9

#: a layer's BP whose planned cycles exceed its MAC-bound cycles by this factor waits on memory: a candidate
#: for interleaving with its WU
INTERLEAVE_BOUND = 2.0


@dataclass(frozen=True)
class LayerCycles:
    """One layer's cycles: its GEMMs by stage, its vector passes forward/backward, its pre-generation."""

    name: str
    kind: str
    sparse: bool
    ff: int = 0
    bp: int = 0
    wu: int = 0
    vector_ff: int = 0
    vector_bp: int = 0
    pregen: int = 0
    macs: int = 0
    vector_hidden: int = 0  # backward vector cycles under a WU (offline scheduling)
    interleave_saved: int = 0  # BP and WU interleaved in one stream took this many cycles fewer than bp + wu
    norm: int = 0  # a batch norm's walks on the array, forward and backward (``norms="walks"``)

    @property
    def gemm(self) -> int:
        return self.ff + self.bp + self.wu - self.interleave_saved

    @property
    def vector(self) -> int:
        return self.vector_ff + self.vector_bp


@dataclass
class IterationReport:
    """Cycles of one iteration; ``total`` is what the accelerator takes (pre-generation charged per the option)."""

    preset: str
    pattern: tuple[int, int] | None
    pregeneration: bool
    layers: list[LayerCycles] = field(default_factory=list)
    im2col: bool = True  # convolutions' FF, BP and WU as kernel walks (on-chip im2col)
    offline: bool = True  # backward vector passes under the WUs (offline scheduling)
    interleave: bool = True  # a layer's BP and WU interleaved where that is faster (interleave mapping)
    norms: str = "walks"  # batch norms as the walks built ("walks") or by the stream rule of the planned unit

    @property
    def gemm(self) -> int:
        return sum(x.gemm for x in self.layers)

    @property
    def vector(self) -> int:
        return sum(x.vector for x in self.layers)

    @property
    def pregen(self) -> int:
        return sum(x.pregen for x in self.layers)

    @property
    def vector_hidden(self) -> int:
        return sum(x.vector_hidden for x in self.layers)

    @property
    def norm(self) -> int:
        return sum(x.norm for x in self.layers)

    @property
    def interleave_saved(self) -> int:
        return sum(x.interleave_saved for x in self.layers)

    @property
    def pregen_charged(self) -> int:
        """Pre-generation cycles the iteration waits for (the vector unit's time under the GEMMs is shared with
        the hidden backward passes)."""
        if not self.pregeneration:
            return self.pregen
        return max(0, self.pregen - max(0, int(HIDE_SHARE * self.gemm) - self.vector_hidden))

    @property
    def total(self) -> int:
        return self.gemm + self.norm + self.vector - self.vector_hidden + self.pregen_charged


def charged_passes(layer: LayerWork, norm_walked: bool) -> list[VectorPass]:
    """The vector passes a layer is charged: all but, for a batch norm, the gradient of the ReLU after it when
    the norm is stream passes (that rule folds it into the input gradient's pass), or only that gradient (a
    RELU_GRAD) when the norm runs as walks (``norm_walked``)."""
    if layer.kind != "batchnorm":
        return list(layer.passes)
    return [p for p in layer.passes if p.built == norm_walked]


def pass_cycles(cfg: SATConfig, p: VectorPass) -> int:
    """Busy cycles of one vector pass by the stream rule (bf16 or fp32 elements, whole beats)."""
    beats = -(-p.elements * (2 if p.bf16 else 4) // cfg.bus_bytes)
    return stream_cycles(cfg, beats, (p.reads, p.writes))[2] + 1


class WalkTooLong(RuntimeError):
    """A kernel walk whose output block's program does not fit the instruction memory (the GEMM mapping,
    cut into runs, is used instead)."""


class Timer:
    """Times the pieces of an iteration on one simulator, memoised by shape (programs without data)."""

    def __init__(self, cfg: SATConfig, core: CoreModel, *, record: bool = False):
        self.cfg, self.core, self.memo = cfg, core, {}
        #: with ``record``: the key of every piece timed, in order (memo hits too), and each key's programs
        self.calls: list | None = [] if record else None
        self.programs: dict = {}

    def _cycles(self, key, programs, what: str, times: int = 1) -> int:
        """Cycles of the programs ``programs()`` makes, run one after another (memoised under ``key``); recorded
        (``record``) ``times`` times once they ran."""
        if key not in self.memo:
            made = [list(words) for words in programs()] if self.calls is not None else programs()
            result = self.core.time_programs(made)
            if result.error is ErrorCode.PROGRAM_TOO_LONG:
                raise WalkTooLong(f"{what}: one of its programs does not fit the instruction memory")
            if not result.ok:
                raise RuntimeError(f"{what}: {result.error.name}")
            self.memo[key] = result.cycles
            if self.calls is not None:
                self.programs[key] = made
        if self.calls is not None:
            self.calls.extend([key] * times)
        return self.memo[key]

    def gemm(self, m, n, k, pattern, out_bf16, times: int = 1) -> int:
        """Cycles of one GEMM (``times``: how many the caller charges, for the recording)."""
        return self._cycles(("gemm", m, n, k, pattern, out_bf16), lambda: (
            words for _, words in layout_gemm(self.cfg, m, n, k, pattern=pattern, out_bf16=out_bf16).programs),
            f"GEMM {m}x{n}x{k} {pattern}", times)

    def gemm_batch(self, m, n, k, pattern, out_bf16, count: int) -> int:
        """Cycles of ``count`` independent GEMMs of one shape (attention's heads, a grouped conv's groups) as one
        stream of blocks, each on its own operands: the transfers of one run under the MACs of the one before
        (offline scheduling), where apart each GEMM fills and drains the pipeline alone."""
        if count == 1:
            return self.gemm(m, n, k, pattern, out_bf16)
        cfg = self.cfg
        plan = plan_gemm(cfg, m, n, k, pattern=pattern)
        a_per, b_per = (1, 1) if pattern is None else pattern
        units = plan.units
        sizes = (plan.mt * units * a_per * cfg.a_word_bytes * 2, plan.nt * units * b_per * cfg.b_word_bytes,
                 plan.mt * plan.nt * cfg.rows * cfg.acc_word_bytes)
        stride = -(-max(sizes) // 4096) * 4096
        base = 1 << (cfg.addr_bits - self._BASE_SHIFT)
        if count * stride > base:
            raise ValueError(f"GEMM batch of {count} {m}x{n}x{k}: its operands do not fit the address space")

        def programs():
            blocks = []
            for i in range(count):
                blocks += gemm_blocks(cfg, plan, a_addr=i * stride, b_addr=base + i * stride,
                                      c_addr=2 * base + i * stride, idx_addr=i * stride + sizes[0] // 2,
                                      c_bf16=out_bf16, first_step=sum(len(b[0]) for b in blocks),
                                      first_block=len(blocks))
            return conv._runs_of(cfg, blocks, -1)
        return self._cycles(("gemm batch", m, n, k, pattern, out_bf16, count), programs,
                            f"{count} GEMMs {m}x{n}x{k} {pattern}")

    def packed_groups(self, g, out_bf16: bool, offline: bool) -> int | None:
        """Cycles of a dense stage of a grouped convolution with its small groups packed several per pass
        (``nmsat.dataflow.groupconv``: P groups as one 1:m SPARSE_GEMM), or None where the planners estimate
        the groups apart faster (or packing gains nothing)."""
        per_pack, m = pack_factor(self.cfg, g.m)
        if per_pack < 2:
            return None
        packs = -(-g.count // per_pack)
        shape = (per_pack * g.m, g.n, g.k * m)
        packed = packs * plan_gemm(self.cfg, *shape, pattern=(1, m)).estimated_cycles
        if packed >= g.count * plan_gemm(self.cfg, g.m, g.n, g.k).estimated_cycles:
            return None
        if offline:
            return self.gemm_batch(*shape, (1, m), out_bf16, packs)
        return packs * self.gemm(*shape, (1, m), out_bf16, times=packs)

    def group_walk(self, geometry, direction: str, g, force: bool = False) -> int | None:
        """Cycles of a grouped convolution's FF or BP as group walks (``nmsat.dataflow.groupwalk``: a tile of
        channels a walk, its groups packed by the sparse mode's row select), or None where it cannot run so or
        (unless ``force``) the planners estimate its GEMMs (packed or apart) faster."""
        geo = geometry
        size = geo.cin // geo.groups
        if geo.cin != geo.cout or not group_walkable(self.cfg, geo.cin, size, geo.kernel):
            return None
        key = ("group walk plans", geo, direction)
        if key not in self.memo:
            self.memo[key] = plan_group_walks(self.cfg, geo.batch, geo.cin, size, geo.size, geo.kernel, geo.stride,
                                              geo.padding, direction)
        plans, src, dst = self.memo[key]
        if not force and src.groups(self.cfg) * sum(p.estimated_cycles for row in plans for p in row) \
                >= self._group_gemms(g):
            return None
        base = 1 << (self.cfg.addr_bits - self._BASE_SHIFT)
        a_addrs = [[base + (t * len(row) + i) * 2 * 4096 for i in range(len(row))] for t, row in enumerate(plans)]
        idx_addrs = [[a + 4096 for a in row] for row in a_addrs]
        return self._cycles(("group walk", geo, direction), lambda: conv._runs_of(self.cfg, group_walk_blocks(
            self.cfg, plans, src, dst, a_addrs=a_addrs, idx_addrs=idx_addrs, src_addr=0, dst_addr=base // 2), -1),
            f"group walk {geo} {direction}")

    def _group_gemms(self, g) -> int:
        """The planners' estimate of a grouped stage as GEMMs: its groups apart or packed, the faster."""
        per_pack, m = pack_factor(self.cfg, g.m)
        gemms = g.count * plan_gemm(self.cfg, g.m, g.n, g.k).estimated_cycles
        if per_pack >= 2:
            gemms = min(gemms, -(-g.count // per_pack) * plan_gemm(self.cfg, per_pack * g.m, g.n, g.k * m,
                                                                   pattern=(1, m)).estimated_cycles)
        return gemms

    def group_wu(self, geometry, g, force: bool = False) -> int | None:
        """Cycles of a grouped convolution's WU as the WU walks of its diagonal tiles
        (``nmsat.dataflow.groupwalk.compile_group_wu``), or None where it cannot or (unless ``force``) its
        GEMMs are estimated faster."""
        geo = geometry
        size = geo.cin // geo.groups
        if geo.cin != geo.cout or self.cfg.rows != self.cfg.cols or not group_walkable(self.cfg, geo.cin, size,
                                                                                      geo.kernel):
            return None
        plan, dy, x, row_bytes = plan_group_wu(self.cfg, geo.batch, geo.cin, size, geo.size, geo.kernel, geo.stride,
                                               geo.padding)
        if not force and dy.blocks * plan.estimated_cycles >= self._group_gemms(g):
            return None
        base = 1 << (self.cfg.addr_bits - self._BASE_SHIFT)
        return self._cycles(("group wu", geo), lambda: conv._runs_of(self.cfg, group_wu_blocks(
            self.cfg, plan, dy, x, row_bytes, dy_addr=0, x_addr=base // 2, g_addr=base), -1), f"group WU {geo}")

    def walk_plans(self, geometry, direction, pattern):
        key = ("walk plans", geometry, direction, pattern)
        if key not in self.memo:
            g = geometry
            self.memo[key] = conv.plan_conv(self.cfg, g.batch, g.cin, g.cout, g.size, g.kernel, g.stride, g.padding,
                                            direction, pattern)
        return self.memo[key]

    def walk_estimate(self, geometry, direction, pattern) -> int:
        return sum(p.estimated_cycles for p in self.walk_plans(geometry, direction, pattern))

    def wu_plan(self, geometry):
        key = ("wu plan", geometry)
        if key not in self.memo:
            g = geometry
            self.memo[key] = conv.plan_conv_wu(self.cfg, g.batch, g.cin, g.cout, g.size, g.kernel, g.stride, g.padding)
        return self.memo[key]

    def wu_estimate(self, geometry) -> int:
        return self.wu_plan(geometry).estimated_cycles

    def mapping(self, layer: LayerWork, g, pattern) -> str:
        """"walk" or "gemm" for one stage of a convolution: the one the planners estimate faster (walks fill
        their lanes with the batch), as a compiler would choose before emitting anything."""
        geometry = layer.conv
        if geometry is None or not conv.walkable(geometry.kernel, geometry.groups):
            return "gemm"
        gemm_estimate = g.count * plan_gemm(self.cfg, g.m, g.n, g.k, pattern=pattern).estimated_cycles
        if g.stage == "WU":
            if not conv.wu_walkable(self.cfg, geometry.cin, geometry.kernel, geometry.groups):
                return "gemm"
            return "walk" if self.wu_estimate(geometry) <= gemm_estimate else "gemm"
        return "walk" if self.walk_estimate(geometry, g.stage, pattern) <= gemm_estimate else "gemm"

    #: operands apart and page aligned in the programs timed without data
    _BASE_SHIFT = 2

    def walk(self, geometry, direction, pattern) -> int:
        base = 1 << (self.cfg.addr_bits - self._BASE_SHIFT)
        plans = self.walk_plans(geometry, direction, pattern)
        return self._cycles(("walk", geometry, direction, pattern), lambda: conv.walk_programs(
            self.cfg, plans, a_addrs=[base] * len(plans), src_addr=0, dst_addr=base // 2,
            idx_addrs=[base + base // 2] * len(plans)), f"conv walk {geometry} {direction} {pattern}")

    def wu_walk(self, geometry) -> int:
        base = 1 << (self.cfg.addr_bits - self._BASE_SHIFT)
        plan = self.wu_plan(geometry)
        return self._cycles(("wu walk", geometry), lambda: conv.wu_programs(
            self.cfg, plan, dy_addr=0, x_addr=base // 2, g_addr=base,
            g_row_bytes=-(-plan.taps * geometry.cin * 4 // 4096) * 4096), f"conv WU walk {geometry}")

    def _blocks(self, layer: LayerWork, g, pattern, mapping: str, base: int, streams: int) -> list:
        """One stage's work as blocks (data-less; operands from ``base``), planned for ``streams``."""
        b = 1 << (self.cfg.addr_bits - self._BASE_SHIFT - 1)
        geometry = layer.conv
        if mapping == "gemm":
            plan = plan_gemm(self.cfg, g.m, g.n, g.k, pattern=pattern, streams=streams)
            return gemm_blocks(self.cfg, plan, a_addr=base, b_addr=base + b // 2, c_addr=base + b,
                               idx_addr=base + b + b // 2, c_bf16=g.stage != "WU")
        gm = geometry
        if g.stage == "WU":
            plan = conv.plan_conv_wu(self.cfg, gm.batch, gm.cin, gm.cout, gm.size, gm.kernel, gm.stride, gm.padding,
                                     streams)
            return conv.wu_blocks(self.cfg, plan, dy_addr=base, x_addr=base + b // 2, g_addr=base + b,
                                  g_row_bytes=-(-plan.taps * gm.cin * 4 // 4096) * 4096)
        blocks = []
        for plan in conv.plan_conv(self.cfg, gm.batch, gm.cin, gm.cout, gm.size, gm.kernel, gm.stride, gm.padding,
                                   g.stage, pattern, streams=streams):
            blocks += conv.walk_blocks(self.cfg, plan, a_addr=base + b, src_addr=base, dst_addr=base + b // 2,
                                       idx_addr=base + b + b // 2, first_step=sum(len(x[0]) for x in blocks),
                                       first_block=len(blocks))
        return blocks

    def interleaved(self, layer: LayerWork, bp, wu, pattern, im2col: bool = True) -> int | None:
        """Cycles of a layer's BP (``bp``, at ``pattern``) and WU (``wu``) interleaved in one stream
        (``nmsat.dataflow.interleave``), each on the mapping :meth:`mapping` picks (GEMMs without ``im2col``);
        None when the interleaved stream cannot be cut into programs."""
        key = ("interleaved", layer.conv, (bp.m, bp.n, bp.k), (wu.m, wu.n, wu.k), pattern, im2col)
        if key not in self.memo:
            b = 1 << (self.cfg.addr_bits - self._BASE_SHIFT)
            pick = (lambda g, p: self.mapping(layer, g, p)) if im2col else (lambda g, p: "gemm")
            first = self._blocks(layer, bp, pattern, pick(bp, pattern), 0, STREAMS)
            second = self._blocks(layer, wu, None, pick(wu, None), 2 * b, STREAMS)
            try:
                programs = interleave(self.cfg, first, second)
            except ValueError:  # a block too long for a program of its own: no interleaving for this layer
                self.memo[key] = None
                return None
            self._cycles(key, lambda: programs, f"interleaved BP and WU of {layer.name}")
        return self.memo[key]

    def interleave_saving(self, layer: LayerWork, pattern, im2col: bool, apart: int) -> int:
        """Cycles interleaving a layer's BP (at ``pattern``) and WU saves against ``apart``, their cycles one after
        the other: tried only where BP's plan waits on memory (past ``INTERLEAVE_BOUND`` × its MAC bound)."""
        bp = [g for g in layer.gemms if g.stage == "BP"]
        wu = [g for g in layer.gemms if g.stage == "WU"]
        if not (len(bp) == len(wu) == 1 and bp[0].count == wu[0].count == 1):
            return 0
        g = bp[0]
        if im2col and self.mapping(layer, g, pattern) == "walk":
            estimate = self.walk_estimate(layer.conv, "BP", pattern)
        else:
            estimate = plan_gemm(self.cfg, g.m, g.n, g.k, pattern=pattern).estimated_cycles
        bound = g.macs / (self.cfg.rows * self.cfg.cols) * (pattern[0] / pattern[1] if pattern else 1)
        if estimate <= INTERLEAVE_BOUND * bound:
            return 0
        together = self.interleaved(layer, g, wu[0], pattern, im2col)
        return 0 if together is None else max(0, apart - together)

    def norm(self, shape) -> tuple[int, int]:
        """(forward, backward) cycles of a batch norm of ``shape`` ``[N, C, H, W]`` as built: the channel sums and
        apply walks of ``nmsat.dataflow.norm``, timed on the simulator."""
        key = ("norm programs", shape)
        if key not in self.memo:
            self.memo[key] = norm_programs(self.cfg, *shape)
        programs = self.memo[key]
        return tuple(self._cycles(("norm", shape, stage), lambda stage=stage: programs[stage], f"batch norm {shape}")
                     for stage in ("forward", "backward"))

    def pregen(self, weights, pattern) -> int:
        cout, k_g, groups = weights
        key = ("pregen", weights, pattern)
        if key not in self.memo:
            cfg = self.cfg
            if pattern is None:  # the update, then the FF and BP bf16 forms by two fp32 → bf16 passes
                words = -(-cout * k_g // cfg.rows)
                beats = words * 4 * cfg.rows // cfg.bus_bytes
                cycles = stream_cycles(cfg, beats, UPDATE_STREAMS)[2] + 1
                cycles += 2 * pass_cycles(cfg, VectorPass("cast", "FF", cout * k_g, 1, 1, bf16=False))
            else:
                lay = layout_sparsify(cfg, cout, k_g, *pattern, groups=groups)
                program = update_instructions(lay, lay.end, lay.end + lay.master_bytes) + lay.instructions()
                cycles = sum(self.core.time_program(program[i:i + cfg.imem_depth - 1] + [encode(Opcode.FINISH)]).cycles
                             for i in range(0, len(program), cfg.imem_depth - 1))
            self.memo[key] = cycles
        return self.memo[key]


def time_iteration(cfg: SATConfig, layers: list[LayerWork], pattern: tuple[int, int] | None = None, *,
                   pregeneration: bool = True, im2col: bool = True, offline: bool = True, interleave: bool = True,
                   norms: str = "walks", core: CoreModel | None = None, progress=None,
                   timer: Timer | None = None) -> IterationReport:
    """Cycles of one iteration of ``layers`` (``nmsat.dataflow.models``) with BDWP at ``pattern`` (None: dense);
    ``pregeneration`` / ``im2col`` / ``offline`` / ``interleave`` switch those optimisations (see the module
    docstring); ``norms``: batch norms as the walks built (``"walks"``) or by the stream rule (``"stream"``).
    ``progress(layer)`` is called after each layer is timed; ``timer``: time on this one (to read what it
    recorded) instead of a fresh one."""
    if norms not in ("walks", "stream"):
        raise ValueError(f"norms must be 'walks' or 'stream', got {norms!r}")
    if pattern is not None:
        n, m = pattern
        if m not in cfg.sparse_m or not 1 <= n <= m:
            raise ValueError(f"pattern {n}:{m}: the {cfg.name} core runs n:m with m in {cfg.sparse_m} and 1 <= n <= m")
    timer = timer or Timer(cfg, core or CoreModel(cfg))
    report = IterationReport(cfg.name, pattern, pregeneration, im2col=im2col, offline=offline, interleave=interleave,
                             norms=norms)
    norm_walks = norms == "walks" and cfg.rows == cfg.cols
    for layer in layers:
        sparse = pattern is not None and layer.sparse
        stages = {"FF": 0, "BP": 0, "WU": 0}
        for g in layer.gemms:
            p = pattern if sparse and g.stage in ("FF", "BP") else None
            cycles = None
            if im2col and timer.mapping(layer, g, p) == "walk":
                try:
                    cycles = timer.walk(layer.conv, g.stage, p) if g.stage != "WU" else timer.wu_walk(layer.conv)
                except WalkTooLong:  # a small instruction memory (the tiny preset) and a deep reduction: GEMMs
                    cycles = None
            grouped = cycles is None and layer.conv is not None and layer.conv.groups > 1
            start = len(timer.calls) if timer.calls is not None else 0
            if grouped and p is None:
                cycles = timer.packed_groups(g, g.stage != "WU", offline)
            if cycles is None and offline:  # the independent GEMMs of a stage (heads, groups) in one program
                cycles = timer.gemm_batch(g.m, g.n, g.k, p, g.stage != "WU", g.count)
            elif cycles is None:
                cycles = g.count * timer.gemm(g.m, g.n, g.k, p, g.stage != "WU", times=g.count)
            # group walks against those GEMMs, both simulated, the faster kept; a BDWP-sparse stage's walks take
            # its pruned weights as they are (the zeros multiplied, the pattern's speed not used)
            if grouped and im2col:
                middle = len(timer.calls) if timer.calls is not None else 0
                try:
                    walk = (timer.group_walk(layer.conv, g.stage, g, force=True) if g.stage != "WU" else
                            timer.group_wu(layer.conv, g, force=True))
                except WalkTooLong:  # a small instruction memory: the GEMMs
                    walk = None
                if walk is not None and walk < cycles:
                    cycles = walk
                    if timer.calls is not None:  # what ran: the walks, not the GEMMs
                        timer.calls[start:middle] = []
                elif timer.calls is not None:
                    del timer.calls[middle:]
            stages[g.stage] += cycles
        saved = (timer.interleave_saving(layer, pattern if sparse else None, im2col, stages["BP"] + stages["WU"])
                 if interleave else 0)
        vec, norm_cycles = {"FF": 0, "BP": 0}, 0
        walked = norm_walks and layer.kind == "batchnorm" and layer.shape is not None
        if walked:  # on the array, serial
            norm_cycles = sum(timer.norm(layer.shape))
        for vp in charged_passes(layer, walked):
            vec[vp.stage] += pass_cycles(cfg, vp)
        pregen = timer.pregen(layer.weights, pattern if sparse else None) if layer.weights else 0
        report.layers.append(LayerCycles(layer.name, layer.kind, sparse, stages["FF"], stages["BP"], stages["WU"],
                                         vec["FF"], vec["BP"], pregen, layer.macs, interleave_saved=saved,
                                         norm=norm_cycles))
        if progress is not None:
            progress(layer)
    if offline:  # backward order: a weighted layer's WU hides the passes before it in forward order
        budget = 0
        for index in reversed(range(len(report.layers))):
            x = report.layers[index]
            if layers[index].weights is not None:
                budget = int(HIDE_SHARE * x.wu)
                continue
            hidden = min(x.vector_bp, budget)
            budget -= hidden
            report.layers[index] = dataclasses.replace(x, vector_hidden=hidden)
    return report
