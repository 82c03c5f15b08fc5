#!/usr/bin/env bash
# Which recovery levers help at 90% on the CPU-reduced CIFAR-10 setting (issue 13), chosen on the
# validation split (data.val_size=5000 of the train split; the teacher never saw it), seed 0, one
# teacher (teacher.seed=0, cached), 300 KD steps of 128 images. About 5 minutes a run on 2 idle
# cores (45 minutes in all, plus 40 for the teacher if it is not cached).
# Table: experiments/results/cifar10_levers/results.md (validation and test accuracy of each run).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
out=outputs/bench/cifar10_levers
# recovery.mix=none and 200 warm-up steps: these runs predate the experiment's CutMix and shorter
# warm-up (cifar10_features.sh chose both after them)
base="+experiment=cifar10_cpu_reduced teacher.seed=0 seed=0 recovery.optimizer.lr=0.01 recovery.mix=none recovery.pool.augment=none synthesis.synthesizer.warmup_steps=200"
lever() {  # NAME OVERRIDES...
    local name=$1; shift
    if unfinished "$out/$name"; then .venv/bin/python -m dfkd.run $base "$@" hydra.run.dir="$out/$name"; fi
}
lever real_kd recovery=real_kd
lever dream_kd recovery=dream_kd
lever real_kd_lr03 recovery=real_kd recovery.optimizer.lr=0.03
lever dream_kd_lr03 recovery=dream_kd recovery.optimizer.lr=0.03
lever dream_kd_lr03_T2 recovery=dream_kd recovery.optimizer.lr=0.03 recovery.temperature=2
lever dream_kd_bn3 recovery=dream_kd synthesis.synthesizer.bn_weight=3
lever dream_kd_recalibrate recovery=dream_kd recovery.student_bn=recalibrate
lever dream_kd_lr03_refresh10 recovery=dream_kd recovery.optimizer.lr=0.03 recovery.pool.refresh_every=10
mkdir -p experiments/results/cifar10_levers
.venv/bin/python - "$out" <<'PY' | tee experiments/results/cifar10_levers/results.md
import json, sys
from pathlib import Path
print("| run | validation % | test % | target agreement | recovery s | synthesis s |")
print("|---|---|---|---|---|---|")
order = ["real_kd", "dream_kd", "real_kd_lr03", "dream_kd_lr03", "dream_kd_lr03_T2", "dream_kd_bn3",
         "dream_kd_recalibrate", "dream_kd_lr03_refresh10"]
for name in order:
    path = Path(sys.argv[1]) / name / "results.json"
    if not path.is_file():
        continue
    r = json.loads(path.read_text())
    rec, syn = r["recovered"], r.get("synthesis") or {}
    agree = f"{syn['target_acc']:.3f}" if "target_acc" in syn else "-"
    seconds = f"{syn['synthesis_seconds']:.0f}" if "synthesis_seconds" in syn else "-"
    print(f"| {path.parent.name} | {100 * rec['val_acc']:.2f} | {100 * rec['acc']:.2f} | {agree} | "
          f"{r['times']['recover']:.0f} | {seconds} |")
PY
