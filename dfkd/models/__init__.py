"""Architectures. Each conf/model/*.yaml names one of these by ``_target_``."""

from dfkd.models.digits_cnn import DigitsCNN
from dfkd.models.utils import batchnorm_layers, has_batchnorm

__all__ = ["DigitsCNN", "batchnorm_layers", "has_batchnorm"]
