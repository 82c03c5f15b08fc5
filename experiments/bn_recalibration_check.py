"""Is a data-free student's ceiling in its BatchNorm statistics or in its weights? Re-estimates the
saved student's BatchNorm running statistics (weights unchanged) on real train images, or on the
run's own pool of dreams without augmentation, and scores each on the validation split.

    .venv/bin/python experiments/bn_recalibration_check.py outputs/bench/cifar10_structured_levers/cutmix_steps6000

RUN_DIR is a finished one-shot run of `python -m dfkd.run` with a validation split (`data.val_size`)
and its `synthetic_pool.pt`; the teacher comes from the cache and the student is pruned again as
the run pruned it (deterministic), then its saved weights are loaded. 40 batches of 128 each, drawn
with a fixed seed: real images with the random crops and flips the teacher trained with, dreams
as the pool holds them. About a minute on 2 cores.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dfkd.config import compose_config
from dfkd.evaluate import evaluate
from dfkd.modules import recalibrate_batchnorm
from dfkd.run import check_settings
from dfkd.teacher import build_model, cache_file, load_weights

BATCHES, BATCH = 40, 128


def recalibrated(model: torch.nn.Module, batches: list[torch.Tensor]) -> torch.nn.Module:
    """A copy whose BatchNorm running statistics are the plain average over ``batches`` (what
    `recovery.student_bn=recalibrate` does after KD)."""
    model = copy.deepcopy(model)
    recalibrate_batchnorm(model, batches)
    return model.eval()


def main(run: Path) -> None:
    overrides = list(OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    cfg = compose_config(overrides + [f"paths.output_dir={run}"])
    data, _, prune, _ = check_settings(cfg)
    if len(prune.rounds()) > 1:
        sys.exit(f"{run} pruned in rounds; this check rebuilds one-shot students only.")
    data.setup()
    cache = cache_file(cfg.paths.cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer)
    teacher = load_weights(build_model(cfg.model, cfg.teacher.seed), cache).eval()
    dreams = None  # pruning.importance=taylor: the run's own dreams, so the same channels are pruned
    if prune.dreams:
        kept = torch.load(run / "pruning_dreams.pt", map_location="cpu", weights_only=True)
        dreams = kept["images"], kept["classes"]
    student = prune(copy.deepcopy(teacher), torch.zeros(1, *data.image_shape), ratio=prune.ratio, dreams=dreams)
    student.load_state_dict(torch.load(run / "student.pt", map_location="cpu", weights_only=True))
    student.eval()
    generator = torch.Generator().manual_seed(0)
    train = data.train_set  # the train split less the validation images
    images = train.dataset.tensors[0][torch.as_tensor(train.indices)]
    torch.manual_seed(0)  # the crops and flips of model_input(train=True)
    real = [data.model_input(images[torch.randint(len(images), (BATCH,), generator=generator)], train=True)
            for _ in range(BATCHES)]
    pool = torch.load(run / "synthetic_pool.pt", map_location="cpu")["images"]
    dreams = [pool[torch.randint(len(pool), (BATCH,), generator=generator)] for _ in range(BATCHES)]

    def val(model):
        return 100 * evaluate(model, data, torch.device("cpu"), split="val")["acc"]

    print(f"| model | validation % |\n|---|---|")
    print(f"| student as saved (statistics from KD) | {val(student):.2f} |")
    print(f"| student, statistics from {BATCHES}x{BATCH} real train images | {val(recalibrated(student, real)):.2f} |")
    print(f"| student, statistics from {BATCHES}x{BATCH} of the run's dreams | {val(recalibrated(student, dreams)):.2f} |")
    print(f"| teacher | {val(teacher):.2f} |")
    print(f"| teacher, statistics from the same real train images | {val(recalibrated(teacher, real)):.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
