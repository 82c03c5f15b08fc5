from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that track running statistics (what DeepInversion matches)."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_layers(model))


def classifier(model: nn.Module) -> nn.Linear | None:
    """The model's last Linear layer (whose input is its penultimate features), or None."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return heads[-1] if heads else None


@contextlib.contextmanager
def penultimate_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The inputs of ``model``'s last Linear layer (its penultimate features), one tensor per
    forward pass inside; none when the model has no Linear layer."""
    features: list[torch.Tensor] = []
    head = classifier(model)
    handle = head.register_forward_hook(lambda m, i, o: features.append(i[0])) if head is not None else None
    try:
        yield features
    finally:
        if handle is not None:
            handle.remove()
