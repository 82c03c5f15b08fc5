#!/usr/bin/env bash
# LAMP against global L1 beyond ResNet-18 (issue 13): the synthesis health check's cached teachers
# (conf/experiment/synthesis_health.yaml: 8 epochs on 10,000 CIFAR-10 images; VGG16-BN at width 8,
# MobileNetV2 at width 0.25) pruned to 90% and recovered by dream_kd at the default budget (300 KD
# steps), seed 0, pruning.scope=global and lamp. Test split only (no validation split: nothing is
# chosen here). About 20 minutes on 2 cores once the teachers are cached
# (`.venv/bin/python experiments/synthesis_health.py` trains them). Table:
# experiments/results/lamp_architectures/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
out=outputs/bench/lamp_architectures
rm -rf "$out"
mkdir -p "$out"
for arch in "vgg16 model.width=8" "mobilenetv2 model.width_mult=0.25"; do
    set -- $arch
    for scope in global lamp; do  # a refused pruning (a layer emptied) is noted, and the others go on
        .venv/bin/python -m dfkd.run +experiment=synthesis_health model=$1 $2 pruning.ratio=0.9 \
            pruning.scope=$scope recovery=dream_kd deploy=none seed=0 hydra.run.dir="$out/${1}_$scope" \
            > "$out/${1}_$scope.log" 2>&1 || echo "$1, pruning.scope=$scope: $(grep -h 'dfkd: error' "$out/${1}_$scope.log")"
    done
done | tee "$out/refused.txt"
.venv/bin/python -m dfkd.report "$out"
mkdir -p experiments/results/lamp_architectures
cp "$out/results.md" "$out/refused.txt" experiments/results/lamp_architectures/
