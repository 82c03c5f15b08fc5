"""The BatchNorm-statistics loss of DeepInversion: one forward hook per BatchNorm layer that
measures how far the batch statistics of its input are from the layer's running statistics.

Two distances per layer (``distance``):

- ``normalized`` (dfkd's default): each channel's mean offset in units of its running standard
  deviation and its variance error relative to its running variance, each as a root mean square
  over the channels. It is unitless and does not grow with the channel count, so one weight means
  the same on a 16-channel digits CNN and on ResNet-50's 2,048-channel layers.
- ``l2`` (the papers'): ``||mean - running_mean||_2 + ||var - running_var||_2``, which grows with
  the channel count and with the scale of the layer's activations.

With ``history`` (Fang et al.'s BN momentum, AAAI 2022) the batch's statistics are first blended
with an exponential moving average of the earlier batches' (``momentum`` x history + (1 - momentum)
x this batch): it is the stream of batches, not each batch alone, that must match the running
statistics, so one batch may leave part of the distribution to the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from dfkd.models import batchnorm_layers

DISTANCES = ("normalized", "l2")


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


def moving_average(old: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    return momentum * old + (1 - momentum) * new


def normalized_distance(mean: torch.Tensor, var: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """The ``normalized`` distance of per-channel statistics (mean, var) from ``bn``'s running ones."""
    scale = bn.running_var.float() + bn.eps
    return rms((mean - bn.running_mean.float()) / scale.sqrt()) + rms((var - bn.running_var.float()) / scale)


class BNStatsHook:
    """Forward hook on one BatchNorm layer: distance of the batch statistics of its input
    to the layer's running statistics."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, distance: str = "normalized",
                 history: tuple[torch.Tensor, torch.Tensor] | None = None, momentum: float = 0.0) -> None:
        self.loss: torch.Tensor | None = None
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the last batch's (mean, var)
        self.distance, self.history, self.momentum = distance, history, momentum
        self.handle = bn.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        x = inputs[0].float()  # statistics in fp32, also under mixed precision
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        # the spread about the batch mean held constant: the variance's value and gradient, as
        # exact as x.var's, and a tenth of a synthesis step faster on the CPU (forward and backward)
        var = (x - mean.detach().view(1, -1, *[1] * (x.dim() - 2))).square().mean(dims)
        self.batch = (mean.detach(), var.detach())
        if self.history is not None:
            mean = moving_average(self.history[0].to(mean), mean, self.momentum)
            var = moving_average(self.history[1].to(var), var, self.momentum)
        running_mean, running_var = module.running_mean.float(), module.running_var.float()
        if self.distance == "l2":
            self.loss = (torch.linalg.vector_norm(mean - running_mean)
                         + torch.linalg.vector_norm(var - running_var))
        else:
            self.loss = normalized_distance(mean, var, module)

    def remove(self) -> None:
        self.handle.remove()


@contextlib.contextmanager
def bn_statistics(model: nn.Module, distance: str = "normalized", history: list | None = None,
                  momentum: float = 0.0) -> Iterator[list[BNStatsHook]]:
    """Hooks on every BatchNorm layer of ``model``, removed on exit whatever happens; ``history``:
    one (mean, var) per layer to blend the batch statistics with (see the module's docstring)."""
    layers = batchnorm_layers(model)
    history = history if history is not None and momentum > 0 else [None] * len(layers)
    hooks = [BNStatsHook(bn, distance, past, momentum) for bn, past in zip(layers, history)]
    try:
        yield hooks
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def input_statistics(model: nn.Module) -> Iterator[Callable[[], list[float]]]:
    """Every BatchNorm layer's input statistics over all the forward passes inside the block (all
    the batches together, not each alone); yields a function that gives, per layer, their
    ``normalized`` distance from the layer's running statistics (empty without BatchNorm). On real
    images of the training distribution it is small; normalized or sized otherwise, it grows."""
    layers = batchnorm_layers(model)
    sums = [[0, 0.0, 0.0] for _ in layers]

    def hook(index: int):
        def add(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
            x = inputs[0].to(torch.float32 if inputs[0].device.type == "mps" else torch.float64)  # MPS has no fp64
            dims = [0, *range(2, x.dim())]
            count = x.numel() // x.shape[1]
            sums[index][0] += count
            sums[index][1] = sums[index][1] + x.sum(dims)
            sums[index][2] = sums[index][2] + x.square().sum(dims)
        return add

    def distances() -> list[float]:
        found = []
        for (count, total, squares), bn in zip(sums, layers):
            if count:
                mean = total / count
                var = squares / count - mean.square()
                found.append(normalized_distance(mean.float(), var.float(), bn).item())
        return found

    handles = [bn.register_forward_hook(hook(i)) for i, bn in enumerate(layers)]
    try:
        yield distances
    finally:
        for handle in handles:
            handle.remove()


def bn_loss(hooks: list[BNStatsHook], first_multiplier: float = 1.0) -> torch.Tensor:
    """The mean over BatchNorm layers (the first one weighted ``first_multiplier``), so that one
    ``bn_weight`` suits a 3-layer CNN and a 53-layer ResNet-50 alike. (The papers sum over layers:
    their weight w is ``bn_weight = w * number of BN layers`` here, with ``distance: l2``.)"""
    losses = [h.loss for h in hooks if h.loss is not None]
    return (first_multiplier * losses[0] + sum(losses[1:])) / len(losses)


def updated_history(hooks: list[BNStatsHook], history: list | None, momentum: float) -> list:
    """The moving average of the batch statistics after one more batch: the last batch's alone
    when there is no history yet."""
    now = [h.batch for h in hooks]
    if history is None:
        return now
    return [(moving_average(m, nm, momentum), moving_average(v, nv, momentum))
            for (m, v), (nm, nv) in zip(history, now)]
