#!/usr/bin/env bash
# Issue 3's CPU-reduced benchmark: CIFAR-10 (JPEG copy), ResNet-18 width 16, 90% sparsity, every
# recovery method at the same budget, seed 0 (settings: conf/experiment/cifar10_cpu_reduced.yaml).
# About 30 minutes on 2 CPU cores, most of it the teacher (trained once, then cached).
# Writes experiments/results/cifar10_cpu_reduced/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
out=outputs/bench/cifar10_cpu_reduced
rm -rf "$out"
i=0
for method in none noise_kd real_kd finetune dream_kd; do
    .venv/bin/python -m dfkd.run +experiment=cifar10_cpu_reduced recovery=$method "$@" \
        hydra.run.dir="$out/$i"
    i=$((i + 1))
done
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/cifar10_cpu_reduced
cp "$out/results.md" experiments/results/cifar10_cpu_reduced/
