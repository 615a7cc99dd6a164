#!/usr/bin/env bash
# Dense vs BDWP accuracy on sklearn's digits (5 patterns x 5 seeds, 30 epochs, one torch thread).
# Writes benchmarks/results/digits_accuracy.md. About 2 minutes on 2 cores.
#
#   benchmarks/digits_accuracy.sh [--force] [extra nmsat train-digits options]
#
# Uses the nmsat of the README's install (.venv/bin/nmsat), else the one on PATH, else python3 -m nmsat.
# The committed result is kept unless --force is given.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
force=()
args=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --force) force=(--force) ;;
    *) args+=("$arg") ;;
  esac
done
if [[ -x .venv/bin/nmsat ]]; then
  nmsat=(.venv/bin/nmsat)
elif command -v nmsat > /dev/null; then
  nmsat=(nmsat)
else
  nmsat=(python3 -m nmsat)
fi
out=benchmarks/results/digits_accuracy.md
if [[ -e "$out" && ${#force[@]} -eq 0 ]]; then
  echo "digits_accuracy.sh: $out exists (the recorded result); pass --force to run again and overwrite it" >&2
  exit 2
fi
mkdir -p benchmarks/results
"${nmsat[@]}" train-digits --patterns dense,1:8,2:8,4:8,2:4 --seeds 5 --epochs 30 --threads 1 \
  -o "$out" "${force[@]}" "${args[@]+"${args[@]}"}"
