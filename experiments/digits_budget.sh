#!/usr/bin/env bash
# Does a smaller KD budget separate dreams from noise more? dream_kd and noise_kd at 100 and 150 KD
# steps, 3 seeds, digits at 90% sparsity. Writes experiments/results/digits_budget/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# pruning.scope=global: its table was measured with global L1, the default before LAMP (d1c97f5).
out=outputs/bench/digits_budget
rm -rf "$out"
.venv/bin/python -m dfkd.run -m seed=0,1,2 recovery=noise_kd,dream_kd recovery.steps=100,150 \
    pruning.scope=global logger=none trainer.enable_progress_bar=false hydra.sweep.dir="$out"
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/digits_budget
cp "$out/results.md" experiments/results/digits_budget/
