"""Fast synthesis (Fang et al., "Up to 100x Faster Data-free Knowledge Distillation", AAAI 2022):
a small conditional generator, meta-learned across batches.

Every batch starts from the generator's current (meta) weights and fresh latent codes; the
generator and the codes take ``g_steps`` Adam steps on the DeepInversion loss (the same terms and
weights, the ADI competition and diversity terms included when set); then the meta weights move
towards the adapted ones (Reptile: theta += meta_lr * (theta_adapted - theta)). The first batch trains the
generator longer (``warmup_steps``), from scratch. After that a new batch costs a few steps
instead of hundreds. By default (``warmup_latents: fixed``) the warm-up fits one set of latent
codes, so the next batches start from a generator fitted to codes it never sees again; with
``fresh`` it redraws them every ``g_steps`` steps, as Fang et al.'s warm-up spans many batches, and
the generator learns to dream from any codes. Fresh codes make dreams the teacher recognizes more
often (a CIFAR ResNet-50 of the health check: 0.54 -> 0.80 of the target classes), but KD on them
recovered less (CPU-reduced CIFAR ResNet-18 at 90%: 1.3 points lower on validation over three
seeds; experiments/README.md, synthesis_health). With ``reset_input_layer`` the generator's input
layer starts afresh for every batch (so it is not meta-learned; the rest is). With ``target_mix``
(DeepInversion's) the generator is conditioned on the same two-class mix as the class term: the
mix of the two class embeddings. With ``generators`` > 1, that many generators (their initial
weights drawn one after another, each warmed up on its first batch) dream the batches in turn; four made no more
diverse dreams and recovered no more on the structured CIFAR student (experiments/README.md,
cifar10_structured_levers).

The generator is as wide as the teacher's first BatchNorm layer unless ``generator_width`` says
otherwise (Fang et al.'s 64 for a standard-width CIFAR ResNet). Measured on the CPU-reduced CIFAR-10
ResNet-18 of width 16 (experiments/README.md, "fast synthesizer settings"), a width-16 generator
costs a fifth of a width-64 one per step and distils as well or better.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import torch
from torch import nn

from dfkd.errors import check, check_choice
from dfkd.models import batchnorm_layers
from dfkd.synthesis.base import temporarily_frozen
from dfkd.synthesis.deepinversion import DeepInversion

log = logging.getLogger(__name__)
WARMUP_LATENTS = ("fixed", "fresh")


class Generator(nn.Module):
    """Conditional generator: latent code + class embedding -> image in the valid pixel range."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, latent_dim: int = 64,
                 width: int = 64) -> None:
        super().__init__()
        c, h, w = image_shape
        self.start = (max(h // 4, 1), max(w // 4, 1))
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(latent_dim, 2 * width * self.start[0] * self.start[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(size=(h, w)), nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, c, 3, padding=1),
        )

    def forward(self, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``targets``: class indices, or class probabilities (their mix of class embeddings)."""
        embedding = self.embed(targets) if not targets.is_floating_point() else targets @ self.embed.weight
        h = self.project(z * embedding)
        return self.body(h.view(len(z), -1, *self.start))


class FastSynthesizer(DeepInversion):
    def __init__(self, teacher: nn.Module, image_shape, num_classes: int, pixel_bounds, seed: int = 0,
                 g_steps: int = 5, warmup_steps: int = 200, lr_generator: float = 1e-2,
                 lr_latent: float = 5e-2, meta_lr: float = 0.5, latent_dim: int = 64,
                 generator_width: int | None = None, reset_input_layer: bool = False,
                 warmup_latents: str = "fixed", generators: int = 1, **loss_settings) -> None:
        loss_settings.setdefault("lr", lr_latent)
        super().__init__(teacher, image_shape, num_classes, pixel_bounds, seed, **loss_settings)
        check(int(g_steps) >= 1 and int(warmup_steps) >= 1,
              f"synthesis.synthesizer.g_steps={g_steps} and warmup_steps={warmup_steps} must both be "
              f"at least 1: each new batch takes g_steps generator steps (the first: warmup_steps).")
        self.g_steps, self.warmup_steps = int(g_steps), int(warmup_steps)
        check_choice("synthesis.synthesizer.warmup_latents", warmup_latents, WARMUP_LATENTS)
        self.warmup_latents = warmup_latents
        self.lr_generator, self.lr_latent, self.meta_lr = float(lr_generator), float(lr_latent), float(meta_lr)
        self.latent_dim, self.reset_input_layer = int(latent_dim), bool(reset_input_layer)
        check(isinstance(generators, int) and generators >= 1,
              f"synthesis.synthesizer.generators={generators!r} must be a whole number >= 1: how many "
              f"generators take turns dreaming the batches.")
        if generator_width is None:  # as wide as the teacher's first layer
            generator_width = batchnorm_layers(teacher)[0].num_features
        with torch.random.fork_rng(devices=[]):  # the CPU's stream only: an accelerator's stays as it was
            torch.default_generator.manual_seed(seed)  # initial weights follow the synthesis seed, one after another
            self.generators = [Generator(image_shape, num_classes, latent_dim, int(generator_width))
                               for _ in range(generators)]
        self.batches = 0

    @property
    def meta(self) -> Generator:
        """The meta-learned generator whose turn it is to dream the next batch."""
        return self.generators[self.batches % len(self.generators)]

    @property
    def first_batch(self) -> bool:
        """The next batch is the turn generator's first: its long warm-up, from scratch."""
        return self.batches < len(self.generators)

    def state_dict(self) -> dict:
        weights = [{k: v.cpu() for k, v in g.state_dict().items()} for g in self.generators]
        return {**super().state_dict(), "meta": weights[0], "more_generators": weights[1:], "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        more = state.get("more_generators", [])
        check(len(more) == len(self.generators) - 1,
              f"The checkpoint's synthesizer has {len(more) + 1} generator(s) and this run's "
              f"synthesis.synthesizer.generators={len(self.generators)}: resume with the setting it was made with.")
        for generator, weights in zip(self.generators, [state["meta"], *more]):
            generator.load_state_dict(weights)
        self.batches = state["batches"]

    def reset_project(self) -> None:
        """A fresh input layer (PyTorch's default Linear initialization, drawn on the CPU from the
        synthesis seed's stream, so the same on every device): a per-batch variant of Fang et al.'s
        reset_l0, which re-initializes the input layer and its BatchNorm once, late in training."""
        layer = self.meta.project
        weight = nn.init.kaiming_uniform_(torch.empty(layer.weight.shape), a=math.sqrt(5), generator=self.generator)
        bound = 1 / math.sqrt(layer.in_features)
        bias = torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=self.generator)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)

    def latents(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.latent_dim), generator=self.generator).to(self.device)

    def redraws_latents_before(self, step: int, steps: int) -> bool:
        """During a fresh warm-up, new codes start every g_steps steps while a whole chunk of g_steps
        is left (so the last codes, the batch returned, get at least g_steps steps, as later ones do)."""
        return (self.first_batch and self.warmup_latents == "fresh" and step > 1
                and (step - 1) % self.g_steps == 0 and step + self.g_steps - 1 <= steps)

    def render(self, generator: Generator, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Generator output squashed into the data set's valid pixel range."""
        low, high = self.bounds(z.device)
        return low + (high - low) * torch.sigmoid(generator(z, targets))

    def synthesize(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        self.teacher.eval()
        device = self.device
        self.meta.to(device)
        targets = self.balanced_targets(n).to(device)
        aims = self.mixed_targets(targets)
        z = self.latents(n).requires_grad_(True)
        if self.reset_input_layer and not self.first_batch:
            self.reset_project()
        adapted = copy.deepcopy(self.meta).train()
        optimizer = torch.optim.Adam([{"params": adapted.parameters(), "lr": self.lr_generator},
                                      {"params": [z], "lr": self.lr_latent}], betas=(0.5, 0.999))
        first = self.first_batch
        steps = self.warmup_steps if first else self.g_steps
        with torch.enable_grad(), temporarily_frozen(self.student), self.bn_hooks() as hooks:
            for step in range(1, steps + 1):
                if self.redraws_latents_before(step, steps):
                    with torch.no_grad():
                        z.copy_(self.latents(n))
                    optimizer.state.pop(z, None)  # Adam's moments start afresh, as for a new batch
                terms = self.losses(self._augment(self.render(adapted, z, aims)), aims, hooks)
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                optimizer.step()
                if first and step % max(steps // 4, 1) == 0:  # the long first batch
                    which = f" of generator {self.batches + 1}/{len(self.generators)}" if len(self.generators) > 1 else ""
                    log.info("synthesis warm-up%s: generator step %d/%d, loss %.3f (%.0f s)", which, step, steps,
                             terms["total"].item(), time.perf_counter() - start)
            self.remember_bn(hooks)
        with torch.no_grad():
            images = self.render(adapted.eval(), z, aims)
            rate = 1.0 if first else self.meta_lr
            for meta, new in zip(self.meta.parameters(), adapted.parameters()):
                meta.add_(rate * (new - meta))
            for meta, new in zip(self.meta.buffers(), adapted.buffers()):
                meta.copy_(new)
        seconds = time.perf_counter() - start  # judging the batch is not part of its cost
        quality = self.judge_and_remember(images, targets)
        self.batches += 1
        self.stats = {"synthesis/seconds": seconds,
                      "synthesis/loss": terms["total"].item(), "synthesis/g_steps": float(steps),
                      **quality}
        return images, targets
