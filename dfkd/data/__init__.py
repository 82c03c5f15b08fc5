"""Real data: only for training a teacher, evaluating, and the real-data baselines."""

from dfkd.data.base import ImageDataModule
from dfkd.data.digits import DigitsDataModule
from dfkd.data.vision import CIFARDataModule, ImageFolderDataModule

__all__ = ["ImageDataModule", "DigitsDataModule", "CIFARDataModule", "ImageFolderDataModule"]
