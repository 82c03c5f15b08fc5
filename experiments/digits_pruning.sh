#!/usr/bin/env bash
# Issue 15 on the embedded default: every pruning method with dream_kd at the same budget (300 KD
# steps), 3 seeds each, deployment figures with 1 CPU thread: magnitude (90% L1, one shot; global
# L1 when measured: add pruning.scope=global to repeat),
# iterative (90% in 3 cubic rounds sharing the 300 steps), nm (2:4, first conv dense), structured
# (50% of the FLOPs). About 8 minutes on 2 cores. Writes experiments/results/digits_pruning/
# {results.md,accuracy-vs-sparsity.png,accuracy-vs-latency.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=outputs/bench/digits_pruning
rm -rf "$out"
.venv/bin/python -m dfkd.run -m seed=0,1,2 pruning=magnitude,iterative,nm,structured deploy.threads=1 \
    logger=csv trainer.enable_progress_bar=false hydra.sweep.dir="$out"
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/digits_pruning
cp "$out/results.md" "$out"/accuracy-vs-*.png experiments/results/digits_pruning/
