#!/usr/bin/env bash
# One flagship experiment, whole, on one GPU within a wall-clock allowance:
#   bash experiments/gpu_flagship.sh ARCH SECONDS [overrides for every run]
# ARCH is resnet50, mobilenetv2 or vgg16 (conf/experiment/ARCH_90pct.yaml), on the JPEG copy of
# CIFAR-10 (unpacked from $CIFAR_TGZ into .data/ if needed):
#   1. dream_kd: teacher trained (and cached), pruned to 90%, recovered on dreams, evaluated;
#   2. real_kd: the same teacher (from the cache) and budget on the real train split, the ceiling;
#      started only if the allowance leaves it at least REAL_KD_SECONDS (default 150).
# Figures are written as they come to $RESULTS (default experiments/results/gpu_ARCH/): log.txt,
# and per run its results.json, metrics.csv and latest dream grid (copied every 15 s, so a run
# stopped at the limit still leaves them); the last line of log.txt is a one-line summary.
# PYTHON names the interpreter (default python3, the one that holds torch on the lent GPU
# machines; .venv/bin/python after `make setup`).
set -uo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:?usage: gpu_flagship.sh ARCH SECONDS [overrides]}
ALLOWANCE=${2:?usage: gpu_flagship.sh ARCH SECONDS [overrides]}
shift 2
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-experiments/results/gpu_$ARCH}
RUNS=${RUNS:-/tmp/gpu_flagship/$ARCH}
END=$((SECONDS + ALLOWANCE))
mkdir -p "$RESULTS" .data
rm -rf "$RUNS" && mkdir -p "$RUNS"
LOG="$RESULTS/log.txt"
: > "$LOG"
[ -d .data/cifar10-jpg ] || tar xzf "${CIFAR_TGZ:-../shared/data/cifar10-jpg.tar.gz}" -C .data/
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
  echo "command: bash experiments/gpu_flagship.sh $ARCH $ALLOWANCE $*"; } 2>&1 | tee -a "$LOG"

collect() {  # the small files of each run, into $RESULTS
    for method in dream_kd real_kd; do
        dir=$RUNS/$method
        [ -d "$dir" ] || continue
        [ -f "$dir/results.json" ] && cp "$dir/results.json" "$RESULTS/${method}_results.json"
        csv=$(find "$dir" -name metrics.csv 2>/dev/null | head -1)
        [ -n "$csv" ] && cp "$csv" "$RESULTS/${method}_metrics.csv"
        grid=$(ls "$dir"/synthetic/grid_step*.png 2>/dev/null | tail -1)
        [ -n "$grid" ] && cp "$grid" "$RESULTS/dreams.png"
    done
}
(while sleep 15; do collect; done) &
COLLECTOR=$!
trap 'kill $COLLECTOR 2>/dev/null; collect' EXIT

run() {  # run METHOD [overrides]: one dfkd.run within what is left of the allowance
    local method=$1 left=$((END - SECONDS)) start=$SECONDS
    shift
    echo "== $ARCH $method (up to $left s)" | tee -a "$LOG"
    timeout "$left" "$PYTHON" -m dfkd.run +experiment="${ARCH}_90pct" data=cifar10_jpg recovery="$method" \
        logger=csv trainer.enable_progress_bar=false hydra.run.dir="$RUNS/$method" "$@" 2>&1 \
        | grep --line-buffered -v -E "litlogger|TPU available|LOCAL_RANK|^\s*$" | tee -a "$LOG"
    echo "== $ARCH $method: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$LOG"
}

run dream_kd "$@"
if [ $((END - SECONDS)) -ge "${REAL_KD_SECONDS:-150}" ]; then
    run real_kd "$@"
else
    echo "== $ARCH real_kd: not started ($((END - SECONDS)) s left)" | tee -a "$LOG"
fi
collect
"$PYTHON" - "$RUNS" "$ARCH" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path

runs, arch = Path(sys.argv[1]), sys.argv[2]
found = {m: json.loads((runs / m / "results.json").read_text())
         for m in ("dream_kd", "real_kd") if (runs / m / "results.json").is_file()}
if "dream_kd" not in found:
    sys.exit(f"summary {arch}: dream_kd did not finish; see the log above")
r = found["dream_kd"]
syn, t = r["synthesis"], r["times"]
line = (f"summary {arch}: teacher {100 * r['teacher']['acc']:.2f}% ({t['teacher']:.0f} s), "
        f"pruned {100 * r['pruned']['acc']:.2f}%, dream_kd {100 * r['recovered']['acc']:.2f}% "
        f"(recovery {t['recover']:.0f} s, {syn['synthesized_images']} dreams in {syn['synthesis_seconds']:.0f} s, "
        f"target agreement {syn.get('target_acc', float('nan')):.3f}, class balance "
        f"{syn.get('class_balance', float('nan')):.3f}, BN gap {syn.get('bn_loss', float('nan')):.2f}), "
        f"total {t['total']:.0f} s")
if "real_kd" in found:
    q = found["real_kd"]
    line += f"; real_kd {100 * q['recovered']['acc']:.2f}% (recovery {q['times']['recover']:.0f} s)"
print(line)
EOF
