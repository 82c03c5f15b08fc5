"""The interface every synthesizer implements: ``synthesize(n) -> (images, targets)``, plus the
quality signals every synthetic batch is judged by."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.models import penultimate_features
from dfkd.synthesis.bn_stats import bn_loss, bn_statistics


class Synthesizer:
    """Makes batches of images for the teacher, on the teacher's device.

    It holds the teacher by reference (the DistillModule owns it, so Lightning moves it to the
    right device) and its own random generator, seeded per rank, so DDP ranks dream different
    images while the user's global seed stays untouched. ``student`` is set during recovery, for
    synthesizers that look at where student and teacher disagree.
    """

    needs_batchnorm = False

    def __init__(self, teacher: nn.Module, image_shape: tuple[int, int, int], num_classes: int,
                 pixel_bounds: tuple[torch.Tensor, torch.Tensor], seed: int = 0) -> None:
        self.teacher = teacher
        self.student: nn.Module | None = None
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.low, self.high = pixel_bounds
        self.generator = torch.Generator().manual_seed(seed)
        self.stats: dict[str, float] = {}

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict:
        """What a resumed run needs to go on dreaming where this one stopped."""
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

    @property
    def device(self) -> torch.device:
        return next(self.teacher.parameters()).device

    def balanced_targets(self, n: int) -> torch.Tensor:
        """Classes 0..C-1 repeated as evenly as n allows, in random order."""
        targets = torch.arange(n) % self.num_classes
        return targets[torch.randperm(n, generator=self.generator)]

    def noise(self, n: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        return torch.randn((n, *(shape or self.image_shape)), generator=self.generator).to(self.device)

    def bounds(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.low.device != device:  # moved once, not copied to the accelerator at every step
            self.low, self.high = self.low.to(device), self.high.to(device)
        return self.low, self.high

    def clamp_(self, images: torch.Tensor) -> torch.Tensor:
        """Clip to the valid pixel range of the data set, per channel, in place."""
        low, high = self.bounds(images.device)
        return images.copy_(torch.maximum(torch.minimum(images, high), low))

    def synthesize(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def quality(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """How the teacher sees a synthetic batch (``judge``'s figures)."""
        return self.judge(images, targets)[0]

    @torch.no_grad()
    def judge(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[dict[str, float], torch.Tensor | None]:
        """How the teacher sees a synthetic batch, and its penultimate features (unit length; None
        for a teacher without a Linear layer). The figures: agreement with the targets, confidence,
        entropy, class balance of its predictions (1 = even), the BatchNorm-statistics gap (the
        normalized distance of bn_stats.py: mean over layers and worst layer), diversity (mean
        cosine distance between penultimate features) and the mean cosine similarity of those
        features between dreams of the same target class (what ``diversity_weight`` lowers)."""
        with penultimate_features(self.teacher) as features, bn_statistics(self.teacher) as hooks:
            probs = self.teacher(images).float().softmax(1)
            gap = bn_loss(hooks).item() if hooks else float("nan")
            worst = max(h.loss.item() for h in hooks) if hooks else float("nan")
        n, log_probs = len(images), probs.clamp_min(1e-12).log()
        share = torch.bincount(probs.argmax(1), minlength=self.num_classes).float() / n
        stats = {
            "synthesis/target_acc": (probs.argmax(1) == targets).float().mean().item(),
            "synthesis/confidence": probs.max(1).values.mean().item(),
            "synthesis/entropy": -(probs * log_probs).sum(1).mean().item(),
            "synthesis/class_balance": (-(share * share.clamp_min(1e-12).log()).sum()
                                        / math.log(self.num_classes)).item(),
            "synthesis/bn_loss": gap,
            "synthesis/bn_loss_max": worst,
        }
        f = F.normalize(features[-1].float().flatten(1), dim=1) if features else None
        if f is not None and n > 1:
            cosines = f @ f.T
            stats["synthesis/diversity"] = 1.0 - ((cosines.sum() - n) / (n * (n - 1))).item()
            same = (targets[:, None] == targets[None, :]).fill_diagonal_(False)
            if same.any():
                stats["synthesis/within_class_similarity"] = cosines[same].mean().item()
        return stats, f


def make_synthesizer(factory, teacher: nn.Module, data, seed: int, **settings) -> Synthesizer:
    """The synthesizer conf/synthesis builds (``factory``: its partial) for ``teacher`` and the
    images of ``data`` (an ImageDataModule), with its own ``seed``; ``settings`` override the
    partial's."""
    return factory(teacher=teacher, image_shape=data.image_shape, num_classes=data.num_classes,
                   pixel_bounds=data.pixel_bounds(), seed=seed, **settings)


def dream(synthesizer: Synthesizer, n: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` dreams of ``synthesizer`` and their target classes, in batches of ``batch_size``."""
    batches = [synthesizer.synthesize(min(batch_size, n - k)) for k in range(0, n, batch_size)]
    return torch.cat([x for x, _ in batches]).detach(), torch.cat([y for _, y in batches])


@contextlib.contextmanager
def temporarily_frozen(model: nn.Module | None) -> Iterator[None]:
    """Use ``model`` (the student, mid-training) for synthesis only: eval mode and no parameter
    gradients inside, everything as it was afterwards."""
    if model is None:
        yield
        return
    modes = [(m, m.training) for m in model.modules()]  # each layer's own (a frozen BN stays so)
    flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
