"""Unstructured pruning (conf/pruning/magnitude.yaml, random.yaml, iterative.yaml): single weights
set to zero with torch.nn.utils.prune, by |weight| or at random, over the whole network, per
layer, or over the whole network by LAMP scores (Lee et al., ICLR 2021: each weight's square over the
sum of the squares of its layer's weights at least as large), which rank weights of different
layers on one scale, so deep wide layers are not emptied the way a global |weight| threshold
empties them. The student keeps torch's ``weight_orig * weight_mask`` parametrization during recovery, so
pruned weights stay exactly zero whatever the optimizer does.

What it buys: a smaller file once compressed (zeros compress) and sparse kernels where a runtime
has them; dense kernels run it exactly as fast as the teacher."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from dfkd.errors import check, check_choice
from dfkd.pruning.common import Pruner, check_no_layer_removed, check_ratio, make_permanent, targets

CRITERIA = {"l1": tprune.L1Unstructured, "random": tprune.RandomUnstructured}
SCOPES = ("global", "layer", "lamp")


def prune(model: nn.Module, ratio: float, method: str = "l1", scope: str = "lamp", keep_dense=(),
          order: list[str] | None = None) -> nn.Module:
    """Zero ``ratio`` of the conv/linear weights in place: by magnitude (l1) or at random, ranked
    across the whole network (global), within each layer (layer), or across the whole network by
    LAMP score (lamp, l1 only); ``keep_dense`` layers stay dense (``order``: run_order's, for
    'first' and 'last')."""
    ratio = check_ratio(ratio)
    check_method_and_scope(method, scope)
    layers = targets(model, keep_dense, order)
    model.to(memory_format=torch.contiguous_format)  # a GPU-trained teacher may be channels_last
    if scope in ("global", "lamp"):
        scores = {(m, "weight"): lamp_scores(m.weight) for _, m in layers} if scope == "lamp" else None
        tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=CRITERIA[method],
                                   importance_scores=scores, amount=ratio)
    else:
        for _, m in layers:
            CRITERIA[method].apply(m, "weight", amount=ratio)
    other = "pruning.scope=layer" if scope == "lamp" else \
        "pruning.scope=layer, or pruning.scope=lamp, which keeps each layer's largest weight"
    check_no_layer_removed(model, ratio, f"lower pruning.ratio, set {other}, or leave that layer dense "
                           f"(pruning.keep_dense=[...]).")
    return model


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP scores of one layer's weights (Lee et al., "Layer-adaptive sparsity for the
    magnitude-based pruning", ICLR 2021): with the weights sorted by |w|, each one's w^2 over the sum
    of w^2 of itself and every larger weight. Within a layer they rank as |w| does; across layers
    they are comparable, and the layer's largest weight scores 1, so a layer with any non-zero weight
    keeps at least one (unless fewer weights are kept than there are layers)."""
    squares = weight.detach().flatten().float().pow(2)
    ranked, order = torch.sort(squares, stable=True)  # stable: ties break the same on every device
    tails = ranked.flip(0).cumsum(0).flip(0)  # sum of the squares from each weight up to the largest
    scores = torch.empty_like(squares)
    scores[order] = ranked / tails.clamp_min(torch.finfo(torch.float32).tiny)
    return scores.view_as(weight)


def check_method_and_scope(method: str, scope: str) -> None:
    check_choice("pruning.method", method, sorted(CRITERIA))
    check_choice("pruning.scope", scope, SCOPES)
    check(scope != "lamp" or method == "l1", f"pruning.scope=lamp ranks weights by magnitude: it needs "
          f"pruning.method=l1 (got {method!r}); random pruning takes pruning.scope=global or layer.")


class Unstructured(Pruner):
    """Unstructured pruning of every conv and linear weight (but ``keep_dense``) to ``ratio``, by
    |weight| (l1) or at random, by LAMP score across the network (lamp, l1 only), globally or per layer."""

    def __init__(self, ratio: float = 0.9, method: str = "l1", scope: str = "lamp", keep_dense=()) -> None:
        super().__init__(ratio, keep_dense)
        check_method_and_scope(method, scope)
        self.method, self.scope = method, scope

    def __call__(self, model, example=None, ratio=None, dreams=None):
        self.learn_order(model, example)
        return prune(model, self.ratio if ratio is None else ratio, self.method, self.scope, self.keep_dense,
                     self.order)

    def label(self) -> str:
        """The method as tables name it: l1 (global), l1 layer, l1 lamp, random, ..."""
        return self.method if self.scope == "global" else f"{self.method} {self.scope}"

    def describe(self) -> str:
        return f"{self.ratio:.0%} {self.label()}"

    def settings(self) -> dict:
        return {"pruning_ratio": self.ratio, "pruning_method": self.label(), "pruning_scope": self.scope,
                "pruning_keep_dense": self.keep_dense}


class Iterative(Unstructured):
    """The final ratio in ``rounds`` steps (Zhu & Gupta's cubic schedule, or linear), with a
    recovery after each round; the rounds share the recovery's budget of KD steps. Each round
    prunes by magnitude to its ratio of the whole network: the zeros of earlier rounds are the
    smallest weights (their LAMP scores are 0 too), so they stay pruned."""

    def __init__(self, ratio: float = 0.9, method: str = "l1", scope: str = "lamp", keep_dense=(),
                 rounds: int = 3, schedule: str = "cubic") -> None:
        check(method == "l1", f"pruning=iterative needs pruning.method=l1 (got {method!r}): random re-pruning "
              f"would bring pruned weights back.")
        super().__init__(ratio, method, scope, keep_dense)
        self.in_rounds(rounds, schedule)

    def __call__(self, model, example=None, ratio=None, dreams=None):
        return super().__call__(make_permanent(model), example, ratio)

    def describe(self) -> str:
        return f"{self.ratio:.0%} {self.label()}{self.rounds_phrase()}"

    def settings(self) -> dict:
        return {**super().settings(), "pruning_method": f"{self.label()} {self.rounds_label()}",
                **self.rounds_settings()}
