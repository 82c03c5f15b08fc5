#!/usr/bin/env bash
# What each pruning method buys in deployment, and what data-free recovery gives back (issue 15),
# on the CPU-reduced CIFAR-10 setting (conf/experiment/cifar10_cpu_reduced.yaml: ResNet-18 at width
# 16, one cached teacher, teacher.seed=0, seed 0, 300 KD steps of dream_kd):
#   structured  50% of the FLOPs removed (torch-pruning, uniform L1 channel pruning)
#   nm          2:4 semi-structured (first conv dense)
#   magnitude   90% global L1, one shot (pruning.scope=global: the default when the table was measured)
#   iterative   90% global L1 in 3 cubic rounds (63%, 87%, 90%), the 300 KD steps shared
# recovery.mix=none and 200 warm-up steps: the table predates the experiment's CutMix and shorter warm-up.
# CPU latency with deploy.threads=1 (median of repeated runs), batch 1 and 64.
# About 5 minutes a run on 2 idle cores (iterative: 8). Table: experiments/results/cifar10_deploy/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
out=outputs/bench/cifar10_deploy
for method in ${METHODS:-structured nm magnitude iterative}; do
    unfinished "$out/$method" && .venv/bin/python -m dfkd.run +experiment=cifar10_cpu_reduced \
        teacher.seed=0 seed=0 recovery.mix=none recovery.pool.augment=none synthesis.synthesizer.warmup_steps=200 pruning=$method deploy.threads=1 hydra.run.dir="$out/$method" \
        $([ "$method" = structured ] && echo pruning.ratio=0.5) \
        $([ "$method" = magnitude ] || [ "$method" = iterative ] && echo pruning.scope=global)
done
mkdir -p experiments/results/cifar10_deploy
table=experiments/results/cifar10_deploy/results.md
# a method whose results.json is not on this machine keeps its rows from the table as it was
.venv/bin/python experiments/deploy_table.py "$out" "$table" > "$table.new"
mv "$table.new" "$table" && cat "$table"
