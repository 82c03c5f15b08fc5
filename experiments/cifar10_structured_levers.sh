#!/usr/bin/env bash
# Data-free recovery after structured pruning (50% of the FLOPs) on the CPU-reduced CIFAR-10
# setting (issue 15): which settings recover most, chosen on the validation split (5,000 train
# images the teacher never saw); one cached teacher (teacher.seed=0), seed 0. Each run is
# `+experiment=cifar10_cpu_reduced pruning=structured pruning.ratio=0.5` plus:
#   (table row "dream_kd (defaults)": 300 KD steps, lr 0.03; the structured run of cifar10_deploy.sh,
#    refreshed by `METHODS=structured bash experiments/cifar10_deploy.sh`)
#   real_kd           the same KD on the real train split: the ceiling
#   lr0.1             recovery.optimizer.lr=0.1
#   l2_global         pruning.importance=l2 pruning.scope=global
#   steps1000         recovery.steps=1000
# and, named in RUNS="...":
#   dream_kd          the defaults again, on this machine's teacher
#   bn_scale          pruning.importance=bn_scale
#   keep_first        the first conv kept whole: pruning.keep_dense=[first,last]
#   global_lamp       channels ranked network-wide on LAMP-normalized L1 scores:
#                     pruning.scope=global pruning.normalizer=lamp
#   target_mix        dreams aimed at two classes: synthesis.synthesizer.target_mix=1
#   cutmix_steps3000_target_mix: cutmix_steps3000 (below) with target_mix=1 (26 minutes)
#   cutmix_steps3000_trivial: cutmix_steps3000 with recovery.pool.augment=trivial (one
#                     TrivialAugment operation per dream), at the BN hooks of commit f3daf35
#   cutmix_steps3000_refresh10: cutmix_steps3000 with a new batch of dreams every 10 KD steps
#                     instead of 25 (recovery.pool.refresh_every=10: 2.5 times as many dreams;
#                     not run yet)
#   cutmix_steps3000_pool16k: cutmix_steps3000 with a pool that keeps every dream of the run
#                     (recovery.pool.size=16384; 4,096 by default: the last 32 batches)
#   cutmix_steps3000_wd5e-4: cutmix_steps3000 with weight decay 5e-4 in KD
#                     (recovery.optimizer.weight_decay=5e-4, the usual value for training CIFAR ResNets; not run yet)
#   cutmix_steps3000_rounds3: cutmix_steps3000 reached in 3 linear prune-recover rounds (17%, 33%,
#                     50% of the FLOPs, 1,000 KD steps each: pruning.rounds=3 pruning.schedule=linear)
#   cutmix_steps3000_keep_first: cutmix_steps3000 with the first conv kept whole
#                     (pruning.keep_dense=[first,last]; the other layers lose more to reach 50%)
#   cutmix_steps3000_gen4: cutmix_steps3000 with four generators dreaming the batches in turn, each
#                     with its own initial weights and warm-up (synthesis.synthesizer.generators=4)
#   cutmix_steps3000_anchor01: cutmix_steps3000 with the student's weights held near the pruned ones
#                     (L2-SP: recovery.anchor_weight=0.01)
#   cutmix_steps3000_seed1: cutmix_steps3000 again with seed=1 (the same teacher): how far one
#                     seed's figures are from another's
#   coupled_keep      the residual streams kept whole, the blocks' inner channels pruned deeper to reach
#                     50% of the FLOPs: pruning.coupled=keep
#   cutmix_steps3000_coupled_keep: cutmix_steps3000 with pruning.coupled=keep
#   dream_kd_seed1, coupled_keep_seed1: dream_kd and coupled_keep with seed=1 (the same teacher)
#   real_kd_cutmix_steps3000_coupled_keep: real_kd_cutmix_steps3000 with pruning.coupled=keep
#   cutmix_steps3000_teacher_flip: cutmix_steps3000 with the teacher's labels averaged over each image
#                     and its mirror image (recovery.teacher_flip=true)
#   diversity3, diversity5, diversity8, diversity12: each dream pushed away from the other dreams
#                     of its class in the teacher's penultimate features
#                     (synthesis.synthesizer.diversity_weight=3, 5, 8 or 12; CMI's memory bank)
#   diversity5_seed1: diversity5 with seed=1 (the same teacher)
#   cutmix_steps1000_again: cutmix_steps1000 again, with the cached teacher of the later rows
#   cutmix_steps1000_diversity8: cutmix_steps1000 with synthesis.synthesizer.diversity_weight=8
#   cutmix_steps3000_diversity8: cutmix_steps3000 with synthesis.synthesizer.diversity_weight=8
#   cutmix_steps3000_diversity8_seed1: cutmix_steps3000_diversity8 with seed=1 (the same teacher)
#   cutmix_steps3000_seed2, cutmix_steps3000_diversity8_seed2: the same two with seed=2
#   cutmix_steps3000_gen4_diversity8, cutmix_steps3000_gen4_diversity8_seed1: cutmix_steps3000 with both
#                     four generators and diversity_weight=8 (the two settings that recovered more on test at
#                     3,000 steps), seeds 0 and 1
#   taylor, taylor_seed1: channels ranked by the Taylor estimate on 1,024 dreams (pruning.importance=taylor),
#                     seeds 0 and 1, as commit 4466143 computed it (torch-pruning's |weight x mean gradient|
#                     over each channel's group, labels the dreams' target classes)
#   taylor_fo, taylor_fo_seed1: the same with Molchanov et al.'s estimate (dfkd/pruning/taylor.py: the
#                     BatchNorm gate's first-order term, squared per minibatch of 64 dreams, labels the teacher's)
#   cutmix_steps3000_taylor, cutmix_steps3000_taylor_seed1: cutmix_steps3000 with pruning.importance=taylor
#                     (not run: taylor recovered less at 300 steps)
#   cutmix_steps3000_lr06: cutmix_steps3000 with twice the KD learning rate (recovery.optimizer.lr=0.06; 0.03 was
#                     chosen at 300 steps)
#   cutmix_steps3000_coupled_keep_diversity8: cutmix_steps3000 with both pruning.coupled=keep and
#                     diversity_weight=8 (the two settings that recovered more at 300 steps on two seeds each)
#   cutmix_steps3000_bnm09: cutmix_steps3000 with the dreams' BatchNorm statistics as a moving average across
#                     batches (synthesis.synthesizer.bn_momentum=0.9, Fang et al.'s setting)
#   cutmix_steps6000: dream_kd for 6,000 steps with CutMix (about 45 minutes)
#   cutmix_steps3000_adv1: cutmix_steps3000 with the adversarial (competition) term at weight 1:
#                     dreams pushed to where student and teacher disagree (about 25 minutes)
#   real_kd_steps1000, cutmix_steps1000, real_kd_cutmix_steps1000, cutmix_steps3000,
#   real_kd_cutmix_steps3000: real_kd or dream_kd for 1,000 or 3,000 steps, with CutMix where named
#                     (30 minutes or more each at 3,000).
# Every run starts from recovery.mix=none, recovery.pool.augment=none and 200 warm-up steps (they
# predate the experiment's CutMix, TrivialAugment and shorter warm-up); a run's own settings come
# after them and win (Hydra takes the last value of a setting given twice).
# About 5 minutes a run on 2 idle cores (13 for 1000 steps). Table:
# experiments/results/cifar10_structured_levers/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
[ -d .data/cifar10-jpg ] || { mkdir -p .data && tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/; }
out=outputs/bench/cifar10_structured_levers
declare -A extra=(
    [dream_kd]="" [real_kd]="recovery=real_kd" [lr0.1]="recovery.optimizer.lr=0.1"
    [l2_global]="pruning.importance=l2 pruning.scope=global" [bn_scale]="pruning.importance=bn_scale"
    [keep_first]="pruning.keep_dense=[first,last]"
    [global_lamp]="pruning.scope=global pruning.normalizer=lamp"
    [target_mix]="synthesis.synthesizer.target_mix=1"
    [cutmix_steps3000_target_mix]="recovery.steps=3000 recovery.mix=cutmix synthesis.synthesizer.target_mix=1"
    [cutmix_steps3000_trivial]="recovery.steps=3000 recovery.mix=cutmix recovery.pool.augment=trivial"
    [cutmix_steps3000_refresh10]="recovery.steps=3000 recovery.mix=cutmix recovery.pool.refresh_every=10"
    [cutmix_steps3000_pool16k]="recovery.steps=3000 recovery.mix=cutmix recovery.pool.size=16384"
    [cutmix_steps3000_rounds3]="recovery.steps=3000 recovery.mix=cutmix pruning.rounds=3 pruning.schedule=linear"
    [cutmix_steps3000_keep_first]="recovery.steps=3000 recovery.mix=cutmix pruning.keep_dense=[first,last]"
    [cutmix_steps3000_wd5e-4]="recovery.steps=3000 recovery.mix=cutmix recovery.optimizer.weight_decay=5e-4"
    [steps1000]="recovery.steps=1000" [real_kd_steps1000]="recovery=real_kd recovery.steps=1000"
    [cutmix_steps1000]="recovery.steps=1000 recovery.mix=cutmix"
    [real_kd_cutmix_steps1000]="recovery=real_kd recovery.steps=1000 recovery.mix=cutmix"
    [cutmix_steps3000]="recovery.steps=3000 recovery.mix=cutmix"
    [cutmix_steps3000_gen4]="recovery.steps=3000 recovery.mix=cutmix synthesis.synthesizer.generators=4"
    [cutmix_steps3000_anchor01]="recovery.steps=3000 recovery.mix=cutmix recovery.anchor_weight=0.01"
    [cutmix_steps3000_seed1]="recovery.steps=3000 recovery.mix=cutmix seed=1"
    [coupled_keep]="pruning.coupled=keep"
    [cutmix_steps3000_coupled_keep]="recovery.steps=3000 recovery.mix=cutmix pruning.coupled=keep"
    [dream_kd_seed1]="seed=1"
    [coupled_keep_seed1]="pruning.coupled=keep seed=1"
    [real_kd_cutmix_steps3000_coupled_keep]="recovery=real_kd recovery.steps=3000 recovery.mix=cutmix
        pruning.coupled=keep"
    [cutmix_steps3000_teacher_flip]="recovery.steps=3000 recovery.mix=cutmix recovery.teacher_flip=true"
    [cutmix_steps6000]="recovery.steps=6000 recovery.mix=cutmix"
    [cutmix_steps3000_adv1]="recovery.steps=3000 recovery.mix=cutmix synthesis.synthesizer.competition_weight=1"
    [real_kd_cutmix_steps3000]="recovery=real_kd recovery.steps=3000 recovery.mix=cutmix"
    [diversity3]="synthesis.synthesizer.diversity_weight=3" [diversity5]="synthesis.synthesizer.diversity_weight=5"
    [diversity5_seed1]="synthesis.synthesizer.diversity_weight=5 seed=1" [diversity8]="synthesis.synthesizer.diversity_weight=8"
    [diversity12]="synthesis.synthesizer.diversity_weight=12"
    [cutmix_steps1000_again]="recovery.steps=1000 recovery.mix=cutmix"
    [cutmix_steps1000_diversity8]="recovery.steps=1000 recovery.mix=cutmix synthesis.synthesizer.diversity_weight=8"
    [cutmix_steps3000_diversity8]="recovery.steps=3000 recovery.mix=cutmix synthesis.synthesizer.diversity_weight=8"
    [cutmix_steps3000_diversity8_seed1]="recovery.steps=3000 recovery.mix=cutmix seed=1 synthesis.synthesizer.diversity_weight=8"
    [cutmix_steps3000_seed2]="recovery.steps=3000 recovery.mix=cutmix seed=2"
    [cutmix_steps3000_diversity8_seed2]="recovery.steps=3000 recovery.mix=cutmix seed=2 synthesis.synthesizer.diversity_weight=8"
    [cutmix_steps3000_gen4_diversity8]="recovery.steps=3000 recovery.mix=cutmix synthesis.synthesizer.generators=4
        synthesis.synthesizer.diversity_weight=8"
    [cutmix_steps3000_gen4_diversity8_seed1]="recovery.steps=3000 recovery.mix=cutmix seed=1
        synthesis.synthesizer.generators=4 synthesis.synthesizer.diversity_weight=8"
    [taylor]="pruning.importance=taylor" [taylor_seed1]="pruning.importance=taylor seed=1"
    [taylor_fo]="pruning.importance=taylor" [taylor_fo_seed1]="pruning.importance=taylor seed=1"
    [cutmix_steps3000_taylor]="recovery.steps=3000 recovery.mix=cutmix pruning.importance=taylor"
    [cutmix_steps3000_taylor_seed1]="recovery.steps=3000 recovery.mix=cutmix pruning.importance=taylor seed=1"
    [cutmix_steps3000_lr06]="recovery.steps=3000 recovery.mix=cutmix recovery.optimizer.lr=0.06"
    [cutmix_steps3000_coupled_keep_diversity8]="recovery.steps=3000 recovery.mix=cutmix pruning.coupled=keep
        synthesis.synthesizer.diversity_weight=8"
    [cutmix_steps3000_bnm09]="recovery.steps=3000 recovery.mix=cutmix synthesis.synthesizer.bn_momentum=0.9")
for name in ${RUNS:-real_kd lr0.1 l2_global steps1000}; do
    unfinished "$out/$name" && .venv/bin/python -m dfkd.run +experiment=cifar10_cpu_reduced \
        teacher.seed=0 seed=0 pruning=structured pruning.ratio=0.5 deploy=none recovery.mix=none recovery.pool.augment=none synthesis.synthesizer.warmup_steps=200 ${extra[$name]} \
        hydra.run.dir="$out/$name"
done
mkdir -p experiments/results/cifar10_structured_levers
table=experiments/results/cifar10_structured_levers/results.md
.venv/bin/python - "$out" outputs/bench/cifar10_deploy/structured "$table" <<'PY' > "$table.new"
import json, sys
from pathlib import Path
from experiments.tables import earlier_rows
HEADER = "| run | pruning | recovery | steps | teacher % | pruned % | validation % | test % | recover s |"
# a run whose results.json is not on this machine keeps its row from the table as it was
rows = {name: lines[0] for name, lines in earlier_rows(Path(sys.argv[3]), HEADER).items()}
for path in [Path(sys.argv[2]) / "results.json", *Path(sys.argv[1]).glob("*/results.json")]:
    if not path.is_file():
        continue
    r = json.loads(path.read_text()); c = r["config"]
    if r.get("pruning", {}).get("rounds"):  # pruned %: the last round's student (an older results.json has round 1's)
        r["pruned"] = r["pruning"]["rounds"][-1]["pruned"]
    name = "dream_kd (defaults)" if path.parent == Path(sys.argv[2]) else path.parent.name
    rows[name] = (f"| {name} | {c['pruning_method']} {c['pruning_scope']} | {c['recovery']} | {c['recovery_steps']} | "
                  f"{100 * r['teacher']['acc']:.2f} | {100 * r['pruned']['acc']:.2f} | {100 * r['recovered']['val_acc']:.2f} | "
                  f"{100 * r['recovered']['acc']:.2f} | {r['times']['recover']:.0f} |")
print(HEADER)
print("|---|---|---|---|---|---|---|---|---|")
first = "dream_kd (defaults)"
for name in sorted(rows, key=lambda n: (n != first, n)):
    print(rows[name])
PY
mv "$table.new" "$table" && cat "$table"
