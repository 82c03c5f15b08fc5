#!/usr/bin/env bash
# The flagship experiment, CPU-sized (issue 13): CIFAR-10 (JPEG copy), ResNet-18 width 16, teacher
# trained 15 epochs on 45,000 train images (5,000 are the validation split), 300 KD steps of 128
# images (settings: conf/experiment/cifar10_cpu_reduced.yaml), on 2 CPU cores:
#   1. 90% sparsity, every recovery method, seeds 0-2 (one teacher: teacher.seed stays 0);
#   2. 50% and 75%: none and dream_kd, seed 0.
# About 2 hours, 45 minutes of it the teacher (trained once, then cached). Writes
# experiments/results/cifar10_cpu_reduced/results.md (python -m dfkd.report).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
out=outputs/bench/cifar10_cpu_reduced
rm -rf "$out"
.venv/bin/python -m dfkd.run -m +experiment=cifar10_cpu_reduced teacher.seed=0 seed=0,1,2 \
    recovery=none,noise_kd,real_kd,finetune,dream_kd "$@" hydra.sweep.dir="$out/90"
.venv/bin/python -m dfkd.run -m +experiment=cifar10_cpu_reduced pruning.ratio=0.5,0.75 \
    recovery=none,dream_kd "$@" hydra.sweep.dir="$out/50_75"
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/cifar10_cpu_reduced
cp "$out/results.md" "$out/accuracy-vs-sparsity.png" experiments/results/cifar10_cpu_reduced/
