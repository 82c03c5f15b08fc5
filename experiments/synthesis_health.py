"""Synthesis health check: does each synthesizer, at its defaults, dream images that every
built-in architecture recognizes?

For each architecture a reduced-width teacher is trained on the CIFAR-10 JPEG copy (or taken from
the cache: conf/experiment/synthesis_health.yaml has the recipe), then each synthesizer dreams
``--batches`` batches after its first one (the fast generator's warm-up) and the teacher judges
them: agreement with the target classes, class balance of its predictions (1 = even), the
BatchNorm-statistics gap (normalized distance, mean and worst layer), feature diversity, and the
cost per image. Goal (issue 13): fast reaches agreement >= 0.9 and balance >= 0.9 everywhere.

    tar xzf ../shared/data/cifar10-jpg.tar.gz -C .data/
    .venv/bin/python experiments/synthesis_health.py                       # every architecture
    .venv/bin/python experiments/synthesis_health.py --archs resnet18 --synthesizers fast \\
        synthesis.synthesizer.bn_weight=3                                  # Hydra overrides last

Writes experiments/results/synthesis_health/{results.md,results.json} (``--name`` changes the
folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from dfkd.config import build
from dfkd.synthesis import bn_statistics
from dfkd.teacher import build_model, cache_file, obtain_teacher

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("synthesis_health")
# reduced widths: about 1/8 of the standard channels, a few minutes of CPU training each
WIDTHS = {"resnet18": "model.width=8", "resnet34": "model.width=8", "resnet50": "model.width=4",
          "mobilenetv2": "model.width_mult=0.25", "vgg16": "model.width=8"}
KEYS = ("target_acc", "class_balance", "bn_loss", "bn_loss_max", "diversity", "confidence")


def config(arch: str, synthesis: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[
            "+experiment=synthesis_health", f"model={arch}", WIDTHS[arch], f"synthesis={synthesis}",
            f"paths.output_dir={ROOT / 'outputs' / 'bench' / 'synthesis_health'}", *overrides])


def check(teacher, data, cfg, batches: int) -> dict:
    """Dream 1 + ``batches`` batches; the judged figures are the mean over the last ``batches``."""
    synth = build(cfg.synthesis.synthesizer, "synthesis.synthesizer")(
        teacher=teacher, image_shape=data.image_shape, num_classes=data.num_classes,
        pixel_bounds=data.pixel_bounds(), seed=cfg.seed)
    n = cfg.recovery.pool.batch_size
    start = time.perf_counter()
    synth.synthesize(n)  # the first batch (fast: the generator's warm-up)
    first = time.perf_counter() - start
    figures: dict[str, list[float]] = {k: [] for k in KEYS}
    start = time.perf_counter()
    for _ in range(batches):
        synth.synthesize(n)
        for k in KEYS:
            figures[k].append(synth.stats.get(f"synthesis/{k}", float("nan")))
    seconds = time.perf_counter() - start
    row = {k: sum(v) / len(v) for k, v in figures.items()}
    row.update(first_batch_seconds=first, ms_per_image=1000 * seconds / (batches * n))
    return row


def real_gap(teacher, data, n: int) -> float:
    """The same BN gap on ``n`` real test images: what a perfect synthesizer would reach."""
    x, _ = next(iter(data.with_batch_size(n).test_dataloader()))
    with torch.no_grad(), bn_statistics(teacher) as hooks:
        teacher(data.model_input(x[:n].to(next(teacher.parameters()).device)))
        return (sum(h.loss for h in hooks) / len(hooks)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(WIDTHS))
    parser.add_argument("--synthesizers", default="fast,deepinversion,adi")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--name", default="synthesis_health")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. synthesis.synthesizer.bn_weight=3")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = []
    for arch in args.archs.split(","):
        cfg = config(arch, "fast", args.overrides)
        data = build(cfg.data, "data")
        data.setup()
        cache = cache_file(cfg.paths.cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer)
        teacher, info = obtain_teacher(build_model(cfg.model, cfg.teacher.seed), cfg.teacher, data,
                                       cfg.trainer, cache, Path(cfg.paths.output_dir))
        teacher_acc = info["acc"]
        gap = real_gap(teacher, data, cfg.recovery.pool.batch_size)
        for synthesizer in args.synthesizers.split(","):
            torch.manual_seed(cfg.seed)
            row = {"arch": arch, "synthesizer": synthesizer, "teacher_acc": teacher_acc, "real_bn_loss": gap,
                   **check(teacher, data, config(arch, synthesizer, args.overrides), args.batches)}
            log.info("%s", json.dumps(row))
            rows.append(row)
    out = ROOT / "experiments" / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"overrides": args.overrides, "rows": rows}, indent=2))
    lines = [f"# Synthesis health check ({args.name})", "",
             f"Command: `.venv/bin/python experiments/synthesis_health.py {' '.join(sys.argv[1:])}`", "",
             "| architecture | synthesizer | teacher % | target agreement | class balance | BN gap (mean / worst layer) "
             "| BN gap of real images | diversity | ms per image | first batch s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['synthesizer']} | {100 * r['teacher_acc']:.1f} | {r['target_acc']:.3f} | "
                     f"{r['class_balance']:.3f} | {r['bn_loss']:.2f} / {r['bn_loss_max']:.2f} | "
                     f"{r['real_bn_loss']:.2f} | {r['diversity']:.3f} | {r['ms_per_image']:.1f} | "
                     f"{r['first_batch_seconds']:.1f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
