"""The ``nmsat`` command line: one kebab-case verb per user task.

Holds argument parsing, the checks of arguments and output paths done
before any work starts, and the glue to the library; the work itself lives
in the modules each verb calls.  Bad input is one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path

#: largest M the digits sweep accepts: its sparse layers reduce over K = 288 and 576, so a larger group
#: would only pad every row out to M
MAX_DIGITS_M = 64


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


def _cmd_train_digits(args: argparse.Namespace) -> int:
    from .digits import format_results, parse_pattern, sweep

    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    if not patterns:
        raise UsageError("--patterns is empty: give 'dense' and/or N:M patterns, e.g. dense,2:8")
    for p in patterns:
        parsed = parse_pattern(p)  # fail before training starts
        if parsed and parsed[1] > MAX_DIGITS_M:
            raise UsageError(f"pattern {p!r}: M must be at most {MAX_DIGITS_M} for the digits CNN (its sparse "
                             f"layers reduce over K = 288 and 576)")
    if args.seeds < 1 or args.epochs < 1:
        raise UsageError(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    output = _output_path(args.output, args.force)
    import torch

    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    results = sweep(patterns, seeds, epochs=args.epochs, decay=args.decay, progress=not args.quiet)
    table = format_results(results, seeds)
    print(table)
    if output:
        _write(output, table + "\n")
        print(f"written to {output}")
    return 0


def _cmd_verilog(args: argparse.Namespace) -> int:
    from ..hw.config import SATConfig
    from ..hw.verilog import verilog_source

    cfg = SATConfig.preset(args.preset)
    output = _output_path(args.output, args.force)
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmsat", description="N:M sparse training accelerator toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train-digits", help="train a small CNN on sklearn digits, dense vs BDWP N:M; print accuracy")
    p.add_argument("--patterns", default="dense,1:8,2:8,4:8,2:4",
                   help="comma-separated list of 'dense' and N:M patterns (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per pattern (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default: %(default)s)")
    p.add_argument("--decay", type=float, default=0.0, help="SR-STE decay on pruned weights (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default: %(default)s: the model is small, and more threads "
                        "thrash when the machine is busy)")
    p.add_argument("--output", "-o", help="also write the Markdown table to this file")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_digits)

    p = sub.add_parser("verilog", help="write the core's Verilog for a configuration preset")
    p.add_argument("--preset", default="tiny", help="configuration preset: tiny or vcu1525 (default: %(default)s)")
    p.add_argument("--output", "-o", default="-", help="output file ('-' for stdout, the default)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.set_defaults(func=_cmd_verilog)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f"nmsat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nmsat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
