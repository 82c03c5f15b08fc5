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
def captured_inputs(modules: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """The first input of each of ``modules``, in the order the forward pass reaches them; the
    hooks are gone afterwards (a saved or exported student carries none)."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda module, args, out: seen.append(args[0])) for m in modules]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def penultimate_features(model: nn.Module) -> contextlib.AbstractContextManager[list[torch.Tensor]]:
    """The inputs of ``model``'s last Linear layer (its penultimate features), one tensor per
    forward pass inside; none when the model has no Linear layer."""
    head = classifier(model)
    return captured_inputs([head] if head is not None else [])
