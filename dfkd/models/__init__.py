"""Architectures, built by name from the registry (``model.name``) or by import path (model=custom)."""

from dfkd.models.digits_cnn import DigitsCNN
from dfkd.models.registry import ARCHITECTURES, create, custom
from dfkd.models.utils import batchnorm_layers, captured_inputs, classifier, has_batchnorm, penultimate_features

__all__ = ["ARCHITECTURES", "DigitsCNN", "batchnorm_layers", "captured_inputs", "classifier", "create", "custom",
           "has_batchnorm", "penultimate_features"]
