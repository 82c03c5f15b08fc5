"""Synthetic batches on the fly: a bounded pool of dreamed images, refreshed during KD, and the
callback that logs how good each new batch is.

The stream runs in the main process (no workers) on the teacher's device, so it works the same
on CPU, one GPU and under DDP, where each rank seeds its synthesizer with ``seed + rank``.
The pool is part of the Lightning checkpoint (``state_dict``), so a resumed run keeps its dreams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, IterableDataset
from torchvision.transforms import v2

from dfkd.data.base import random_crop_flip
from dfkd.errors import check, check_choice
from dfkd.synthesis.base import Synthesizer

log = logging.getLogger(__name__)

# how a KD batch's dreams are shifted: one random roll for the whole batch, or a random crop of
# each image padded with zeros (the data's mean colour: dreams are normalized model input)
SHIFTS = ("roll", "crop")
# what else a KD batch's dreams go through: nothing, or one TrivialAugment operation per image
AUGMENTS = ("none", "trivial")


def trivial_augment(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """TrivialAugmentWide (Muller & Hutter, ICCV 2021: one random operation of random strength per
    image) on normalized images whose valid range is [low, high] per channel, applied to them as
    8-bit pixels, as torchvision applies it to photos (its translations reach 32 pixels and its
    rotations 135 degrees, sized for 32x32 images); random draws from torch's global CPU stream.
    One call per image: cheap on the CPU, many small kernels on a GPU."""
    low, high = low.to(x.dtype), high.to(x.dtype)
    pixels = ((x - low) / (high - low) * 255).round().clamp(0, 255).to(torch.uint8)
    augment = v2.TrivialAugmentWide()
    out = torch.stack([augment(image) for image in pixels])
    return low + (high - low) * out.to(x.dtype) / 255

# the quality figures averaged over every batch into the run's summary
QUALITY = ("synthesis/target_acc", "synthesis/class_balance", "synthesis/confidence",
           "synthesis/bn_loss", "synthesis/bn_loss_max", "synthesis/diversity",
           "synthesis/within_class_similarity")


class SyntheticDataModule(L.LightningDataModule):
    def __init__(self, synthesizer: Synthesizer, kd_batch_size: int = 128, batch_size: int = 256,
                 size: int = 2048, initial_batches: int = 4, refresh_every: int = 10,
                 steps_per_epoch: int = 50, flip: bool = True, jitter: int = 1, shift: str = "roll",
                 augment: str = "none", seed: int = 0, real: L.LightningDataModule | None = None) -> None:
        super().__init__()
        self.check_pool(batch_size, size, initial_batches, refresh_every, shift=shift, jitter=jitter, augment=augment)
        self.synthesizer = synthesizer
        self.kd_batch_size, self.batch_size, self.size = kd_batch_size, batch_size, size
        self.initial_batches, self.refresh_every = initial_batches, refresh_every
        self.steps_per_epoch, self.flip, self.jitter, self.seed = steps_per_epoch, flip, jitter, seed
        self.shift, self.augment = shift, augment
        self.real = real  # the real data set, only for the accuracy curve (its validation split when it has one)
        self.images: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.last_batch: torch.Tensor | None = None
        self.refreshes, self.steps, self.images_made, self.seconds = 0, 0, 0, 0.0
        self.quality: dict[str, float] = {}  # sums of every batch's quality figures
        self.judged: dict[str, int] = {}     # how many batches reported each (a figure may be missing)
        self.sampler = torch.Generator().manual_seed(seed)

    @staticmethod
    def check_pool(batch_size: int = 256, size: int = 2048, initial_batches: int = 4, refresh_every: int = 10,
                   shift: str = "roll", jitter: int = 1, augment: str = "none", **augmentation) -> None:
        check_choice("recovery.pool.shift", shift, SHIFTS)
        check_choice("recovery.pool.augment", augment, AUGMENTS)
        check(int(jitter) >= 0, f"recovery.pool.jitter={jitter} must be >= 0 (pixels of random shift; 0: none).")
        check(batch_size >= 1 and size >= batch_size and initial_batches >= 1 and refresh_every >= 1,
              f"recovery.pool needs batch_size >= 1, size >= batch_size, initial_batches >= 1 and "
              f"refresh_every >= 1 (got batch_size={batch_size}, size={size}, "
              f"initial_batches={initial_batches}, refresh_every={refresh_every}).")
        check(initial_batches * batch_size <= size,
              f"recovery.pool.initial_batches={initial_batches} batches of recovery.pool.batch_size={batch_size} "
              f"dreams ({initial_batches * batch_size}) do not fit in a pool of recovery.pool.size={size}: the "
              f"first KD step would wait forever for a pool that never fills. Lower initial_batches to "
              f"{max(1, size // batch_size)} or raise recovery.pool.size to {initial_batches * batch_size}.")

    def setup(self, stage: str | None = None) -> None:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self.synthesizer.reseed(self.seed + rank)
        self.sampler.manual_seed(self.seed + 7919 * (rank + 1))

    # -- the pool ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Dream one batch and add it to the pool; the oldest images leave when it is full."""
        images, targets = self.synthesizer.synthesize(self.batch_size)
        images, targets = images.detach(), targets.detach()
        if self.images is None:
            self.images, self.targets = images, targets
        else:
            self.images = torch.cat([self.images, images])[-self.size:]
            self.targets = torch.cat([self.targets, targets])[-self.size:]
        self.last_batch = images
        self.refreshes += 1
        self.images_made += len(images)
        self.seconds += self.synthesizer.stats.get("synthesis/seconds", 0.0)
        for key in QUALITY:
            if key in self.synthesizer.stats:
                self.quality[key] = self.quality.get(key, 0.0) + self.synthesizer.stats[key]
                self.judged[key] = self.judged.get(key, 0) + 1

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented KD batch drawn uniformly from the pool."""
        idx = torch.randint(len(self.images), (self.kd_batch_size,), generator=self.sampler)
        idx = idx.to(self.images.device)
        x, y = self.images[idx], self.targets[idx]
        if self.shift == "crop":
            x = random_crop_flip(x, self.jitter, self.flip, generator=self.sampler)
        else:
            if self.jitter > 0:
                dx, dy = torch.randint(-self.jitter, self.jitter + 1, (2,), generator=self.sampler)
                x = torch.roll(x, shifts=(int(dx), int(dy)), dims=(2, 3))
            x = random_crop_flip(x, 0, self.flip, generator=self.sampler)
        if self.augment == "trivial":  # seeded from the pool's own stream: a resumed run augments alike
            seed = int(torch.randint(2 ** 62, (), generator=self.sampler))
            with torch.random.fork_rng(devices=[]):  # CPU draws only: the accelerators' streams stay
                torch.default_generator.manual_seed(seed)
                x = trivial_augment(x, *self.synthesizer.bounds(x.device))
        return x, y

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        while self.images is None or len(self.images) < self.initial_batches * self.batch_size:
            self.refresh()
            log.info("Initial pool: batch %d/%d of %d dreams in %.1f s (the teacher agrees with %.0f%% of "
                     "their target classes)", self.refreshes, self.initial_batches, self.batch_size,
                     self.synthesizer.stats.get("synthesis/seconds", 0.0),
                     100 * self.synthesizer.stats.get("synthesis/target_acc", float("nan")))
        if self.images.device != self.synthesizer.device:  # a pool restored from a checkpoint
            self.images = self.images.to(self.synthesizer.device)
            self.targets = self.targets.to(self.synthesizer.device)
        if self.steps > 0 and self.steps % self.refresh_every == 0:
            self.refresh()
        self.steps += 1
        return self.sample()

    # -- Lightning ---------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(self), batch_size=None, num_workers=0)

    def val_dataloader(self):
        return self.real.val_dataloader() if self.real is not None else []

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Real images of the curve (the validation split; test without one) become model input
        as the real data module makes them; dreams already are."""
        if self.real is None:
            return batch
        images, labels = batch
        return self.real.model_input(images), labels

    def state_dict(self) -> dict:
        if self.images is None:
            return {}
        return {"images": self.images.cpu(), "targets": self.targets.cpu(), "steps": self.steps,
                "refreshes": self.refreshes, "images_made": self.images_made, "seconds": self.seconds,
                "sampler": self.sampler.get_state(), "synthesizer": self.synthesizer.state_dict(),
                "quality": self.quality, "judged": self.judged}

    def load_state_dict(self, state: dict) -> None:
        """Called by Lightning after ``setup`` when a run resumes from a checkpoint: the pool,
        the counters, the random streams and the synthesizer (e.g. the fast generator) go on
        from where the checkpoint left them."""
        if state:
            self.images, self.targets = state["images"], state["targets"]
            self.steps, self.refreshes = state["steps"], state["refreshes"]
            self.images_made = state["images_made"]
            self.seconds = state.get("seconds", 0.0)
            self.quality = dict(state.get("quality", {}))
            self.judged = dict(state.get("judged", {key: self.refreshes for key in self.quality}))
            if "sampler" in state:
                self.sampler.set_state(state["sampler"])
            if "synthesizer" in state:
                self.synthesizer.load_state_dict(state["synthesizer"])

    def summary(self) -> dict:
        """What the dreams cost, and how the teacher judged them on average over every batch
        (``target_acc``, ``class_balance``, the BN gap, ...), for results.json."""
        means = {key.split("/", 1)[1]: total / max(self.judged.get(key, 0), 1) for key, total in self.quality.items()}
        # the settings that make dreams the teacher recognizes less, when on (the dream warning names them)
        on = {"target_mix": getattr(self.synthesizer, "target_mix", 0.0),
              "diversity_weight": getattr(self.synthesizer, "weights", {}).get("diversity", 0.0)}
        return {"synthesizer": type(self.synthesizer).__name__, "synthesis_seconds": self.seconds,
                **{k: v for k, v in on.items() if v}, "synthesized_images": self.images_made,
                "pool_images": 0 if self.images is None else len(self.images), **means}


class _Stream(IterableDataset):
    """``steps_per_epoch`` KD batches per pass; the pool lives on in the DataModule."""

    def __init__(self, source: SyntheticDataModule) -> None:
        self.source = source

    def __len__(self) -> int:
        return self.source.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.source.steps_per_epoch):
            yield self.source.next_batch()


class SynthesisMonitor(Callback):
    """Logs the quality and cost of every new synthetic batch, and a grid of dreams now and then
    (to W&B when it is the logger, and always as PNG files in ``folder``). ``denormalize`` turns
    model input back into [0, 1] pixels."""

    def __init__(self, denormalize: Callable[[torch.Tensor], torch.Tensor], folder: Path,
                 every_n_steps: int) -> None:
        self.denormalize, self.folder, self.every = denormalize, Path(folder), max(int(every_n_steps), 1)
        self.seen, self.last_grid = 0, -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        source = trainer.datamodule
        if source.refreshes > self.seen:
            self.seen = source.refreshes
            pl_module.log_dict({**source.synthesizer.stats, "synthesis/images": float(source.images_made)})
        step = trainer.global_step
        if trainer.is_global_zero and source.last_batch is not None and step // self.every > self.last_grid:
            self.last_grid = step // self.every
            self.save_grid(trainer, source.last_batch, step)

    def save_grid(self, trainer: L.Trainer, images: torch.Tensor, step: int) -> None:
        from torchvision.utils import make_grid, save_image

        grid = make_grid(self.denormalize(images[:64]), nrow=8)
        self.folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.folder / f"grid_step{step:06d}.png")
        if hasattr(trainer.logger, "log_image"):
            trainer.logger.log_image(key="synthesis/grid", images=[grid], step=step)
