"""dfkd: recover the accuracy of pruned networks without the training data."""

__version__ = "0.1.0"
