#!/usr/bin/env bash
# Accuracy against sparsity on digits: 5 ratios x 5 recovery methods x 3 seeds (75 runs, one
# teacher per seed). Writes experiments/results/digits_sparsity_sweep/{results.md,accuracy-vs-sparsity.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=outputs/bench/digits_sparsity_sweep
rm -rf "$out"
# pruning.scope=global: its table was measured with global L1, the default before LAMP (d1c97f5).
.venv/bin/python -m dfkd.run -m +experiment=digits_sparsity_sweep pruning.scope=global hydra.sweep.dir="$out"
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/digits_sparsity_sweep
cp "$out/results.md" "$out/accuracy-vs-sparsity.png" experiments/results/digits_sparsity_sweep/
