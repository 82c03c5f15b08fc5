#!/usr/bin/env bash
# LAMP against global L1 on the embedded default (issue 13): the digits CNN at 90% and 95%
# unstructured sparsity, pruning.scope=global (one |weight| threshold) and lamp (one threshold on
# LAMP scores), dream_kd and real_kd at 300 KD steps, seeds 0-2 (each its own cached teacher).
# 24 runs, about 12 minutes on 2 cores. Writes experiments/results/digits_lamp/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=outputs/bench/digits_lamp
rm -rf "$out"
.venv/bin/python -m dfkd.run -m seed=0,1,2 pruning.ratio=0.9,0.95 pruning.scope=global,lamp \
    recovery=dream_kd,real_kd deploy=none logger=csv trainer.enable_progress_bar=false hydra.sweep.dir="$out"
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/digits_lamp
cp "$out/results.md" experiments/results/digits_lamp/
