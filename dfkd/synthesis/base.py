"""The interface every synthesizer implements: ``synthesize(n) -> (images, targets)``."""

from __future__ import annotations

import torch
from torch import nn


class Synthesizer:
    """Makes batches of images for the teacher, on the teacher's device.

    It holds the teacher by reference (the DistillModule owns it, so Lightning moves it to the
    right device) and its own random generator, seeded per rank, so DDP ranks dream different
    images while the user's global seed stays untouched.
    """

    needs_batchnorm = False

    def __init__(self, teacher: nn.Module, image_shape: tuple[int, int, int], num_classes: int,
                 pixel_bounds: tuple[torch.Tensor, torch.Tensor], seed: int = 0) -> None:
        self.teacher = teacher
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.low, self.high = pixel_bounds
        self.generator = torch.Generator().manual_seed(seed)
        self.stats: dict[str, float] = {}

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return next(self.teacher.parameters()).device

    def balanced_targets(self, n: int) -> torch.Tensor:
        """Classes 0..C-1 repeated as evenly as n allows, in random order."""
        targets = torch.arange(n) % self.num_classes
        return targets[torch.randperm(n, generator=self.generator)]

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn((n, *self.image_shape), generator=self.generator).to(self.device)

    def clamp_(self, images: torch.Tensor) -> torch.Tensor:
        """Clip to the valid pixel range of the data set, per channel, in place."""
        low, high = self.low.to(images.device), self.high.to(images.device)
        return images.copy_(torch.maximum(torch.minimum(images, high), low))

    def synthesize(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
