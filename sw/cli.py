"""The ``nmsat`` command line (click): one kebab-case verb per user task.

Holds argument parsing, the checks of arguments and output paths done
before any work starts, and the glue to the library; the work itself lives
in the modules each verb calls.  Bad input is one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

import click

#: largest M the digits sweep accepts: its sparse layers reduce over K = 288 and 576, so a larger group
#: would only pad every row out to M
MAX_DIGITS_M = 64

#: the built-in models ``simulate`` takes (``nmsat.dataflow.models.MODELS``)
SIMULATE_MODELS = ("resnet18", "vgg16", "resnet50", "vit", "mobilenet_v1", "resnext50")


class UsageError(ValueError):
    """An argument the command cannot take."""


def _output_path(text: str | None, force: bool) -> Path | None:
    """Check an output file before the work starts: its folder exists and is writable, and it is not
    overwritten without ``--force``."""
    if text is None or text == "-":
        return None
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    return path


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def heartbeat(what: str, every: float = 15.0):
    """Say on stderr that a long step is still running, every ``every`` seconds, and how long it took."""
    done = threading.Event()
    t0 = time.monotonic()

    def beat() -> None:
        while not done.wait(every):
            print(f"  ... {what}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    print(f"  {what}: done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """N:M sparse training accelerator toolkit: simulate workloads, train through the accelerator, generate
    its Verilog."""


@cli.command("train-digits")
@click.option("--patterns", default="dense,1:8,2:8,4:8,2:4", show_default=True,
              help="comma-separated list of 'dense' and N:M patterns")
@click.option("--seeds", type=int, default=5, show_default=True, help="seeds per pattern")
@click.option("--epochs", type=int, default=30, show_default=True, help="epochs per run")
@click.option("--decay", type=float, default=0.0, show_default=True, help="SR-STE decay on pruned weights")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch intra-op threads (the model is small, and more threads thrash when the machine is busy)")
@click.option("--output", "-o", help="also write the Markdown table to this file")
@click.option("--force", is_flag=True, help="overwrite the output file if it exists")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train_digits(patterns, seeds, epochs, decay, threads, output, force, quiet) -> None:
    """Train a small CNN on sklearn digits, dense vs BDWP N:M; print accuracy."""
    from .digits import format_results, parse_pattern, sweep

    patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise UsageError("--patterns is empty: give 'dense' and/or N:M patterns, e.g. dense,2:8")
    for p in patterns:
        parsed = parse_pattern(p)  # fail before training starts
        if parsed and parsed[1] > MAX_DIGITS_M:
            raise UsageError(f"pattern {p!r}: M must be at most {MAX_DIGITS_M} for the digits CNN (its sparse "
                             f"layers reduce over K = 288 and 576)")
    if seeds < 1 or epochs < 1:
        raise UsageError(f"--seeds and --epochs must be >= 1, got {seeds} and {epochs}")
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    output = _output_path(output, force)
    import torch

    torch.set_num_threads(threads)
    seed_list = list(range(seeds))
    results = sweep(patterns, seed_list, epochs=epochs, decay=decay, progress=not quiet)
    table = format_results(results, seed_list)
    print(table)
    if output:
        _write(output, table + "\n")
        print(f"written to {output}")


@cli.command("verilog")
@click.option("--preset", default="tiny", show_default=True, help="configuration preset: tiny or vcu1525")
@click.option("--output", "-o", default="-", help="output file ('-' for stdout, the default)")
@click.option("--force", is_flag=True, help="overwrite the output file if it exists")
def verilog(preset, output, force) -> None:
    """Write the core's Verilog for a configuration preset."""
    from ..hw.config import SATConfig
    from ..hw.verilog import verilog_source

    cfg = SATConfig.preset(preset)
    output = _output_path(output, force)
    print(f"nmsat verilog: generating the core for preset {cfg.name!r} ({cfg.rows}x{cfg.cols})"
          + ("; an array this large takes minutes" if cfg.rows * cfg.cols > 256 else ""), file=sys.stderr, flush=True)
    with heartbeat("generating Verilog"):
        text = verilog_source(cfg)
    if output is None:
        sys.stdout.write(text)
    else:
        _write(output, text)
        print(f"{output}: core for preset {cfg.name!r} ({cfg.rows}x{cfg.cols}), ID {cfg.hash32:#010x}, "
              f"{len(text.splitlines())} lines", file=sys.stderr)


@cli.command("simulate")
@click.argument("model", type=click.Choice(SIMULATE_MODELS), metavar="MODEL")
@click.option("--nm", default="2:8", show_default=True, help="BDWP's N:M pattern")
@click.option("--dense", is_flag=True, help="simulate the dense iteration only (no BDWP, no comparison)")
@click.option("--preset", default="vcu1525", show_default=True, help="accelerator configuration preset")
@click.option("--batch", type=int, default=32, show_default=True, help="training batch size")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON (fields: docs/cli.md)")
@click.option("--plot", type=click.Path(dir_okay=False), help="draw per-layer stacked bars, dense beside sparse, "
              "to this PNG file")
@click.option("--force", is_flag=True, help="overwrite the plot file if it exists")
@click.option("--no-pregeneration", is_flag=True, help="switch pre-generation off (update + sparsify serial)")
@click.option("--no-im2col", is_flag=True, help="switch on-chip im2col off (convolutions as im2col GEMMs)")
@click.option("--no-offline", is_flag=True, help="switch offline scheduling off")
@click.option("--no-interleave", is_flag=True, help="switch interleave mapping off")
@click.option("--e2gc", "group_size", type=int, help="mobilenet_v1, resnext50: grouped 3x3 convolutions of this "
              "many channels a group (E2GC's constant group size; mobilenet_v1's default is 1, depthwise)")
@click.option("--fggc", "groups", type=int, help="mobilenet_v1, resnext50: grouped 3x3 convolutions of this many "
              "groups (a fixed number of groups; resnext50's default is 32)")
@click.option("--norms", type=click.Choice(["walks", "stream"]), default="walks", show_default=True,
              help="batch norms as the walks built (nmsat.dataflow.norm) or by the stream rule of the planned "
              "channel-wise unit")
@click.option("--quiet", is_flag=True, help="no progress bar")
def simulate_cmd(model, nm, dense, preset, batch, as_json, plot, force, no_pregeneration, no_im2col, no_offline,
                 no_interleave, group_size, groups, norms, quiet) -> None:
    """Simulate one training iteration of a built-in MODEL on the accelerator: per-layer cycles, the totals
    and the speedup over dense."""
    from ..hw.config import SATConfig
    from .simulate import parse_nm, simulate

    cfg = SATConfig.preset(preset)
    pattern = None if dense else parse_nm(nm)
    if pattern is not None and (pattern[1] not in cfg.sparse_m):
        raise UsageError(f"--nm {nm}: the {cfg.name} core runs N:M with M in {', '.join(map(str, cfg.sparse_m))}")
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    plot_path = _output_path(plot, force)
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: give a .png file")
    from ..dataflow.models import GROUPED_MODELS, build_model

    if group_size is not None or groups is not None:
        if model not in GROUPED_MODELS:
            raise UsageError(f"--e2gc and --fggc apply to {' and '.join(sorted(GROUPED_MODELS))}, not {model}")
        if group_size is not None and groups is not None:
            raise UsageError("give --e2gc or --fggc, not both")
        try:
            layers = build_model(model, batch, group_size=group_size, groups=groups)
        except ValueError as e:
            raise UsageError(f"{'--e2gc' if group_size is not None else '--fggc'}: {e}") from None
        model = f"{model} ({f'E2GC G={group_size}' if group_size is not None else f'FgGC g={groups}'})"
    else:
        layers = build_model(model, batch)
    bar = None
    if not quiet:
        from tqdm import tqdm

        runs = 1 if pattern is None else 2
        bar = tqdm(total=runs * len(layers), desc=f"simulating {model}", unit="layer", file=sys.stderr,
                   leave=False)
    try:
        report = simulate(layers, pattern, cfg=cfg, batch=batch, name=model, pregeneration=not no_pregeneration,
                          im2col=not no_im2col, offline=not no_offline, interleave=not no_interleave,
                          norms=norms, progress=(lambda layer: bar.update()) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    print(report.to_json() if as_json else report.format_table())
    if plot_path is not None:
        report.plot(plot_path)
        print(f"plot written to {plot_path}", file=sys.stderr)


@cli.command("train")
@click.option("--target", type=click.Choice(["reference", "sim", "rtl", "fpga"]), default="sim", show_default=True,
              help="where the Linear and Conv2d layers run: PyTorch's BDWP, the simulator, the Verilated core, a VCU1525")
@click.option("--nm", default="2:8", show_default=True, help="BDWP's N:M pattern")
@click.option("--dense", is_flag=True, help="train dense (no BDWP)")
@click.option("--preset", default=None, help="accelerator preset (default: tiny for rtl, vcu1525 otherwise)")
@click.option("--epochs", type=int, default=1, show_default=True, help="epochs over the 1,257 training images")
@click.option("--steps", type=int, default=None, help="stop after this many steps")
@click.option("--batch", type=int, default=64, show_default=True, help="batch size")
@click.option("--seed", type=int, default=0, show_default=True, help="initialisation and shuffling seed")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train_cmd(target, nm, dense, preset, epochs, steps, batch, seed, as_json, quiet) -> None:
    """Train the digits CNN through a target (its Linear and Conv2d layers offloaded); report the test
    accuracy and the simulated time."""
    import json

    import torch

    from ..hw.config import SATConfig
    from .digits import load_split, train_through
    from .simulate import parse_nm

    pattern = None if dense else parse_nm(nm)
    cfg = SATConfig.preset(preset or ("tiny" if target == "rtl" else "vcu1525"))
    if pattern is not None and pattern[1] not in cfg.sparse_m:
        raise UsageError(f"--nm {nm}: the {cfg.name} core runs N:M with M in {', '.join(map(str, cfg.sparse_m))}")
    if epochs < 1 or batch < 1 or (steps is not None and steps < 1):
        raise UsageError("--epochs, --batch and --steps must be >= 1")
    if target == "fpga":  # no card: say so before anything starts
        from .transports.xdma import XdmaTransport

        XdmaTransport(cfg).close()
    torch.set_num_threads(1)
    data = load_split()
    total = min(epochs * -(-len(data[0]) // batch), steps or 1 << 30)
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"train through {target}", unit="step", file=sys.stderr)
    try:
        result = train_through(target, pattern, cfg=cfg, epochs=epochs, max_steps=steps, batch_size=batch, seed=seed,
                               data=data, on_step=(lambda loss: (bar.update(), bar.set_postfix(loss=f"{loss:.3f}")))
                               if bar else None)
    finally:
        if bar is not None:
            bar.close()
    label = "dense" if pattern is None else f"{pattern[0]}:{pattern[1]}"
    summary = {"target": target, "pattern": label, "preset": result.preset, "steps": result.steps,
               "batch": batch, "test_accuracy": result.accuracy, "final_loss": result.losses[-1],
               "train_cycles": result.train_cycles, "train_cycles_total": result.train_total,
               "simulated_seconds": result.simulated_seconds, "test_cycles": result.test_cycles,
               "wall_seconds": result.wall_seconds, "on_cpu": "batch norms, max pools, ReLUs, biases, the loss"}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    where = "PyTorch (BDWP reference)" if target == "reference" else f"{target}, preset {result.preset}"
    print(f"digits CNN, {label}, {result.steps} steps of {batch} through {where}: test accuracy "
          f"{result.accuracy:.2f}%, final loss {result.losses[-1]:.4f}")
    if target != "reference":
        c = result.train_cycles
        print(f"core time for training: {result.train_total:,} cycles (FF {c['FF']:,}, BP {c['BP']:,}, WU {c['WU']:,}) "
              f"= {1e3 * result.simulated_seconds:.2f} ms at {result.clock_mhz:g} MHz; the test pass "
              f"{result.test_cycles:,} cycles")
    print(f"on the CPU: {summary['on_cpu']}; host wall time {result.wall_seconds:.1f} s")


@cli.group("fpga")
def fpga() -> None:
    """The VCU1525 flow: the Vivado project and bitstream, Yosys estimates."""


@fpga.command("build")
@click.option("--board", type=click.Choice(["vcu1525"]), default="vcu1525", show_default=True)
@click.option("--preset", default="vcu1525", show_default=True, help="the core's configuration preset")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="project folder (default: build/<board>-<preset>)")
def fpga_build(board, preset, out) -> None:
    """Write the core's Verilog, the shell, its IP Tcl and XDC and an edalize Vivado project; run Vivado
    (synthesis to bitstream and .mcs) when it is on PATH, else stop after the project (exit status 3)."""
    from ..fpga.vivado import NO_VIVADO, build
    from ..hw.config import SATConfig

    cfg = SATConfig.preset(preset)
    folder = Path(out or f"build/{board}-{cfg.name}")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder}: not a folder")
    print(f"nmsat fpga build: {board} shell around the {cfg.name} core ({cfg.rows}x{cfg.cols}) in {folder}"
          + ("; generating a core this large takes minutes" if cfg.rows * cfg.cols > 256 else ""), file=sys.stderr)
    with heartbeat("writing the project"):
        result = build(cfg, folder, board)
    print(f"project: {result.project.folder} ({', '.join(result.project.files)})")
    print(result.message)
    if not result.ran_vivado and not result.cached:
        raise click.exceptions.Exit(NO_VIVADO)


@fpga.command("estimate")
@click.option("--preset", default="tiny", show_default=True, help="the core's configuration preset")
@click.option("--flat", is_flag=True, help="one flat Yosys run of the whole core (small presets only: the "
              "default synthesises the PE once and the rest module by module, and gives the cells per unit)")
def fpga_estimate(preset, flat) -> None:
    """Yosys's resource estimate of the core (synth_xilinx, UltraScale+) against the VU9P and its three SLRs."""
    from ..fpga.estimate import VU9P, Estimate, estimate
    from ..hw.config import SATConfig

    cfg = SATConfig.preset(preset)
    with heartbeat(f"Yosys on the {cfg.name} core"):
        est = estimate(cfg, hierarchical=not flat)
    keys = ("LUT", "FF", "DSP", "BRAM36", "URAM")

    def used(e: Estimate) -> dict:
        return {"LUT": e.lut, "FF": e.ff, "DSP": e.dsp, "BRAM36": e.bram36, "URAM": e.uram}

    if est.units:
        print(f"{'unit':<16}" + "".join(f"{k:>10}" for k in keys))
        for unit, cells in sorted(est.units.items(), key=lambda item: -Estimate(item[0], item[1]).lut):
            print(f"{unit:<16}" + "".join(f"{v:>10,.0f}" for v in used(Estimate(unit, cells)).values()))
        print()
    print(f"{'resource':<8} {'used':>12} {'VU9P':>10} {'of VU9P':>8} {'of one SLR':>11}")
    for key, value in used(est).items():
        print(f"{key:<8} {value:>12,.0f} {VU9P[key]:>10,} {value / VU9P[key]:>8.1%} {3 * value / VU9P[key]:>11.1%}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0; 1 when a card or tool is missing or the core stopped with an
    error; 2 for bad input; 130 interrupted)."""
    args = sys.argv[1:] if argv is None else list(argv)
    words = [a for a in args if not a.startswith("-")]
    command = " ".join(words[:2]) if words[:1] == ["fpga"] else (words[0] if words else "")
    try:
        result = cli.main(args=args, prog_name="nmsat", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else str(exc), file=sys.stderr)
        return 2
    except click.UsageError as exc:
        print(f"nmsat {command}: error: {exc.format_message()}".replace("  ", " "), file=sys.stderr)
        if exc.ctx is not None:
            print(f"(see `nmsat {command} --help`)".replace("nmsat  ", "nmsat "), file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        print(f"nmsat {command}: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f"nmsat {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the command cannot use
        print(f"nmsat {command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except RuntimeError as exc:  # what the command needs is missing (a card, a tool) or the core failed
        from .driver import CoreError, DeviceError
        from .rtl import ToolMissing

        if not isinstance(exc, (DeviceError, ToolMissing, CoreError)):
            raise
        print(f"nmsat {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nmsat {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
