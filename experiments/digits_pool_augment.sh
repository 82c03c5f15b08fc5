#!/usr/bin/env bash
# TrivialAugment on the dreams of KD batches (recovery.pool.augment, issue 13) on the embedded
# default: the digits CNN at 90% and 95% LAMP sparsity, dream_kd at 300 KD steps, augment none and
# trivial, seeds 0-2 (each its own cached teacher). 12 runs, about 7 minutes on 2 cores. Writes
# experiments/results/digits_pool_augment/none.md and trivial.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=outputs/bench/digits_pool_augment
rm -rf "$out"
mkdir -p experiments/results/digits_pool_augment
for augment in none trivial; do
    .venv/bin/python -m dfkd.run -m seed=0,1,2 pruning.ratio=0.9,0.95 recovery.pool.augment=$augment \
        deploy=none logger=csv trainer.enable_progress_bar=false hydra.sweep.dir="$out/$augment"
    .venv/bin/python -m dfkd.report "$out/$augment"
    cp "$out/$augment/results.md" experiments/results/digits_pool_augment/$augment.md
done
