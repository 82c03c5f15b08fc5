"""The BatchNorm-statistics loss of DeepInversion: one forward hook per BatchNorm layer that
measures how far the batch statistics of its input are from the layer's running statistics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from dfkd.models import batchnorm_layers


class BNStatsHook:
    """Forward hook on one BatchNorm layer: distance of the batch statistics of its input
    to the layer's running statistics."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        self.loss: torch.Tensor | None = None
        self.handle = bn.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        x = inputs[0].float()  # statistics in fp32, also under mixed precision
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self.loss = (torch.linalg.vector_norm(mean - module.running_mean)
                     + torch.linalg.vector_norm(var - module.running_var))

    def remove(self) -> None:
        self.handle.remove()


@contextlib.contextmanager
def bn_statistics(model: nn.Module) -> Iterator[list[BNStatsHook]]:
    """Hooks on every BatchNorm layer of ``model``, removed on exit whatever happens."""
    hooks = [BNStatsHook(bn) for bn in batchnorm_layers(model)]
    try:
        yield hooks
    finally:
        for hook in hooks:
            hook.remove()


def bn_loss(hooks: list[BNStatsHook], first_multiplier: float = 1.0) -> torch.Tensor:
    """The mean over BatchNorm layers (the first one weighted ``first_multiplier``), so that one
    ``bn_weight`` suits a 3-layer CNN and a 53-layer ResNet-50 alike. (The papers sum over layers:
    their weight w is ``bn_weight = w * number of BN layers`` here.)"""
    losses = [h.loss for h in hooks if h.loss is not None]
    return (first_multiplier * losses[0] + sum(losses[1:])) / len(losses)
