"""Synthetic transfer sets: images dreamed from the teacher alone, served by a DataModule."""

from dfkd.synthesis.base import Synthesizer
from dfkd.synthesis.datamodule import SyntheticDataModule
from dfkd.synthesis.deepinversion import DeepInversion, bn_statistics, image_priors
from dfkd.synthesis.noise import Noise

__all__ = ["Synthesizer", "SyntheticDataModule", "DeepInversion", "Noise",
           "bn_statistics", "image_priors"]
