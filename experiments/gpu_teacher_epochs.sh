#!/usr/bin/env bash
# Seconds per teacher epoch of the flagship recipe, per architecture, on one GPU (to size
# conf/experiment/*_90pct.yaml's teacher.epochs for the 4-minute teacher budget):
#   bash experiments/gpu_teacher_epochs.sh SECONDS ARCH [ARCH ...]
# Each architecture trains EPOCHS (default 3) epochs of its flagship teacher recipe on the JPEG
# copy of CIFAR-10 (a throwaway cache: nothing is kept), with the test-split accuracy after each
# epoch; the allowance SECONDS is shared evenly. The log lines go to $RESULTS (default
# experiments/results/gpu_teacher_epochs.txt). PYTHON as in gpu_flagship.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
ALLOWANCE=${1:?usage: gpu_teacher_epochs.sh SECONDS ARCH [ARCH ...]}
shift
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-experiments/results/gpu_teacher_epochs.txt}
[ -d .data/cifar10-jpg ] || tar xzf "${CIFAR_TGZ:-../shared/data/cifar10-jpg.tar.gz}" -C .data/
mkdir -p "$(dirname "$RESULTS")"
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$RESULTS"
each=$((ALLOWANCE / $#))
for arch in "$@"; do
    echo "== $arch: ${EPOCHS:-3} epochs (up to $each s)" | tee -a "$RESULTS"
    rm -rf "/tmp/gpu_teacher_epochs/$arch"  # each call measures again (a run folder may not hold a run)
    timeout "$each" "$PYTHON" -m dfkd.run +experiment="${arch}_90pct" data=cifar10_jpg recovery=none \
        teacher.epochs="${EPOCHS:-3}" teacher.val_every_n_epochs=1 logger=none \
        trainer.enable_progress_bar=false paths.cache_dir="/tmp/gpu_teacher_epochs/cache" \
        hydra.run.dir="/tmp/gpu_teacher_epochs/$arch" 2>&1 \
        | grep --line-buffered -E "epoch [0-9]|Decoded|wall time|teacher  " | tee -a "$RESULTS"
done
