"""How much better is a teacher averaged over mirror images (what `recovery.teacher_flip=true`
labels KD batches with)? Scores the run's cached teacher on the validation and test splits, alone
and as the mean of its logits on each image and its mirror image.

    .venv/bin/python experiments/teacher_flip_accuracy.py \
        outputs/bench/cifar10_structured_levers/cutmix_steps3000_teacher_flip

RUN_DIR is a finished run of `python -m dfkd.run` on data whose mirror images keep their class
(data.hflip=true) with a validation split (`data.val_size`); the teacher comes from the cache.
Table: experiments/results/teacher_flip/results.md (under a minute on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from dfkd.config import compose_config
from dfkd.evaluate import evaluate
from dfkd.modules import mirror_mean
from dfkd.run import check_settings
from dfkd.teacher import build_model, cache_file, load_weights


class MirrorMean(nn.Module):
    """The teacher's mean logits on the images and on their mirror images."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mirror_mean(self.teacher, x)


def main(run: Path) -> None:
    overrides = list(OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    cfg = compose_config(overrides + [f"paths.output_dir={run}"])
    data = check_settings(cfg)[0]
    if not data.hflip:
        sys.exit(f"{run}: data.hflip=false, mirror images may change the class.")
    data.setup()
    cache = cache_file(cfg.paths.cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer)
    teacher = load_weights(build_model(cfg.model, cfg.teacher.seed), cache).eval()
    lines = [f"Teacher {cache.name} ({cfg.model.name}, data={cfg.data.name})", "",
             "| teacher | validation % | test % |", "|---|---|---|"]
    for name, model in (("as trained", teacher), ("mean over each image and its mirror image", MirrorMean(teacher))):
        scores = [100 * evaluate(model, data, torch.device("cpu"), split=split)["acc"] for split in ("val", "test")]
        lines.append(f"| {name} | {scores[0]:.2f} | {scores[1]:.2f} |")
    out = Path(__file__).parent / "results" / "teacher_flip"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
