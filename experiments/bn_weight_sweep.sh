#!/usr/bin/env bash
# What the BatchNorm weight's default (10, normalized distance) rests on (issue 13):
#   1. digits, the embedded default at 90%: bn_weight 1, 3, 10, 30 x seeds 0-2 (12 runs, ~8 min);
#      and the earlier default (the papers' l2 distance, weight 30 on the mean) for comparison;
#   2. CIFAR-10 ResNet-18 at width 8 (the synthesis health check's teacher: 10,000 train images,
#      8 epochs, cached), 90%, 300 KD steps: real_kd, and dream_kd at bn_weight 1, 10, 30 (~15 min
#      plus ~10 for the teacher).
# Tables: python -m dfkd.report on each folder (written to experiments/results/bn_weight_sweep/).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
# PARTS="digits digits_l2" runs only the digits parts (the CIFAR part is the long one).
out=outputs/bench/bn_weight_sweep
PARTS=${PARTS:-digits digits_l2 cifar_r18w8}
# pruning.scope=global: its table was measured with global L1, the default before LAMP (d1c97f5).
common="logger=none trainer.enable_progress_bar=false pruning.scope=global"
for part in $PARTS; do
    rm -rf "${out:?}/$part"
    case $part in
    digits) .venv/bin/python -m dfkd.run -m synthesis.synthesizer.bn_weight=1,3,10,30 seed=0,1,2 $common \
        hydra.sweep.dir="$out/digits" ;;
    digits_l2) .venv/bin/python -m dfkd.run -m synthesis.synthesizer.bn_distance=l2 \
        synthesis.synthesizer.bn_weight=30 seed=0,1,2 $common hydra.sweep.dir="$out/digits_l2" ;;
    cifar_r18w8) .venv/bin/python -m dfkd.run -m +experiment=synthesis_health model=resnet18 model.width=8 \
        recovery=real_kd,dream_kd synthesis.synthesizer.bn_weight=1,10,30 recovery.val_every_n_steps=100 pruning.scope=global \
        hydra.sweep.dir="$out/cifar_r18w8" ;;
    esac
done
mkdir -p experiments/results/bn_weight_sweep
for part in $PARTS; do
    .venv/bin/python - "$out/$part" <<'PY' > "experiments/results/bn_weight_sweep/$part.md"
import json, sys
import yaml
from pathlib import Path
print("| recovery | distance | bn_weight | seed | teacher % | recovered % | target agreement | class balance | BN gap |")
print("|---|---|---|---|---|---|---|---|---|")
for path in sorted(Path(sys.argv[1]).glob("*/results.json"), key=lambda p: int(p.parent.name)):
    r = json.loads(path.read_text())
    cfg = yaml.safe_load((path.parent / ".hydra" / "config.yaml").read_text())
    syn = cfg["synthesis"]["synthesizer"]
    s = r["synthesis"]
    f = lambda k: f"{s[k]:.3f}" if k in s else "-"
    print(f"| {r['config']['recovery']} | {syn.get('bn_distance')} | {syn['bn_weight']} | {r['config']['seed']} | "
          f"{100 * r['teacher']['acc']:.2f} | {100 * r['recovered']['acc']:.2f} | {f('target_acc')} | "
          f"{f('class_balance')} | {f('bn_loss')} |")
PY
done
cat experiments/results/bn_weight_sweep/*.md
