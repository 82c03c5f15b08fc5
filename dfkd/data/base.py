"""What every real data set gives the pipeline: loaders, shape, classes and pixel range.

Images are stored as they are read (uint8 pixels, for photos) and become the model's input on
the device the batch lands on: train-time augmentation (random crop, flip) and normalization run
there, batched, in ``on_after_batch_transfer``. A GPU run so spends no CPU time per image.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from dfkd.errors import check


def _yaml(value) -> str:
    """A setting's value as it is written on the command line (null, not None)."""
    return "null" if value is None else str(list(value)) if isinstance(value, Iterable) else str(value)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image: a random ``H x W`` crop of the zero-padded image (``padding`` pixels each side)
    and, with ``flip``, a left-right mirror with probability 1/2. Batched, on ``x``'s device; the
    random draws come from ``generator`` (on its own device) when one is given."""
    n, c, h, w = x.shape
    draws = generator.device if generator is not None else x.device
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        offsets = torch.randint(0, 2 * padding + 1, (2, n, 1, 1), device=draws, generator=generator).to(x.device)
        rows = offsets[0] + torch.arange(h, device=x.device).view(1, h, 1)
        cols = offsets[1] + torch.arange(w, device=x.device).view(1, 1, w)
        index = (rows * (w + 2 * padding) + cols).view(n, 1, h * w).expand(n, c, h * w)
        x = padded.flatten(2).gather(2, index).view(n, c, h, w)
    if flip:
        mirror = (torch.rand(n, device=draws, generator=generator) < 0.5).to(x.device)
        x = torch.where(mirror.view(n, 1, 1, 1), x.flip(3), x)
    return x


class ImageDataModule(L.LightningDataModule):
    """A labelled image data set with a train and a test split, and optionally a validation split
    carved from the train split (``val_size`` images, a fixed random choice by ``split_seed``):
    where settings are chosen, on validation; what is reported, on test.

    Subclasses check their files in ``setup`` and read a whole split in ``read("train"|"test")``
    as (image, label) pairs, images either uint8 pixels (C, H, W) or tensors already normalized;
    each split is read when first used. They set ``mean``/``std`` (per channel, the normalization
    applied to every image), so that synthesizers know the valid pixel range. ``hflip`` says
    whether a left-right mirror image is still an image of the same class (photos: yes; digits,
    text: no): train-time augmentation and the dreams follow it.
    """

    def __init__(self, name: str, num_classes: int, in_channels: int, image_size: int,
                 batch_size: int = 128, eval_batch_size: int = 512, num_workers: int = 0,
                 hflip: bool = True, augment: bool = False, crop_padding: int = 4, val_size: int = 0,
                 split_seed: int = 0) -> None:
        super().__init__()
        check(int(val_size) >= 0, f"data.val_size={val_size} must be 0 (no validation split) or more.")
        for setting, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            check(isinstance(value, int) and value >= 1, f"data.{setting}={value!r} must be a whole number >= 1.")
        self.name = name
        self.hflip = bool(hflip)
        self.augment, self.crop_padding = bool(augment), int(crop_padding)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_size, self.split_seed = int(val_size), int(split_seed)
        self.mean: tuple[float, ...] = (0.0,) * in_channels
        self.std: tuple[float, ...] = (1.0,) * in_channels
        self.normalization = "given"  # or "measured" on the train split (setup), or "guessed" (0.5 per channel)
        self._splits: dict[str, Dataset | None] = {}

    def setup(self, stage: str | None = None) -> None:
        """Check the files (subclasses); reading waits until a split is used."""

    def read(self, split: str) -> Dataset:
        """The whole ``split`` ("train" or "test") as (image, label) pairs."""
        raise NotImplementedError

    def _split(self, name: str) -> Dataset | None:
        if name not in self._splits:
            self.setup()
            if name == "test":
                self._splits["test"] = self.read("test")
            else:
                whole = self.read("train")
                check(self.val_size < len(whole),
                      f"data.val_size={self.val_size} leaves no training images: the train split of "
                      f"data={self.name} has {len(whole)}.")
                order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(self.split_seed))
                self._splits["train"] = Subset(whole, order[self.val_size:].tolist()) if self.val_size else whole
                self._splits["val"] = Subset(whole, order[:self.val_size].tolist()) if self.val_size else None
        return self._splits[name]

    @property
    def train_set(self) -> Dataset:
        return self._split("train")

    @property
    def val_set(self) -> Dataset | None:
        return self._split("val")

    @property
    def test_set(self) -> Dataset:
        return self._split("test")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def normalization_given(self) -> bool:
        """The normalization is the configured one (data.mean and data.std, or a data set's own)."""
        return self.normalization == "given"

    def set_normalization(self, mean, std) -> None:
        """The per-channel normalization every image gets (checked: one value per channel, std > 0)."""
        check((mean is None) == (std is None), f"data.mean={_yaml(mean)} and data.std={_yaml(std)}: give both (the "
              f"normalization the teacher was trained with), or neither.")
        # one number stands for the same value in every channel
        mean, std = ((v,) * self.in_channels if isinstance(v, (int, float)) else v for v in (mean, std))
        for setting, value in (("mean", mean), ("std", std)):
            check(isinstance(value, Iterable) and not isinstance(value, str)
                  and all(isinstance(v, (int, float)) for v in value),
                  f"data.{setting}={value!r} must be numbers, one per image channel "
                  f"(data.in_channels={self.in_channels}), as a list: data.{setting}=[...].")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        check(len(mean) == len(std) == self.in_channels and all(s > 0 for s in std),
              f"data.mean={list(mean)} and data.std={list(std)} need one value per image channel "
              f"(data.in_channels={self.in_channels}), every std above 0.")
        self.mean, self.std = mean, std

    def _stats(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.in_channels, 1, 1)
        return (torch.tensor(self.mean, device=device).view(shape),
                torch.tensor(self.std, device=device).view(shape))

    def input_spec(self) -> dict:
        """What the teacher and the student (student.pt2, student.onnx included) take, for results.json:
        images of ``shape``, pixel intensities in [0, 1] normalized per channel as (x - mean) / std;
        ``normalization``: given (data.mean, data.std or the data set's own), measured on the train
        split, or guessed."""
        return {"shape": list(self.image_shape), "mean": list(self.mean), "std": list(self.std),
                "normalization": self.normalization}

    def pixel_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized values of pixel intensities 0 and 1, shape (C, 1, 1)."""
        mean, std = self._stats()
        return (0 - mean) / std, (1 - mean) / std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel intensities, for image grids."""
        mean, std = self._stats()
        return (images.detach().cpu().float() * std + mean).clamp(0, 1)

    def model_input(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Stored images -> what the model sees, on the images' device: uint8 pixels scaled to
        [0, 1] and normalized, after (``train``, if ``augment``) a random crop and flip."""
        if images.dtype != torch.uint8:
            return images  # stored already normalized (digits)
        if train and self.augment:
            images = random_crop_flip(images, self.crop_padding, self.hflip)
        mean, std = self._stats(images.device)
        return (images.float() / 255 - mean) / std

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.model_input(images, train=training), labels

    def with_batch_size(self, batch_size: int) -> ImageDataModule:
        """The same data (shared, not copied) served in batches of ``batch_size``."""
        other = copy.copy(self)
        other.batch_size = int(batch_size)
        return other

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, drop_last=train, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def val_dataloader(self) -> DataLoader:
        """The curve during training: on the validation split when there is one, else on the test
        split (a curve to watch; nothing is chosen on it)."""
        return self._loader(self.val_set if self.val_size else self.test_set, train=False)

    def loader(self, split: str) -> DataLoader:
        """The evaluation loader of ``split`` ("test" or "val")."""
        check(split in ("test", "val") and (split == "test" or self.val_size),
              f"There is no {split} split to evaluate on (data.val_size={self.val_size}).")
        return self._loader(self.test_set if split == "test" else self.val_set, train=False)
