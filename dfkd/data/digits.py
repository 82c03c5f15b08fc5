"""The embedded default: scikit-learn's handwritten digits (8x8, 10 classes, no download)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from dfkd.data.base import ImageDataModule
from dfkd.errors import check


class DigitsDataModule(ImageDataModule):
    """1,797 grey 8x8 digits, split once (stratified, fixed seed) into train and test, read when
    first needed. ``mean``/``std``: the normalization; null measures it on the train split."""

    def __init__(self, name: str = "digits", num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                 test_fraction: float = 0.25, split_seed: int = 0, mean: list[float] | None = None,
                 std: list[float] | None = None, **kwargs) -> None:
        super().__init__(name, num_classes, in_channels, image_size, split_seed=split_seed, **kwargs)
        check(0.0 < test_fraction < 1.0,
              f"data.test_fraction={test_fraction} must lie strictly between 0 and 1.")
        check(num_classes == 10 and in_channels == 1 and image_size == 8,
              f"The digits data set has 10 classes of 1x8x8 images, but the config says "
              f"data.num_classes={num_classes}, data.in_channels={in_channels}, "
              f"data.image_size={image_size}; leave them at their defaults for data=digits.")
        self.test_fraction = test_fraction
        self.normalization = "measured" if mean is None and std is None else "given"
        if self.normalization_given:
            self.set_normalization(mean, std)
        self._arrays: tuple | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._arrays is not None:
            return
        images, labels = load_digits(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(
            images / 16.0, labels, test_size=self.test_fraction, random_state=self.split_seed, stratify=labels)
        if not self.normalization_given:
            self.mean, self.std = (float(x_train.mean()),), (float(x_train.std()),)
        self._arrays = (x_train, y_train, x_test, y_test)

    def read(self, split: str) -> TensorDataset:
        x_train, y_train, x_test, y_test = self._arrays
        x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
        x = torch.tensor((x - self.mean[0]) / self.std[0], dtype=torch.float32)
        return TensorDataset(x.view(-1, 1, 8, 8), torch.tensor(y, dtype=torch.long))
