#!/usr/bin/env bash
# The gap between data-free and real-data KD at 90% on the CPU-reduced CIFAR-10 setting (issue 13):
# dream_kd and real_kd, seeds 0-2, one teacher (teacher.seed=0, cached), the settings of
# conf/experiment/cifar10_cpu_reduced.yaml (chosen on the validation split: cifar10_levers.sh).
# About 5 minutes a run on 2 idle cores (30 minutes; 40 more if the teacher is not cached).
# Runs one after the other on the same machine, so their wall times compare. The experiment puts
# dreams through TrivialAugment since commit 94fabbd: a NAME whose runs predate it mixes both, so
# add recovery.pool.augment=none to repeat an earlier table (experiments/README.md says which).
# Table: experiments/results/cifar10_gap/results.md. A variant: NAME=... (its own folders) and
# METHODS=..., with Hydra overrides as arguments, e.g.
#   NAME=cifar10_gap_bnm09 METHODS=dream_kd bash experiments/cifar10_gap.sh synthesis.synthesizer.bn_momentum=0.9
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
name=${NAME:-cifar10_gap}
out=outputs/bench/$name
for seed in ${SEEDS:-0 1 2}; do
    for method in ${METHODS:-real_kd dream_kd}; do
        unfinished "$out/${method}_$seed" && .venv/bin/python -m dfkd.run \
            +experiment=cifar10_cpu_reduced teacher.seed=0 seed=$seed recovery=$method \
            "$@" hydra.run.dir="$out/${method}_$seed"
    done
done
mkdir -p experiments/results/$name
.venv/bin/python - "$out" <<'PY' | tee experiments/results/$name/results.md
import json, statistics, sys
from pathlib import Path
runs = {}
for path in sorted(Path(sys.argv[1]).glob("*/results.json")):
    method, seed = path.parent.name.rsplit("_", 1)
    runs.setdefault(method, {})[int(seed)] = json.loads(path.read_text())
def stat(values):
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"
print("| recovery | seeds | teacher % | pruned % | validation % | test % | recovery s | synthesis s |")
print("|---|---|---|---|---|---|---|---|")
for method in ("real_kd", "dream_kd"):
    rs = [runs[method][s] for s in sorted(runs.get(method, {}))]
    if not rs:
        continue
    f = lambda get: stat([get(r) for r in rs])
    syn = [r["synthesis"].get("synthesis_seconds", 0.0) for r in rs]
    print(f"| {method} | {','.join(map(str, sorted(runs[method])))} | {f(lambda r: 100 * r['teacher']['acc'])} | "
          f"{f(lambda r: 100 * r['pruned']['acc'])} | {f(lambda r: 100 * r['recovered']['val_acc'])} | "
          f"{f(lambda r: 100 * r['recovered']['acc'])} | {f(lambda r: r['times']['recover'])} | {stat(syn)} |")
common = sorted(set(runs.get("real_kd", {})) & set(runs.get("dream_kd", {})))
if common:
    gaps = [100 * (runs["real_kd"][s]["recovered"]["acc"] - runs["dream_kd"][s]["recovered"]["acc"]) for s in common]
    ratio = [runs["dream_kd"][s]["times"]["recover"] / runs["real_kd"][s]["times"]["recover"] for s in common]
    print(f"\nreal_kd minus dream_kd, test, per seed {common}: {', '.join(f'{g:.2f}' for g in gaps)} "
          f"(mean {statistics.mean(gaps):.2f}); dream_kd's recovery wall time / real_kd's: "
          f"{', '.join(f'{x:.2f}' for x in ratio)}")
PY
