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
        self.scores = {m: score.cpu() for m, score in self.scores.items()}  # ranked on the CPU, as the root's indices

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """Per channel of the group's root layer: the mean score of its BatchNorm layers (of its conv
        and linear layers where no BatchNorm layer holds the channel), on one scale by ``normalizer``."""
        size = len(group[0].idxs)
        sums = {kind: (torch.zeros(size), torch.zeros(size)) for kind in ("bn", "layer")}
        for item in group:
            dep, idxs, root = item.dep, item.idxs, item.root_idxs
            kind = "bn" if dep.pruning_fn in BATCHNORM_OUT else "layer" if dep.pruning_fn in LAYER_OUT else None
            if kind is None or dep.layer not in self.scores or any(r is None for r in root):
                continue
            total, seen = sums[kind]
            where = torch.as_tensor(root, dtype=torch.long)
            total.index_add_(0, where, self.scores[dep.layer][list(idxs)])  # idxs align with root
            seen.index_add_(0, where, torch.ones(len(where)))
        (bn, bn_seen), (layer, layer_seen) = sums["bn"], sums["layer"]
        if not (bn_seen.any() or layer_seen.any()):
            return None
        imp = torch.where(bn_seen > 0, bn / bn_seen.clamp_min(1), layer / layer_seen.clamp_min(1))
        return self._normalize(imp, self.normalizer)
