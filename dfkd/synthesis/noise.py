"""Gaussian noise as a transfer set: the floor every dreamed set must beat clearly."""

from __future__ import annotations

import time

import torch

from dfkd.synthesis.base import Synthesizer


class Noise(Synthesizer):
    def synthesize(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        images = self.clamp_(self.noise(n))
        targets = self.balanced_targets(n).to(self.device)
        self.stats = {"synthesis/seconds": time.perf_counter() - start, **self.quality(images, targets)}
        return images, targets
