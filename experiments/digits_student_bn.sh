#!/usr/bin/env bash
# The student's BatchNorm statistics during KD on digits (issue 13): recovery.student_bn = train
# (re-estimated on the KD batches, the default), frozen (the teacher's), recalibrate (held during
# KD, re-estimated after it on 50 KD batches), the embedded default otherwise, seeds 0-2 (9 runs,
# about 4 minutes on 2 cores). Table: experiments/results/digits_student_bn/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# pruning.scope=global: its table was measured with global L1, the default before LAMP (d1c97f5).
out=outputs/bench/digits_student_bn
rm -rf "$out"
.venv/bin/python -m dfkd.run -m recovery.student_bn=train,frozen,recalibrate seed=0,1,2 logger=none \
    pruning.scope=global trainer.enable_progress_bar=false hydra.sweep.dir="$out"
mkdir -p experiments/results/digits_student_bn
.venv/bin/python - "$out" <<'PY' | tee experiments/results/digits_student_bn/results.md
import json, statistics, sys
import yaml
from pathlib import Path
rows = {}
for path in Path(sys.argv[1]).glob("*/results.json"):
    cfg = yaml.safe_load((path.parent / ".hydra" / "config.yaml").read_text())
    rows.setdefault(cfg["recovery"]["student_bn"], []).append(json.loads(path.read_text()))
print("| recovery.student_bn | seeds | recovered % (mean ± std) | per seed |")
print("|---|---|---|---|")
for mode in ("train", "frozen", "recalibrate"):
    rs = sorted(rows.get(mode, []), key=lambda r: r["config"]["seed"])
    accs = [100 * r["recovered"]["acc"] for r in rs]
    if accs:
        print(f"| {mode} | {len(accs)} | {statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} | "
              f"{' / '.join(f'{a:.2f}' for a in accs)} |")
PY
