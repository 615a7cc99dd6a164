#!/usr/bin/env bash
# Dense vs BDWP accuracy on sklearn's digits (5 patterns x 5 seeds, 30 epochs).
# Writes benchmarks/results/digits_accuracy.md. About 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
nmsat train-digits --patterns dense,1:8,2:8,4:8,2:4 --seeds 5 --epochs 30 -o benchmarks/results/digits_accuracy.md
