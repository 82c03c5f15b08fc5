#!/usr/bin/env bash
# Issue 2's benchmark: the embedded default (digits, 90% L1 sparsity; global L1 when its table was
# measured, LAMP-ranked since: add pruning.scope=global to repeat it) with every recovery method
# at the same budget, 3 seeds each, on this machine's CPU. Writes
# experiments/results/digits_recovery/{results.md,accuracy-vs-sparsity.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=outputs/bench/digits_recovery
rm -rf "$out"
.venv/bin/python -m dfkd.run -m seed=0,1,2 recovery=none,noise_kd,real_kd,dream_kd \
    logger=csv trainer.enable_progress_bar=false hydra.sweep.dir="$out"
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/digits_recovery
cp "$out/results.md" "$out/accuracy-vs-sparsity.png" experiments/results/digits_recovery/
