"""Synthetic transfer sets: images dreamed from the teacher alone, served by a DataModule."""

from dfkd.synthesis.base import Synthesizer, dream, make_synthesizer
from dfkd.synthesis.bn_stats import bn_loss, bn_statistics
from dfkd.synthesis.datamodule import SynthesisMonitor, SyntheticDataModule
from dfkd.synthesis.deepinversion import DeepInversion, image_priors, js_divergence
from dfkd.synthesis.fast import FastSynthesizer, Generator
from dfkd.synthesis.noise import Noise

__all__ = ["Synthesizer", "dream", "make_synthesizer",
           "SynthesisMonitor", "SyntheticDataModule", "DeepInversion", "FastSynthesizer", "Generator",
           "Noise", "bn_loss", "bn_statistics", "image_priors", "js_divergence"]
