"""What every real data set gives the pipeline: loaders, shape, classes and pixel range."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class ImageDataModule(L.LightningDataModule):
    """A labelled image data set with a train and a test split.

    Subclasses fill ``train_set`` and ``test_set`` and set ``mean``/``std`` (per channel,
    the normalization applied to every image), so that synthesizers know the valid pixel range.
    ``hflip`` says whether a left-right mirror image is still an image of the same class
    (photos: yes; digits, text: no): train-time augmentation and the dreams follow it.
    """

    def __init__(self, name: str, num_classes: int, in_channels: int, image_size: int,
                 batch_size: int = 128, eval_batch_size: int = 512, num_workers: int = 0,
                 hflip: bool = True) -> None:
        super().__init__()
        self.name = name
        self.hflip = bool(hflip)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.mean: tuple[float, ...] = (0.0,) * in_channels
        self.std: tuple[float, ...] = (1.0,) * in_channels
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.in_channels, 1, 1)
        return torch.tensor(self.mean).view(shape), torch.tensor(self.std).view(shape)

    def pixel_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized values of pixel intensities 0 and 1, shape (C, 1, 1)."""
        mean, std = self._stats()
        return (0 - mean) / std, (1 - mean) / std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel intensities, for image grids."""
        mean, std = self._stats()
        return (images.detach().cpu() * std + mean).clamp(0, 1)

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            self.setup()
            dataset = self.train_set if train else self.test_set
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, drop_last=train, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def val_dataloader(self) -> DataLoader:
        # Curves during training are drawn on the test split; nothing is selected on it.
        return self.test_dataloader()
