#!/usr/bin/env bash
# Dreams aimed at two classes (synthesis.synthesizer.target_mix, issue 13) on the embedded default:
# the digits CNN at 90% and 95% LAMP sparsity, dream_kd at 300 KD steps, target_mix 0 (one class
# per dream) and 1 (every dream between its class and another), seeds 0-2 (each its own cached
# teacher). 12 runs, about 7 minutes on 2 cores. Writes experiments/results/digits_target_mix/
# mix0.md and mix1.md (dfkd.report groups runs by synthesizer, not by its settings: one folder each).
set -euo pipefail
cd "$(dirname "$0")/.."
out=outputs/bench/digits_target_mix
rm -rf "$out"
mkdir -p experiments/results/digits_target_mix
for mix in 0 1; do
    .venv/bin/python -m dfkd.run -m seed=0,1,2 pruning.ratio=0.9,0.95 synthesis.synthesizer.target_mix=$mix \
        deploy=none logger=csv trainer.enable_progress_bar=false hydra.sweep.dir="$out/mix$mix"
    .venv/bin/python -m dfkd.report "$out/mix$mix"
    cp "$out/mix$mix/results.md" experiments/results/digits_target_mix/mix$mix.md
done
