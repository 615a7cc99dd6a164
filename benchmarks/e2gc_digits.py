"""Accuracy on scikit-learn's digits of a small E2GC network against its FgGC twin, dense and BDWP.

    python benchmarks/e2gc_digits.py [--group-size 4] [--seeds 5] [--epochs 30]

``nmsat.sw.e2gc.DigitsGroupCNN`` with its two grouped 3×3 convolutions (16 and 32 channels) of a constant
group size G (E2GC), and with a fixed number of groups g (FgGC) chosen as the power of two whose grouped
layers' MACs are nearest E2GC's; each trained dense and with BDWP 2:8 from the same seeds (the training of
``nmsat.sw.digits.train_once``).  Writes benchmarks/results/e2gc_digits_G<G>.md.
"""

import argparse
import math
import os
import statistics
import time
from functools import partial
from pathlib import Path

from nmsat.sw.digits import load_split, train_once
from nmsat.sw.e2gc import DigitsGroupCNN

#: (channels, pixels) of the network's grouped 3×3 convolutions: 16 at 8×8, 32 at 4×4 (stride 2)
GROUPED = ((16, 64), (32, 16))


def grouped_macs(group_size=None, groups=None) -> int:
    return sum(pixels * 9 * c * (group_size if group_size else c // groups) for c, pixels in GROUPED)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    e2gc = grouped_macs(group_size=args.group_size)
    candidates = [g for g in (1, 2, 4, 8, 16) if all(c % g == 0 for c, _ in GROUPED)]
    g = min(candidates, key=lambda x: abs(math.log(grouped_macs(groups=x) / e2gc)))
    data = load_split()
    rows = []
    start, load0 = time.time(), os.getloadavg()[0]
    for label, factory, macs in ((f"E2GC G={args.group_size}", partial(DigitsGroupCNN, group_size=args.group_size), e2gc),
                                 (f"FgGC g={g}", partial(DigitsGroupCNN, groups=g), grouped_macs(groups=g))):
        for pattern in (None, (2, 8)):
            acc = [train_once(pattern, seed, data, epochs=args.epochs, model_factory=factory) for seed in range(args.seeds)]
            rows.append(f"| {label} | {'dense' if pattern is None else '2:8'} | {macs:,} | "
                        f"{statistics.fmean(acc):.2f} ± {statistics.stdev(acc) if len(acc) > 1 else 0:.2f} |")
            print(rows[-1], flush=True)
    lines = [f"# Digits: E2GC (G = {args.group_size}) against FgGC (g = {g}), {args.seeds} seeds, {args.epochs} epochs",
             "", "| network | training | grouped-layer MACs per image | test accuracy % (mean ± sd) |",
             "|---|---|---|---|", *rows, "",
             f"Wall time {time.time() - start:.0f} s, load average {load0:.2f} at the start, {os.cpu_count()} CPUs."]
    out = Path(__file__).parent / "results" / f"e2gc_digits_G{args.group_size}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
