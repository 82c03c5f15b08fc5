#!/usr/bin/env bash
# Issue 5's CIFAR-10 sweep, CPU-reduced: the cifar10_cpu_reduced settings (ResNet-18 width 16,
# 15-epoch teacher on the JPEG copy, 300 KD steps of 128) at 50/75/90% sparsity with every
# recovery method, seed 0 (15 runs, one cached teacher). About 40 minutes on 2 CPU cores once the
# teacher is cached (60 more minutes otherwise).
# Writes experiments/results/cifar10_sparsity_sweep_cpu/{results.md,accuracy-vs-sparsity.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
out=outputs/bench/cifar10_sparsity_sweep_cpu
rm -rf "$out"
.venv/bin/python -m dfkd.run -m +experiment=cifar10_cpu_reduced \
    pruning.ratio=0.5,0.75,0.9 recovery=none,noise_kd,real_kd,finetune,dream_kd \
    task_name=cifar10_sparsity_sweep_cpu hydra.sweep.dir="$out" "$@"
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/cifar10_sparsity_sweep_cpu
cp "$out/results.md" "$out/accuracy-vs-sparsity.png" experiments/results/cifar10_sparsity_sweep_cpu/
