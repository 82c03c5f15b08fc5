"""Molchanov et al.'s Taylor importance (CVPR 2019, "Importance Estimation for Neural Network
Pruning") on dreams, for structured pruning (``pruning.importance=taylor``).

Removing a channel changes the loss by about the first-order term of its Taylor expansion: for
the gate a BatchNorm layer's output channel passes through, gamma * dL/dgamma + beta * dL/dbeta.
On a trained network the mean gradient is close to zero, so the paper squares that estimate per
minibatch and sums the squares over minibatches; we do the same, on minibatches of images dreamed
from the teacher, each labelled by the teacher's own class. A channel group with no BatchNorm
layer falls back to the conv or linear layer's output weights (sum of weight x gradient). The
scores are computed afresh (``accumulate``) before every step of the pruning, and torch-pruning
ranks channels with them (``__call__``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

SCORED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
MINIBATCH = 64  # dreams per squared estimate (the paper's minibatch)
BATCHNORM_OUT = (function.prune_batchnorm_out_channels,)
LAYER_OUT = (function.prune_conv_out_channels, function.prune_depthwise_conv_out_channels,
             function.prune_linear_out_channels)


def first_order(module: nn.Module) -> torch.Tensor | None:
    """Per output channel, the first-order change of the loss if the channel were zeroed (from the
    gradients now in ``.grad``): a BatchNorm layer's gate, or a conv or linear layer's weights."""
    if module.weight is None or module.weight.grad is None:
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        change = module.weight * module.weight.grad
    else:
        w, g = module.weight, module.weight.grad
        if getattr(module, "transposed", False):
            w, g = w.transpose(0, 1), g.transpose(0, 1)
        change = (w * g).flatten(1).sum(1)
    if module.bias is not None and module.bias.grad is not None:
        change = change + module.bias * module.bias.grad
    return change.detach()


class TaylorImportance(tp.importance.GroupMagnitudeImportance):
    """torch-pruning's importance interface over Taylor scores that ``accumulate`` computes on
    (images, classes); the scores of a group's BatchNorm layers (else of its conv and linear
    layers) are averaged over the layers and put on one scale by ``normalizer``."""

    def __init__(self, normalizer: str = "mean") -> None:
        super().__init__(p=1, group_reduction="mean", normalizer=normalizer)
        self.scores: dict[nn.Module, torch.Tensor] = {}

    def accumulate(self, model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> None:
        """The summed squared estimates of every layer's output channels, over minibatches of
        ``images`` labelled ``classes``; ``model`` in eval mode (its BatchNorm statistics stay)."""
        device = next(model.parameters()).device
        layers = [m for m in model.modules() if isinstance(m, SCORED)]
        self.scores = {}
        for x, y in zip(images.split(MINIBATCH), classes.split(MINIBATCH)):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            for m in layers:
                change = first_order(m)
                if change is not None:
                    self.scores[m] = self.scores.get(m, 0) + change.float() ** 2
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        found = {"bn": ([], []), "layer": ([], [])}
        for i, (dep, idxs) in enumerate(group):
            kind = ("bn" if dep.pruning_fn in BATCHNORM_OUT else "layer" if dep.pruning_fn in LAYER_OUT else None)
            if kind is None or dep.layer not in self.scores:
                continue
            found[kind][0].append(self.scores[dep.layer][list(idxs)])  # aligned with root_idxs
            found[kind][1].append(group[i].root_idxs)
        imp, idxs = found["bn"] if found["bn"][0] else found["layer"]
        if not imp:
            return None
        return self._normalize(self._reduce(imp, idxs), self.normalizer)
