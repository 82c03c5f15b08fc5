"""N:M semi-structured sparsity (conf/pruning/nm.yaml): in every group of M consecutive weights
along a layer's input channels, only the N largest stay (2:4 by default: what sparse tensor cores
of Ampere and later GPUs run at up to twice the dense speed). For a convolution the groups run along
its input channels at each kernel position (NVIDIA ASP's layout), for a linear layer along its
inputs. Depthwise convolutions (one input channel per group) are no matrix product for those
cores and stay dense.

What it buys: 1 - N/M of the weights gone in a pattern GPUs accelerate; on a CPU, nothing."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from dfkd.errors import DfkdError, check
from dfkd.pruning.common import Pruner, is_depthwise, targets, undone

log = logging.getLogger(__name__)


def as_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """The weight's values as rows of ``m`` consecutive input channels: (-1, m)."""
    if weight.dim() > 2:  # (out, in, *kernel) -> (out, *kernel, in)
        weight = weight.movedim(1, -1)
    return weight.reshape(-1, m)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """1 for the ``n`` largest |w| of each group of ``m`` input channels, 0 elsewhere."""
    groups = as_groups(weight.detach().abs(), m)
    keep = torch.zeros_like(groups).scatter_(1, groups.topk(n, dim=1).indices, 1.0)
    if weight.dim() > 2:
        shape = (weight.shape[0], *weight.shape[2:], weight.shape[1])
        return keep.reshape(shape).movedim(-1, 1).contiguous()
    return keep.reshape(weight.shape)


class NM(Pruner):
    """N:M sparsity of every conv and linear layer but ``keep_dense`` (and depthwise convolutions)."""

    def __init__(self, n: int = 2, m: int = 4, keep_dense=("first",), ratio: float | None = None) -> None:
        check(isinstance(n, int) and isinstance(m, int) and 0 < n < m,
              f"pruning.n={n!r} and pruning.m={m!r} must be whole numbers with 0 < n < m (2:4 is what GPUs accelerate).")
        super().__init__(1 - n / m, keep_dense)
        if ratio is not None and abs(float(ratio) - self.ratio) > 1e-6:  # e.g. an experiment file's 0.9
            log.warning("pruning=nm prunes 1 - n/m = %.0f%% of each pruned layer; pruning.ratio=%s does not "
                        "apply (set pruning.n and pruning.m).", 100 * self.ratio, ratio)
        self.n, self.m = n, m

    def pruned_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The layers it prunes; one whose input width M does not divide is refused by name."""
        layers = [(name, mod) for name, mod in targets(model, self.keep_dense, self.order) if not is_depthwise(mod)]
        check(bool(layers), "Every layer left to prune is depthwise or in pruning.keep_dense: nothing to prune.")
        odd = [f"{name} ({mod.weight.shape[1]} inputs)" for name, mod in layers if mod.weight.shape[1] % self.m]
        if odd:
            raise DfkdError(f"pruning=nm groups {self.m} input channels at a time (pruning.m={self.m}), which does "
                            f"not divide {', '.join(odd)}: leave these dense (pruning.keep_dense=[...], 'first' is "
                            f"the first layer) or choose a pruning.m that divides them.")
        return layers

    def __call__(self, model, example=None, ratio=None, dreams=None):
        self.learn_order(model, example)
        model.to(memory_format=torch.contiguous_format)
        for _, mod in self.pruned_layers(model):
            tprune.custom_from_mask(mod, "weight", nm_mask(mod.weight, self.n, self.m))
        return model

    def check_kept(self, model):
        """Every group of M weights of a pruned layer holds at most N non-zeros."""
        for name, mod in self.pruned_layers(model):
            worst = int((as_groups(mod.weight.detach(), self.m) != 0).sum(1).max())
            if worst > self.n:
                raise undone(f"layer {name} has a group of {self.m} weights with {worst} non-zeros, more than "
                             f"pruning.n={self.n}")
        return super().check_kept(model)

    def describe(self) -> str:
        return f"{self.n}:{self.m}"

    def settings(self) -> dict:
        return {"pruning_ratio": self.ratio, "pruning_method": f"{self.n}:{self.m}", "pruning_scope": "group",
                "pruning_keep_dense": self.keep_dense}
