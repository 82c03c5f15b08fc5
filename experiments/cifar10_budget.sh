#!/usr/bin/env bash
# Recovered accuracy against the KD budget (issue 13): real_kd and dream_kd at STEPS KD steps of
# 128 images on the CPU-reduced CIFAR-10 setting at 90% (conf/experiment/cifar10_cpu_reduced.yaml
# as it is), seed 0, one teacher (teacher.seed=0, cached), each run alone on the machine.
# Does the gap to real images close with budget? 300 steps take 4-6 minutes a run on 2 idle
# cores, 1,000 steps 12-20, 3,000 steps 40-60 (STEPS="300 1000" for the reduced version).
# Table and plot: experiments/results/cifar10_budget/{results.md,accuracy_vs_steps.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
out=outputs/bench/cifar10_budget
for steps in ${STEPS:-300 1000 3000}; do
    for method in real_kd dream_kd; do
        [ -f "$out/${method}_$steps/results.json" ] || .venv/bin/python -m dfkd.run \
            +experiment=cifar10_cpu_reduced teacher.seed=0 seed=0 deploy=none recovery=$method \
            recovery.steps=$steps hydra.run.dir="$out/${method}_$steps"
    done
done
mkdir -p experiments/results/cifar10_budget
.venv/bin/python - "$out" experiments/results/cifar10_budget <<'PY' | tee experiments/results/cifar10_budget/results.md
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
runs = {}
for path in Path(sys.argv[1]).glob("*/results.json"):
    method, steps = path.parent.name.rsplit("_", 1)
    runs.setdefault(method, {})[int(steps)] = json.loads(path.read_text())
print("| KD steps | real_kd validation % | real_kd test % | dream_kd validation % | dream_kd test % | gap (test) | wall time dream / real |")
print("|---|---|---|---|---|---|---|")
for steps in sorted(set(runs.get("real_kd", {})) | set(runs.get("dream_kd", {}))):
    real, dream = runs.get("real_kd", {}).get(steps), runs.get("dream_kd", {}).get(steps)
    cell = lambda r, key: f"{100 * r['recovered'][key]:.2f}" if r else "-"
    gap = f"{100 * (real['recovered']['acc'] - dream['recovered']['acc']):.2f}" if real and dream else "-"
    ratio = f"{dream['times']['recover'] / real['times']['recover']:.2f}" if real and dream else "-"
    print(f"| {steps} | {cell(real, 'val_acc')} | {cell(real, 'acc')} | {cell(dream, 'val_acc')} | {cell(dream, 'acc')} | {gap} | {ratio} |")
fig, ax = plt.subplots(figsize=(5, 4))
for method, rs in sorted(runs.items()):
    steps = sorted(rs)
    ax.plot(steps, [100 * rs[s]["recovered"]["acc"] for s in steps], "o-", label=method)
teacher = next(r for rs in runs.values() for r in rs.values())["teacher"]["acc"]
ax.axhline(100 * teacher, color="grey", ls="--", label="teacher")
ax.set_xscale("log")
ax.set_xlabel("KD steps (128 images each)")
ax.set_ylabel("test accuracy %")
ax.set_title("CPU-reduced CIFAR-10 ResNet-18, 90% sparsity")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
ticks = sorted({s for rs in runs.values() for s in rs})
ax.set_xticks(ticks, [str(s) for s in ticks])
ax.minorticks_off()
fig.tight_layout()
fig.savefig(Path(sys.argv[2]) / "accuracy_vs_steps.png", dpi=120)
PY
