"""Real data: only for training a teacher, evaluating, and the real-data baselines."""

from dfkd.data.base import ImageDataModule
from dfkd.data.digits import DigitsDataModule

__all__ = ["ImageDataModule", "DigitsDataModule"]
