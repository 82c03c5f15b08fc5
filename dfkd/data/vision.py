"""Image data sets read by torchvision: CIFAR-10/100 in their standard folders, and any
ImageFolder tree (train/ and test/, one sub-folder per class), such as the JPEG copy of CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Subset
from torchvision import datasets
from torchvision.transforms import v2

from dfkd.data.base import ImageDataModule
from dfkd.errors import DfkdError, check

CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


class _VisionDataModule(ImageDataModule):
    """Shared: normalization, the usual train-time augmentation (random crop with 4-pixel
    padding, horizontal flip), an optional train subset for reduced runs."""

    def __init__(self, name: str, root: str, num_classes: int, in_channels: int = 3,
                 image_size: int = 32, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, augment: bool = True,
                 train_subset: int | None = None, **kwargs) -> None:
        super().__init__(name, num_classes, in_channels, image_size, **kwargs)
        self.root = Path(root).expanduser()
        default_mean, default_std = CIFAR_STATS.get(name, ((0.5,) * in_channels, (0.5,) * in_channels))
        self.mean = tuple(mean) if mean is not None else default_mean
        self.std = tuple(std) if std is not None else default_std
        self.augment, self.train_subset = augment, train_subset

    def transform(self, train: bool) -> v2.Compose:
        steps = [v2.ToImage()]
        if self.image_size:
            steps.append(v2.Resize((self.image_size, self.image_size), antialias=True))
        if train and self.augment:
            steps += [v2.RandomCrop(self.image_size, padding=4)]
            steps += [v2.RandomHorizontalFlip()] if self.hflip else []
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)

    def _subset(self, dataset):
        if self.train_subset and self.train_subset < len(dataset):
            # a fixed, class-mixed subset (every k-th image), the same for every run
            step = len(dataset) / self.train_subset
            return Subset(dataset, [int(i * step) for i in range(self.train_subset)])
        return dataset

    def _check_classes(self, found: int) -> None:
        check(found == self.num_classes,
              f"data={self.name} at {self.root} has {found} classes, but data.num_classes="
              f"{self.num_classes}; set data.num_classes={found} (the model's output size follows it).")


class CIFARDataModule(_VisionDataModule):
    """torchvision's CIFAR10 / CIFAR100 (``name`` cifar10 or cifar100) under ``root``."""

    def __init__(self, name: str = "cifar10", root: str = "data", download: bool = False, **kwargs) -> None:
        check(name in CIFAR_STATS, f"data.name={name!r}: CIFARDataModule reads cifar10 or cifar100.")
        super().__init__(name, root, **kwargs)
        self.download = download
        self._dataset = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        try:
            train = self._dataset(str(self.root), train=True, transform=self.transform(True),
                                  download=self.download)
            test = self._dataset(str(self.root), train=False, transform=self.transform(False))
        except RuntimeError as err:
            folder = self._dataset.base_folder
            raise DfkdError(
                f"No {self.name.upper()} data under data.root={self.root} (expected {self.root / folder}/, "
                f"the folder torchvision's {self._dataset.__name__} reads). Set data.download=true "
                f"to download it there, or point data.root at the folder that holds {folder}/; "
                f"for an ImageFolder tree (train/ and test/ with a folder per class) use "
                f"data=image_folder data.root=PATH.") from err
        self._check_classes(len(train.classes))
        self.train_set, self.test_set = self._subset(train), test


class ImageFolderDataModule(_VisionDataModule):
    """``root``/train/<class>/*.jpg and ``root``/test/<class>/*.jpg (torchvision ImageFolder)."""

    def __init__(self, name: str = "image_folder", root: str = "data/images", train_dir: str = "train",
                 test_dir: str = "test", **kwargs) -> None:
        super().__init__(name, root, **kwargs)
        self.train_dir, self.test_dir = train_dir, test_dir

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folders = {split: self.root / d for split, d in (("train", self.train_dir), ("test", self.test_dir))}
        missing = [str(f) for f in folders.values() if not f.is_dir()]
        check(not missing,
              f"data.root={self.root} is not an ImageFolder tree: {', '.join(missing)} missing. "
              f"Expected {self.root}/{self.train_dir}/<class>/<image> and "
              f"{self.root}/{self.test_dir}/<class>/<image> (set data.root, or data.train_dir and "
              f"data.test_dir). The JPEG copy of CIFAR-10 unpacks to such a tree: "
              f"tar xzf cifar10-jpg.tar.gz -C .data/ && python -m dfkd.run data=cifar10_jpg")
        try:
            train = datasets.ImageFolder(str(folders["train"]), transform=self.transform(True))
            test = datasets.ImageFolder(str(folders["test"]), transform=self.transform(False))
        except (FileNotFoundError, RuntimeError) as err:
            raise DfkdError(f"data.root={self.root}: {err}. Each class folder must hold images.") from err
        check(train.classes == test.classes,
              f"data.root={self.root}: the train and test folders hold different classes "
              f"({len(train.classes)} vs {len(test.classes)}); both need the same class folders.")
        self._check_classes(len(train.classes))
        self.train_set, self.test_set = self._subset(train), test
