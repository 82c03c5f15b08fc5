#!/usr/bin/env bash
# The three flagship experiments on one GPU, one after the other, within a wall-clock allowance:
#   bash experiments/gpu_flagship.sh OUT_DIR SECONDS [overrides for every run]
# Each run is `python -m dfkd.run +experiment=<arch>_90pct data=cifar10_jpg` with the experiment's
# own pruning, synthesis and recovery settings; the overrides (e.g. teacher.epochs=15 where the
# allowance is short) are stated in experiments/README.md next to the figures. A run still going at
# the end of the allowance is stopped; its log says how far it got. results.json, the metrics CSV
# and the log of each run are copied to OUT_DIR. PYTHON names the interpreter (default python3, the
# one that holds torch on the lent GPU machines; .venv/bin/python after `make setup`).
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT=${1:?usage: gpu_flagship.sh OUT_DIR SECONDS [overrides]}
ALLOWANCE=${2:?usage: gpu_flagship.sh OUT_DIR SECONDS [overrides]}
shift 2
END=$((SECONDS + ALLOWANCE))
mkdir -p "$OUT" .data
[ -d .data/cifar10-jpg ] || tar xzf "${CIFAR_TGZ:-../shared/data/cifar10-jpg.tar.gz}" -C .data/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/log.txt"
"$PYTHON" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" \
    | tee -a "$OUT/log.txt"
for arch in resnet50 vgg16 mobilenetv2; do
    left=$((END - SECONDS))
    if [ "$left" -lt 60 ]; then echo "== $arch: not started ($left s left)" | tee -a "$OUT/log.txt"; continue; fi
    run_dir=/tmp/gpu_flagship/$arch
    echo "== $arch (up to $left s)" | tee -a "$OUT/log.txt"
    start=$SECONDS
    timeout "$left" "$PYTHON" -m dfkd.run +experiment=${arch}_90pct data=cifar10_jpg logger=csv \
        trainer.enable_progress_bar=false hydra.run.dir="$run_dir" "$@" 2>&1 | tee -a "$OUT/log.txt"
    echo "== $arch: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
    [ -f "$run_dir/results.json" ] && cp "$run_dir/results.json" "$OUT/${arch}_results.json"
    csv=$(find "$run_dir" -name metrics.csv | head -1)
    [ -n "$csv" ] && cp "$csv" "$OUT/${arch}_metrics.csv"
done
