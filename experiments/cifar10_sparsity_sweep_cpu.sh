#!/usr/bin/env bash
# Issue 5's CIFAR-10 sweep, CPU-reduced: the cifar10_cpu_reduced settings (ResNet-18 width 16,
# 15-epoch teacher on the JPEG copy, 300 KD steps of 128) at 50/75/90% sparsity with every
# recovery method, seed 0 (15 runs, one cached teacher). About 40 minutes on 2 CPU cores once the
# teacher is cached (60 more minutes otherwise).
# Writes experiments/results/cifar10_sparsity_sweep_cpu/{results.md,accuracy-vs-sparsity.png}.
# A part of the sweep: RATIOS=0.5,0.75 METHODS=dream_kd NAME=cifar10_sparsity_fast_cpu (NAME is the
# folder under outputs/bench/ and experiments/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
name=${NAME:-cifar10_sparsity_sweep_cpu}
out=outputs/bench/$name
rm -rf "$out"
.venv/bin/python -m dfkd.run -m +experiment=cifar10_cpu_reduced \
    pruning.ratio=${RATIOS:-0.5,0.75,0.9} recovery=${METHODS:-none,noise_kd,real_kd,finetune,dream_kd} \
    task_name="$name" hydra.sweep.dir="$out" "$@"
.venv/bin/python -m dfkd.report "$out"
mkdir -p "experiments/results/$name"
cp "$out/results.md" "$out/accuracy-vs-sparsity.png" "experiments/results/$name/"
