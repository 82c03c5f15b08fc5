"""Image data sets read by torchvision: CIFAR-10/100 in their standard folders, and any
ImageFolder tree (train/ and test/, one sub-folder per class), such as the JPEG copy of CIFAR-10.

Both keep their images in memory as one uint8 tensor per split (CIFAR-10's train split: 150 MB),
decoded once, so an epoch costs no decoding and no per-image transforms; ``in_memory: false``
decodes an ImageFolder tree image by image instead (for trees too large for memory).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from dfkd.data.base import ImageDataModule
from dfkd.errors import DfkdError, check, first_line

log = logging.getLogger(__name__)

CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), antialiased; unchanged if already so."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class _VisionDataModule(ImageDataModule):
    """Shared: normalization, the usual train-time augmentation (random crop with 4-pixel
    padding, horizontal flip, on the batch's device), an optional train subset for reduced runs."""

    def __init__(self, name: str, root: str, num_classes: int, in_channels: int = 3,
                 image_size: int = 32, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, augment: bool = True,
                 train_subset: int | None = None, **kwargs) -> None:
        super().__init__(name, num_classes, in_channels, image_size, augment=augment, **kwargs)
        self.root = Path(root).expanduser()
        known = CIFAR_STATS.get(name)
        # without data.mean and data.std (and not CIFAR): 0.5 per channel, a guess that strict
        # data-free mode refuses and a loaded teacher is warned about
        if mean is not None or std is not None:
            self.set_normalization(mean, std)  # refused unless both are given
        elif known:
            self.set_normalization(*known)
        else:
            self.normalization = "guessed"
            self.set_normalization((0.5,) * in_channels, (0.5,) * in_channels)
        self.train_subset = train_subset

    def _subset(self, size: int) -> list[int] | None:
        """The train subset's indices: a fixed, class-mixed choice (every k-th image), the same
        for every run; None for the whole split."""
        if not self.train_subset or self.train_subset >= size:
            return None
        step = size / self.train_subset
        return [int(i * step) for i in range(self.train_subset)]

    def _check_classes(self, found: int) -> None:
        check(found == self.num_classes,
              f"data={self.name} at {self.root} has {found} classes, but data.num_classes="
              f"{self.num_classes}; set data.num_classes={found} (a built-in model's output size follows it; "
              f"model=custom: set its own in model.kwargs).")


class CIFARDataModule(_VisionDataModule):
    """torchvision's CIFAR10 / CIFAR100 (``name`` cifar10 or cifar100) under ``root``."""

    def __init__(self, name: str = "cifar10", root: str = "data", download: bool = False, **kwargs) -> None:
        check(name in CIFAR_STATS, f"data.name={name!r}: CIFARDataModule reads cifar10 or cifar100.")
        super().__init__(name, root, **kwargs)
        self.download = download
        self._dataset = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        self._read_splits: dict = {}

    def setup(self, stage: str | None = None) -> None:
        if self._read_splits:
            return
        try:
            train = self._dataset(str(self.root), train=True, download=self.download)
            test = self._dataset(str(self.root), train=False)
        except RuntimeError as err:
            folder = self._dataset.base_folder
            raise DfkdError(
                f"No {self.name.upper()} data under data.root={self.root} (expected {self.root / folder}/, "
                f"the folder torchvision's {self._dataset.__name__} reads). Set data.download=true "
                f"to download it there, or point data.root at the folder that holds {folder}/; "
                f"for an ImageFolder tree (train/ and test/ with a folder per class) use "
                f"data=image_folder data.root=PATH.") from err
        self._check_classes(len(train.classes))
        self._read_splits = {"train": train, "test": test}

    def read(self, split: str) -> TensorDataset:
        found = self._read_splits[split]
        images = torch.from_numpy(found.data).permute(0, 3, 1, 2)  # NHWC -> NCHW
        labels = torch.tensor(found.targets, dtype=torch.long)
        keep = self._subset(len(images)) if split == "train" else None
        if keep is not None:
            images, labels = images[keep], labels[keep]
        return TensorDataset(resize(images.contiguous(), self.image_size), labels)


def _is_image(path: str) -> bool:
    """A file ImageFolder lists: torchvision's image extensions, and GIF (which ``decode`` reads)."""
    return path.lower().endswith((*IMG_EXTENSIONS, ".gif"))


def _read_with_pil(path: str) -> torch.Tensor:
    """The formats torchvision's decoder leaves out (BMP, TIFF, PPM/PGM, ...), through Pillow:
    (C, H, W), uint8, or uint16 for 16-bit grey images."""
    with Image.open(path) as image:
        if image.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" holding 16-bit values)
            pixels = np.asarray(image, dtype=np.int32).clip(0, 65535).astype(np.uint16)[None]
            return torch.from_numpy(pixels.copy())
        pixels = np.asarray(image.convert("RGB" if image.mode not in ("L", "1") else "L"))
    return torch.from_numpy(pixels.copy()).reshape(*pixels.shape[:2], -1).permute(2, 0, 1)


def decode(path: str, channels: int) -> torch.Tensor:
    """The image file at ``path`` as uint8 (``channels``, H, W), whatever its format (torchvision's
    decoder, or Pillow for the formats it lacks), bit depth (16-bit images scaled to 8 bits) and
    colour type (grey, colour and alpha converted to grey or colour as asked, palettes expanded)."""
    try:
        image = decode_image(read_file(path), mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except RuntimeError as err:
        if "Unsupported image file" not in str(err):
            raise
        image = _read_with_pil(path)
    if image.dtype == torch.uint16:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    if image.shape[0] in (2, 4):  # grey or colour with an alpha channel: the alpha is dropped
        image = image[:-1]
    if image.shape[0] == 3 and channels == 1:
        image = TF.rgb_to_grayscale(image)
    elif image.shape[0] == 1 and channels == 3:
        image = TF.grayscale_to_rgb(image)
    return image


class _DecodedFolder(Dataset):
    """ImageFolder's (path, label) list, decoded to uint8 (C, H, W) tensors of one size."""

    def __init__(self, folder: datasets.ImageFolder, channels: int, size: int) -> None:
        self.samples, self.size, self.channels = folder.samples, size, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            image = decode(path, self.channels)
        except (RuntimeError, ValueError, OSError) as err:
            raise DfkdError(f"{path} could not be read as an image ({first_line(err)}). Remove or replace it "
                            f"(data.root holds the tree).") from err
        return resize(image.unsqueeze(0), self.size)[0], label

    def decode(self, indices: list[int] | None = None) -> TensorDataset:
        """Every image (or those at ``indices``) as one uint8 tensor, with the labels."""
        indices = range(len(self)) if indices is None else indices
        images = torch.stack([self[i][0] for i in indices])
        return TensorDataset(images, torch.tensor([self.samples[i][1] for i in indices], dtype=torch.long))


class ImageFolderDataModule(_VisionDataModule):
    """``root``/train/<class>/*.jpg and ``root``/test/<class>/*.jpg (torchvision ImageFolder).
    ``in_memory``: decode each split once into one tensor, when it is first used (a run with a
    cached teacher never decodes the train split); false: decode image by image, every epoch."""

    def __init__(self, name: str = "image_folder", root: str = "data/images", train_dir: str = "train",
                 test_dir: str = "test", in_memory: bool = True, **kwargs) -> None:
        super().__init__(name, root, **kwargs)
        self.train_dir, self.test_dir, self.in_memory = train_dir, test_dir, bool(in_memory)
        self._folders: dict[str, _DecodedFolder] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._folders:
            return
        folders = {split: self.root / d for split, d in (("train", self.train_dir), ("test", self.test_dir))}
        if folders["test"].is_dir() and not folders["train"].is_dir():
            del folders["train"]  # a held-out set alone serves a data-free run; a stage that needs train says so
        missing = [str(f) for f in folders.values() if not f.is_dir()]
        check(not missing,
              f"data.root={self.root} is not an ImageFolder tree: {', '.join(missing)} missing. "
              f"Expected {self.root}/{self.train_dir}/<class>/<image> and "
              f"{self.root}/{self.test_dir}/<class>/<image> (set data.root, or data.train_dir and "
              f"data.test_dir). The JPEG copy of CIFAR-10 unpacks to such a tree: "
              f"tar xzf cifar10-jpg.tar.gz -C .data/ && python -m dfkd.run data=cifar10_jpg")
        try:
            found = {split: datasets.ImageFolder(str(f), loader=str, is_valid_file=_is_image)
                     for split, f in folders.items()}
        except (FileNotFoundError, RuntimeError) as err:
            raise DfkdError(f"data.root={self.root}: {err}. Each class folder must hold images.") from err
        if "train" in found:
            check(found["train"].classes == found["test"].classes,
                  f"data.root={self.root}: the train and test folders hold different classes "
                  f"({len(found['train'].classes)} vs {len(found['test'].classes)}); both need the same "
                  f"class folders.")
        self._check_classes(len(found["test"].classes))
        self._folders = {split: _DecodedFolder(f, self.in_channels, self.image_size)
                         for split, f in found.items()}

    def read(self, split: str) -> Dataset:
        check(split in self._folders,
              f"data.root={self.root} has no {self.train_dir}/ folder, but this run reads the train split: to "
              f"train the teacher (give teacher.checkpoint=PATH), for a recovery on real images (recovery=dream_kd "
              f"needs none), or for a validation split (data.val_size=0 needs none). Add the folder, or point "
              f"data.train_dir at it.")
        folder = self._folders[split]
        keep = self._subset(len(folder)) if split == "train" else None
        if not self.in_memory:
            return folder if keep is None else Subset(folder, keep)
        start = time.perf_counter()
        decoded = folder.decode(keep)
        log.info("Decoded the %s split of %s into memory: %d images in %.1f s.", split, self.root,
                 len(decoded), time.perf_counter() - start)
        return decoded
