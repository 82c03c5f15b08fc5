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
from functools import partial
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from lightning.pytorch.callbacks import Callback

from dfkd.config import build
from dfkd.evaluate import evaluate
from dfkd.synthesis import Synthesizer, bn_statistics, image_priors
from dfkd.teacher import build_model, cache_file, obtain_teacher
from dfkd.trainer import device_of

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
        with bn_statistics(teacher, "l2") as hooks:  # the papers' distance, summed over layers
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


class FixedSet(Synthesizer):
    """A transfer set made before any distillation (the papers' way), handed out in order."""

    def __init__(self, images, targets, **context) -> None:
        super().__init__(**context)
        self.images, self.targets, self.given = images, targets, 0

    def synthesize(self, n):
        part = slice(self.given, self.given + n)
        self.given += n
        self.stats = {"synthesis/seconds": 0.0}
        return self.images[part].to(self.device), self.targets[part].to(self.device)


def distil(cfg, teacher, student, data, every, offset=0.0, synthesizer=None, pool=None):
    """dfkd's own recovery (conf/recovery, with ``synthesizer`` and ``pool`` if given) from a copy
    of the pruned student, with the accuracy curve and no checkpoints."""
    overrides = {k: v for k, v in (("synthesizer", synthesizer), ("pool", pool)) if v is not None}
    recovery = build(cfg.recovery, "recovery", **overrides)
    curve = Curve(data, every, offset)
    summary = recovery.recover(teacher, copy.deepcopy(student), data, cfg.trainer, logger=None,
                               out=ROOT / "outputs" / "bench" / "tmp", seed=cfg.seed, callbacks=[curve],
                               checkpoints=False)
    return curve.points, summary


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
    cache = cache_file(cfg.paths.cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer)
    model = build_model(cfg.model, cfg.teacher.seed)
    teacher, teacher_info = obtain_teacher(model, cfg.teacher, data, cfg.trainer, cache, out)
    L.seed_everything(cfg.seed, verbose=False)
    prune = build(cfg.pruning, "pruning")
    student = prune(copy.deepcopy(teacher).requires_grad_(True).train())
    device = device_of(cfg.trainer)
    teacher_acc = teacher_info["acc"]
    pruned_acc = evaluate(student, data, device)["acc"]
    low, high = data.pixel_bounds()
    pool = OmegaConf.to_container(cfg.recovery.pool, resolve=True)
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
            points, _ = distil(cfg, teacher, student, data, args.eval_every, offset=seconds,
                               synthesizer=partial(FixedSet, images, targets),
                               pool={**pool, "size": len(images), "refresh_every": 10 ** 9,
                                     "initial_batches": 1, "batch_size": len(images)})
            made = len(images)
        else:
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                mcfg = compose("config", overrides=[*overrides, f"synthesis={method}"])
            points, summary = distil(mcfg, teacher, student, data, args.eval_every)
            seconds, made = summary["synthesis_seconds"], summary["synthesized_images"]
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
             f"({prune.describe()}), {cfg.recovery.steps} KD steps of "
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
