"""One training iteration of a model on the simulator, reported layer by layer: the ``nmsat simulate`` job.

Holds :func:`simulate` (a built-in model by name, or a model's work from
``nmsat.dataflow.models`` / :func:`nmsat.sw.workload.module_work`, timed at
an N:M pattern and, for the speedup, dense), :class:`SimulationReport` (per
layer: GEMM cycles of FF, BP and WU, vector passes, pre-generation, the
array's utilisation and where the time went; the totals and the speedup
over dense; as a table, a dict for JSON, a plot) and the JSON field list
:data:`JSON_FIELDS` the CLI documents.

The cycles are ``nmsat.sw.iteration.time_iteration``'s (timing-only
simulation; see its docstring for what is simulated and what is charged by
the vector unit's stream rule).  Not here: the argument parsing (the CLI).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from ..dataflow.models import LayerWork, build_model
from ..hw.config import SATConfig
from ..sim.core import CoreModel
from .iteration import IterationReport, LayerCycles, time_iteration

__all__ = ["LayerReport", "SimulationReport", "simulate", "simulate_module", "parse_nm", "JSON_FIELDS", "LAYER_FIELDS"]

#: the JSON report's top-level fields (``nmsat simulate --json``), each with what it holds
JSON_FIELDS = {
    "model": "the model's name",
    "preset": "the accelerator configuration preset",
    "array": "[rows, cols] of the PE array",
    "clock_mhz": "the core's clock",
    "batch": "training batch size",
    "pattern": "BDWP's N:M pattern as 'N:M', or 'dense'",
    "cycles": "cycles of one training iteration at the pattern",
    "seconds": "cycles / clock",
    "dense_cycles": "cycles of the same iteration dense (null with --dense)",
    "speedup_over_dense": "dense_cycles / cycles (1.0 with --dense)",
    "ideal_speedup": "the bound from MAC counts: dense MACs / MACs with BDWP's FF and BP at N/M",
    "totals": "cycle totals: gemm_ff, gemm_bp, gemm_wu, norm_walks, vector_forward, vector_backward, "
              "vector_hidden, pregeneration, pregeneration_charged, interleave_saved",
    "optimisations": "pregeneration, im2col, offline, interleave: on or off",
    "not_built_passes": "vector passes charged by the stream rule that no VECTOR function runs yet (their ops)",
    "layers": "per layer: the fields of LAYER_FIELDS",
    "wall_seconds": "how long the simulation took",
}

#: each layer's fields in the JSON report
LAYER_FIELDS = {
    "name": "the layer's name", "kind": "conv2d, linear, batchnorm, add, ...", "sparse": "BDWP prunes it",
    "ff": "FF GEMM cycles", "bp": "BP GEMM cycles", "wu": "WU GEMM cycles",
    "vector_ff": "forward vector-pass cycles", "vector_bp": "backward vector-pass cycles",
    "vector_hidden": "backward vector cycles run under a WU (offline scheduling)",
    "norm": "a batch norm's walks on the array, forward and backward (nmsat.dataflow.norm)",
    "pregen": "weight update + sparsify cycles (hidden under the GEMMs up to a share, see totals)",
    "interleave_saved": "cycles BP and WU interleaved saved", "macs": "MACs the array does (BDWP's N/M in FF/BP)",
    "cycles": "cycles the iteration waits for this layer: GEMMs + norm walks + vector − hidden",
    "utilisation": "macs / (GEMM cycles · PEs), null without GEMMs",
    "bound": "where its time went: the largest of FF, BP, WU, norm, vector",
    "dense_cycles": "the same layer's cycles dense (null with --dense)",
}


def parse_nm(text: str) -> tuple[int, int]:
    """'2:8' → (2, 8), with a clear error for anything else."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"N:M pattern {text!r}: write it as two whole numbers, e.g. 2:8")
    n, m = int(parts[0]), int(parts[1])
    if not 1 <= n <= m:
        raise ValueError(f"N:M pattern {text!r}: need 1 <= N <= M")
    return n, m


@dataclass
class LayerReport:
    name: str
    kind: str
    sparse: bool
    ff: int
    bp: int
    wu: int
    vector_ff: int
    vector_bp: int
    vector_hidden: int
    norm: int
    pregen: int
    interleave_saved: int
    macs: int
    cycles: int
    utilisation: float | None
    bound: str
    dense_cycles: int | None = None


@dataclass
class SimulationReport:
    model: str
    preset: str
    array: tuple[int, int]
    clock_mhz: float
    batch: int
    pattern: str
    cycles: int
    dense_cycles: int | None
    ideal_speedup: float
    totals: dict
    optimisations: dict
    not_built_passes: list[str]
    layers: list[LayerReport] = field(default_factory=list)
    wall_seconds: float = 0.0
    #: the timer's reports (not in the JSON): at the pattern, and dense
    iteration: IterationReport | None = field(default=None, repr=False)
    dense_iteration: IterationReport | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def speedup_over_dense(self) -> float:
        return self.dense_cycles / self.cycles if self.dense_cycles else 1.0

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in JSON_FIELDS if name != "layers"}
        out["array"] = list(self.array)
        out["layers"] = [asdict(layer) for layer in self.layers]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        """The per-layer table, the totals and the speedup, as text."""
        compare = self.dense_cycles is not None
        head = ["layer", "kind", "N:M" if self.pattern != "dense" else "", "FF", "BP", "WU", "norm", "vector",
                "hidden", "cycles", "util", "bound"] + (["dense", "speedup"] if compare else [])
        rows = []
        for x in self.layers:
            row = [x.name, x.kind, "sparse" if x.sparse else "", _num(x.ff), _num(x.bp), _num(x.wu), _num(x.norm),
                   _num(x.vector_ff + x.vector_bp), _num(x.vector_hidden), _num(x.cycles),
                   "" if x.utilisation is None else f"{100 * x.utilisation:.0f}%", x.bound]
            if compare:
                row += [_num(x.dense_cycles), f"{x.dense_cycles / x.cycles:.2f}x" if x.cycles else ""]
            rows.append(row)
        widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
        left = {0, 1, 2, 11}

        def line(cells):
            return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in
                             enumerate(zip(cells, widths))).rstrip()
        t = self.totals
        out = [f"{self.model}: one training iteration, batch {self.batch}, {self.pattern}, preset {self.preset} "
               f"({self.array[0]}x{self.array[1]} PEs, {self.clock_mhz:g} MHz)", "", line(head),
               line(["-" * w for w in widths])] + [line(r) for r in rows] + [""]
        out.append(f"GEMMs: FF {_num(t['gemm_ff'])}, BP {_num(t['gemm_bp'])}, WU {_num(t['gemm_wu'])} cycles"
                   + (f" ({_num(t['interleave_saved'])} saved by interleaving BP and WU)" if t["interleave_saved"] else ""))
        if t["norm_walks"]:
            out.append(f"batch norms (walks on the array): {_num(t['norm_walks'])} cycles")
        out.append(f"vector unit: forward {_num(t['vector_forward'])}, backward {_num(t['vector_backward'])} "
                   f"({_num(t['vector_hidden'])} of them under the WUs)")
        out.append(f"pre-generation (update + sparsify): {_num(t['pregeneration'])}, of which the iteration waits "
                   f"for {_num(t['pregeneration_charged'])}")
        out.append(f"total: {_num(self.cycles)} cycles = {1e3 * self.seconds:.2f} ms at {self.clock_mhz:g} MHz")
        if self.dense_cycles is not None:
            out.append(f"dense: {_num(self.dense_cycles)} cycles; speedup over dense {self.speedup_over_dense:.3f}x "
                       f"(bound from MAC counts {self.ideal_speedup:.3f}x)")
        if self.not_built_passes:
            out.append("charged by the vector unit's stream rule, no VECTOR function yet: "
                       + ", ".join(self.not_built_passes))
        return "\n".join(out)

    def plot(self, path) -> None:
        """Per-layer stacked bars (FF, BP, WU, vector) at the pattern, dense beside it, to an image file."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = [x for x in self.layers if x.cycles or (x.dense_cycles or 0)]
        fig, ax = plt.subplots(figsize=(max(8.0, 0.28 * len(layers) + 2), 4.8))
        parts = (("ff", "FF"), ("bp", "BP"), ("wu", "WU"), ("vector", "vector"))
        colours = ("#4c72b0", "#dd8452", "#55a868", "#8172b3")
        runs = [(self.iteration, 0.0, self.pattern)]
        if self.dense_iteration is not None:
            runs = [(self.dense_iteration, -0.2, "dense"), (self.iteration, 0.2, self.pattern)]
        width = 0.4 if len(runs) == 2 else 0.8
        shown = [i for i, x in enumerate(self.layers) if x.cycles or (x.dense_cycles or 0)]
        for r, (report, shift, label) in enumerate(runs):
            bottom = [0.0] * len(layers)
            for (key, name), colour in zip(parts, colours):
                values = [_part(report.layers[i], key) for i in shown]  # the runs list the layers in one order
                ax.bar([i + shift for i in range(len(layers))], values, width, bottom=bottom, color=colour,
                       alpha=0.55 if label == "dense" else 1.0, edgecolor="none",
                       label=f"{name} ({label})" if len(runs) == 2 or r == 0 else None)
                bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(range(len(layers)), [x.name for x in layers], rotation=90, fontsize=6)
        ax.set_ylabel("cycles")
        ax.set_title(f"{self.model}, batch {self.batch}, {self.preset}: {self.pattern} "
                     + (f"{self.speedup_over_dense:.2f}x over dense" if self.dense_cycles else ""))
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _part(x: LayerCycles, key: str) -> int:
    if key == "vector":
        return x.vector - x.vector_hidden
    return getattr(x, key)


def _num(value) -> str:
    if value is None:
        return ""
    return f"{value:,}"


def _layer_cycles(x: LayerCycles) -> int:
    return x.gemm + x.norm + x.vector - x.vector_hidden


def _bound(x: LayerCycles) -> str:
    parts = {"FF": x.ff, "BP": x.bp, "WU": x.wu, "norm": x.norm, "vector": x.vector - x.vector_hidden}
    name, value = max(parts.items(), key=lambda kv: kv[1])
    return name if value else ""


def _useful_macs(layer: LayerWork, pattern) -> int:
    n, m = pattern if pattern else (1, 1)
    return round(sum(g.macs * (n / m if layer.sparse and pattern and g.stage in ("FF", "BP") else 1)
                     for g in layer.gemms))


def simulate(model: str | list[LayerWork], pattern: tuple[int, int] | None = (2, 8), *,
             cfg: SATConfig | None = None, batch: int = 32, compare_dense: bool = True, name: str | None = None,
             pregeneration: bool = True, im2col: bool = True, offline: bool = True, interleave: bool = True,
             norms: str = "walks", progress=None) -> SimulationReport:
    """One training iteration of ``model`` (a built-in name, or its layers' work) at ``pattern`` (None: dense),
    timed on the simulator at ``cfg`` (default vcu1525), and dense too for the speedup (``compare_dense``);
    ``norms``: batch norms as their walks or by the stream rule (``nmsat.sw.iteration.time_iteration``).
    ``progress(layer)`` is called per timed layer."""
    cfg = cfg or SATConfig.vcu1525()
    if isinstance(model, str):
        layers, name = build_model(model, batch), name or model
    else:
        layers, name = list(model), name or "model"
        if not layers:
            raise ValueError("simulate: the model has no layers the accelerator times")
        batch = next((x.conv.batch for x in layers if x.conv is not None), batch)
    t0 = time.perf_counter()
    core = CoreModel(cfg)
    options = dict(pregeneration=pregeneration, im2col=im2col, offline=offline, interleave=interleave)
    sparse = time_iteration(cfg, layers, pattern, core=core, progress=progress, norms=norms, **options)
    dense = time_iteration(cfg, layers, None, core=core, progress=progress, norms=norms, **options) \
        if compare_dense and pattern is not None else None
    pes = cfg.rows * cfg.cols
    rows = []
    for index, (work, x) in enumerate(zip(layers, sparse.layers)):
        macs = _useful_macs(work, pattern)
        rows.append(LayerReport(x.name, x.kind, x.sparse, x.ff, x.bp, x.wu, x.vector_ff, x.vector_bp, x.vector_hidden,
                                x.norm, x.pregen, x.interleave_saved, macs, _layer_cycles(x),
                                macs / (x.gemm * pes) if x.gemm else None, _bound(x),
                                _layer_cycles(dense.layers[index]) if dense else None))  # same order: by position
    dense_macs = sum(x.macs for x in layers)
    ideal = dense_macs / sum(_useful_macs(x, pattern) for x in layers) if pattern else 1.0
    totals = {"gemm_ff": sum(x.ff for x in sparse.layers), "gemm_bp": sum(x.bp for x in sparse.layers),
              "gemm_wu": sum(x.wu for x in sparse.layers), "norm_walks": sparse.norm,
              "vector_forward": sum(x.vector_ff for x in sparse.layers),
              "vector_backward": sum(x.vector_bp for x in sparse.layers), "vector_hidden": sparse.vector_hidden,
              "pregeneration": sparse.pregen, "pregeneration_charged": sparse.pregen_charged,
              "interleave_saved": sparse.interleave_saved}
    not_built = sorted({p.op for x, c in zip(layers, sparse.layers) if not c.norm for p in x.passes if not p.built})
    return SimulationReport(name, cfg.name, (cfg.rows, cfg.cols), cfg.clock_mhz, batch,
                            f"{pattern[0]}:{pattern[1]}" if pattern else "dense", sparse.total,
                            dense.total if dense else None, ideal, totals,
                            {k: "on" if v else "off" for k, v in options.items()}, not_built, rows,
                            time.perf_counter() - t0, sparse, dense)


def simulate_module(module, example, pattern: tuple[int, int] | None = (2, 8), *, cfg: SATConfig | None = None,
                    name: str | None = None, **options) -> SimulationReport:
    """:func:`simulate` for a user's own ``nn.Module`` on an example batch: its work traced by
    :func:`nmsat.sw.workload.module_work`; nodes it cannot map are named in one warning and not timed."""
    import warnings

    from .workload import module_work

    work = module_work(module, example)
    if work.unsupported:
        warnings.warn("not timed on the accelerator (left to the CPU): "
                      + ", ".join(f"{n} ({what})" for n, what in work.unsupported), stacklevel=2)
    return simulate(work.layers, pattern, cfg=cfg, batch=work.batch, name=name or type(module).__name__, **options)
