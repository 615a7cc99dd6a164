"""The ``nmsat`` command line: one kebab-case verb per user task.

Holds argument parsing and the glue to the library; the work itself lives in
the modules each verb calls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_train_digits(args: argparse.Namespace) -> int:
    from .digits import format_results, parse_pattern, sweep

    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    for p in patterns:
        parse_pattern(p)  # fail before training starts
    if args.seeds < 1 or args.epochs < 1:
        raise ValueError(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    seeds = list(range(args.seeds))
    results = sweep(patterns, seeds, epochs=args.epochs, decay=args.decay, progress=not args.quiet)
    table = format_results(results, seeds)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
        print(f"written to {args.output}")
    return 0


def _cmd_verilog(args: argparse.Namespace) -> int:
    from ..hw.config import SATConfig
    from .rtl import verilog_source

    cfg = SATConfig.preset(args.preset)
    text = verilog_source(cfg)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"{args.output}: core for preset {cfg.name!r} ({cfg.rows}x{cfg.cols}), ID {cfg.hash32:#010x}, "
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
    p.add_argument("--output", "-o", help="also write the Markdown table to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_digits)

    p = sub.add_parser("verilog", help="write the core's Verilog for a configuration preset")
    p.add_argument("--preset", default="tiny", help="configuration preset: tiny or vcu1525 (default: %(default)s)")
    p.add_argument("--output", "-o", default="-", help="output file ('-' for stdout, the default)")
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


if __name__ == "__main__":
    sys.exit(main())
