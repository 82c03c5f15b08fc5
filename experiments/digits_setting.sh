#!/usr/bin/env bash
# One setting, several values, on the embedded default: the digits CNN at 90% and 95% LAMP
# sparsity, dream_kd at 300 KD steps, seeds 0-2 (each its own cached teacher); 6 runs per value,
# about 3.5 minutes on 2 cores. Writes experiments/results/NAME/LABEL.md per value (a report per
# value: dfkd.report groups runs by method and synthesizer, not by their settings). A value is its
# own label unless one is given (needed where the value holds a colon).
#   bash experiments/digits_setting.sh NAME SETTING [LABEL:]VALUE ...
#   bash experiments/digits_setting.sh digits_pool_augment recovery.pool.augment none trivial
#   bash experiments/digits_setting.sh digits_target_mix synthesis.synthesizer.target_mix mix0:0 mix1:1
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: $0 NAME SETTING [LABEL:]VALUE ... (NAME and labels: letters, digits, _ . -)"
name_ok() { [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]]; }
[ $# -ge 3 ] && name_ok "$1" || { echo "$usage" >&2; exit 2; }
name=$1 setting=$2
shift 2
for arg in "$@"; do name_ok "${arg%%:*}" || { echo "$usage" >&2; exit 2; }; done
out=outputs/bench/$name
for arg in "$@"; do
    label=${arg%%:*} value=${arg#*:}
    rm -rf "${out:?}/$label"
    .venv/bin/python -m dfkd.run -m seed=0,1,2 pruning.ratio=0.9,0.95 "$setting=$value" \
        deploy=none logger=csv trainer.enable_progress_bar=false hydra.sweep.dir="$out/$label"
    .venv/bin/python -m dfkd.report "$out/$label"
    mkdir -p "experiments/results/$name"
    cp "$out/$label/results.md" "experiments/results/$name/$label.md"
done
