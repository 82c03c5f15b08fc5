"""Issue 4's benchmark: how fast each synthesizer dreams, and how soon its dreams recover the
pruned student, against a reference loop written the way the original papers do it.

One teacher, one pruned student, side by side in one process:
  reference_2000  the published recipe: every batch from fresh noise, Adam on the pixels for 2,000
                  iterations (BN weight 10, lr 0.1, jitter and flips), a fixed transfer set built
                  before any distillation, then KD on it
  reference_200   the same loop at 200 iterations (the starting paper's setting)
  deepinversion, adi, fast   dfkd's synthesizers with the settings of conf/synthesis/, dreaming
                  on the fly into the pool while KD runs
Every method distils with the same DistillModule, optimizer, KD steps and batch size. The clock
runs over synthesis and KD; the periodic test evaluations are not counted.

    .venv/bin/python experiments/synthesis_benchmark.py                         # digits
    .venv/bin/python experiments/synthesis_benchmark.py --experiment cifar10_cpu_reduced \
        --reference-images 256 --name cifar10_cpu_reduced                      # CIFAR-10, CPU-sized
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from dfkd import pruning
from dfkd.errors import build
from dfkd.evaluate import evaluate
from dfkd.modules import DistillModule
from dfkd.synthesis import Noise, SyntheticDataModule, bn_statistics, image_priors
from dfkd.teacher import build_model, obtain_teacher
from dfkd.trainer import device_of, make_trainer

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("synthesis_benchmark")


def reference_deepinversion(teacher, n, image_shape, num_classes, low, high, iterations,
                            batch_size=256, lr=0.1, bn_weight=10.0, tv_l2=1e-4, jitter=2, seed=0):
    """The papers' loop: fresh noise per batch, random targets, Adam on pixels, cosine lr,
    jitter + flip, clip to the pixel range, the last iterate kept; a fixed set of ``n`` images."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(math.ceil(n / batch_size)):
        x = torch.randn((batch_size, *image_shape), generator=g).requires_grad_(True)
        y = torch.randint(num_classes, (batch_size,), generator=g)
        optimizer = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9), eps=1e-8)
        with bn_statistics(teacher) as hooks:
            for it in range(iterations):
                optimizer.param_groups[0]["lr"] = 0.5 * lr * (1 + math.cos(math.pi * it / iterations))
                dx, dy = torch.randint(-jitter, jitter + 1, (2,), generator=g).tolist()
                xj = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
                if torch.rand((), generator=g) < 0.5:
                    xj = torch.flip(xj, dims=(3,))
                loss = (F.cross_entropy(teacher(xj), y) + bn_weight * sum(h.loss for h in hooks)
                        + tv_l2 * image_priors(xj)[1])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, high), low))
        images.append(x.detach())
        targets.append(y)
    return torch.cat(images)[:n], torch.cat(targets)[:n]


class Curve(Callback):
    """Test accuracy against wall time; evaluation time is taken off the clock."""

    def __init__(self, data, every: int, offset: float = 0.0) -> None:
        self.data, self.every, self.offset = data, every, offset
        self.points: list[tuple[int, float, float]] = []
        self.paused = 0.0

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every and step != trainer.max_steps:
            return
        t0 = time.perf_counter()
        elapsed = t0 - self.start - self.paused  # synthesis + KD so far, evaluations excluded
        acc = evaluate(pl_module.net, self.data, pl_module.device)["acc"]
        self.paused += time.perf_counter() - t0
        self.points.append((step, self.offset + elapsed, acc))


def distil(cfg, teacher, student, data, source, every, offset=0.0, synth=None):
    """KD from a copy of the pruned student; a synthesizer (if any) sees the student being
    trained (the ADI term)."""
    module = DistillModule(teacher, copy.deepcopy(student), data.num_classes,
                           build(cfg.recovery.optimizer, "recovery.optimizer"),
                           temperature=cfg.recovery.temperature)
    if synth is not None:
        synth.student = module.net
    curve = Curve(data, every, offset)
    trainer = make_trainer(cfg.trainer, max_steps=cfg.recovery.steps, max_epochs=-1, logger=False,
                           enable_checkpointing=False, callbacks=[curve], enable_progress_bar=False,
                           gradient_clip_val=cfg.recovery.gradient_clip_val, limit_val_batches=0)
    trainer.fit(module, datamodule=source)
    return curve.points


def time_to(points, accuracy):
    return next((t for _, t, acc in points if acc >= accuracy), None)


def acc_at(points, budget, pruned_acc):
    seen = [acc for _, t, acc in points if t <= budget]
    return seen[-1] if seen else pruned_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=None, help="conf/experiment file (default: digits)")
    parser.add_argument("--name", default="digits")
    parser.add_argument("--reference-images", type=int, default=1024)
    parser.add_argument("--methods", default="reference_2000,reference_200,deepinversion,adi,fast")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--tolerance", type=float, default=0.5,
                        help="points below reference_2000's final accuracy that count as reaching it "
                             "in the second speed-up column (one test image is 100/N points)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. recovery.steps=200")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    out = ROOT / "outputs" / "bench" / f"synthesis_{args.name}"
    overrides = ["logger=none", f"paths.output_dir={out}", *(
        [f"+experiment={args.experiment}"] if args.experiment else []), *args.overrides]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    data = build(cfg.data, "data")
    data.setup()
    teacher, _ = obtain_teacher(build_model(cfg), cfg, data)
    L.seed_everything(cfg.seed, verbose=False)
    student = pruning.prune(copy.deepcopy(teacher).requires_grad_(True).train(), cfg.pruning.ratio)
    device = device_of(cfg.trainer)
    teacher_acc = evaluate(teacher, data, device)["acc"]
    pruned_acc = evaluate(student, data, device)["acc"]
    low, high = data.pixel_bounds()
    pool = dict(cfg.synthesis.pool)
    rows, targets_of = {}, {}
    for method in args.methods.split(","):
        log.info("== %s", method)
        if method.startswith("reference_"):
            iterations = int(method.split("_")[1])
            start = time.perf_counter()
            images, targets = reference_deepinversion(
                teacher, args.reference_images, data.image_shape, data.num_classes, low, high,
                iterations, batch_size=pool["batch_size"], seed=cfg.seed)
            seconds = time.perf_counter() - start
            fixed = Noise(teacher, data.image_shape, data.num_classes, (low, high))  # never called:
            source = SyntheticDataModule(fixed, kd_batch_size=cfg.recovery.batch_size, seed=cfg.seed,
                                         **{**pool, "size": len(images), "refresh_every": 10 ** 9,
                                            "initial_batches": 1, "batch_size": len(images)})
            source.load_state_dict({"images": images, "targets": targets, "steps": 0,  # the fixed set
                                    "refreshes": 1, "images_made": len(images)})
            points = distil(cfg, teacher, student, data, source, args.eval_every, offset=seconds)
            made = len(images)
        else:
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                mcfg = compose("config", overrides=[*overrides, f"synthesis={method}"])
            synth = build(mcfg.synthesis.synthesizer, "synthesis.synthesizer")(
                teacher=teacher, image_shape=data.image_shape, num_classes=data.num_classes,
                pixel_bounds=(low, high), seed=cfg.seed)
            source = SyntheticDataModule(synth, kd_batch_size=cfg.recovery.batch_size, seed=cfg.seed,
                                         **dict(mcfg.synthesis.pool))
            points = distil(mcfg, teacher, student, data, source, args.eval_every, synth=synth)
            seconds, made = source.seconds, source.images_made
            targets_of[method] = mcfg.synthesis.synthesizer._target_
        rows[method] = {"images": made, "synthesis_seconds": seconds, "images_per_second": made / seconds,
                        "total_seconds": points[-1][1], "final_acc": points[-1][2], "curve": points}
        log.info("%s: %d images in %.1f s, final acc %.4f after %.1f s", method, made, seconds,
                 points[-1][2], points[-1][1])

    reference = rows.get("reference_2000")
    default = cfg.synthesis.synthesizer._target_.rsplit(".", 1)[-1]
    ours = [m for m in rows if not m.startswith("reference_")]
    # the equal-budget column: the wall time of the default synthesizer's run
    budget_from = next((m for m in ours if targets_of[m] == cfg.synthesis.synthesizer._target_),
                       next(iter(ours), None))
    budget = rows[budget_from]["total_seconds"] if budget_from else math.nan
    summary = {"teacher_acc": teacher_acc, "pruned_acc": pruned_acc, "budget_seconds": budget,
               "default_synthesizer": default, "overrides": overrides, "methods": rows}
    lines = [f"# Synthesis benchmark: {args.name}", "",
             f"Teacher {100 * teacher_acc:.2f}%, pruned {100 * pruned_acc:.2f}% "
             f"({cfg.pruning.ratio:.0%} {cfg.pruning.method}), {cfg.recovery.steps} KD steps of "
             f"{cfg.recovery.batch_size} for every method. Budget for the equal-budget column: "
             f"the wall time of dfkd's {budget_from} run ({budget:.0f} s; {default} is the default).", "",
             "| method | images | synthesis s | images/s | vs reference_2000 | total s | final acc % | "
             "time to reference_2000's final acc (s) | speed-up | "
             f"time to within {args.tolerance:g} point (s) | speed-up | acc % within budget |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    near_acc = reference["final_acc"] - args.tolerance / 100 if reference else None
    near_ref = time_to(reference["curve"], near_acc) if reference else None
    for method, r in rows.items():
        ratio = r["images_per_second"] / reference["images_per_second"] if reference else float("nan")
        reach = time_to(r["curve"], reference["final_acc"]) if reference else None
        speedup = reference["total_seconds"] / reach if reference and reach else None
        near = time_to(r["curve"], near_acc) if reference else None
        near_speedup = near_ref / near if near_ref and near else None
        r.update(time_to_reference=reach, speedup=speedup, time_to_near_reference=near,
                 near_speedup=near_speedup, acc_within_budget=acc_at(r["curve"], budget, pruned_acc))
        lines.append(f"| {method} | {r['images']} | {r['synthesis_seconds']:.1f} | "
                     f"{r['images_per_second']:.1f} | {ratio:.1f}x | {r['total_seconds']:.1f} | "
                     f"{100 * r['final_acc']:.2f} | {'-' if reach is None else f'{reach:.1f}'} | "
                     f"{'-' if speedup is None else f'{speedup:.1f}x'} | "
                     f"{'-' if near is None else f'{near:.1f}'} | "
                     f"{'-' if near_speedup is None else f'{near_speedup:.1f}x'} | {100 * r['acc_within_budget']:.2f} |")
    target = ROOT / "experiments" / "results" / f"synthesis_{args.name}"
    target.mkdir(parents=True, exist_ok=True)
    (target / "results.json").write_text(json.dumps(summary, indent=2))
    (target / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
