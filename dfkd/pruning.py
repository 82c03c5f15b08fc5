"""Unstructured pruning of conv and linear weights with torch.nn.utils.prune.

The pruned student keeps torch's ``weight_orig * weight_mask`` parametrization during recovery,
so pruned weights stay exactly zero whatever the optimizer does; ``make_permanent`` folds the masks
in before the student is saved.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from dfkd.errors import DfkdError, check

CRITERIA = {"l1": tprune.L1Unstructured, "random": tprune.RandomUnstructured}
SCOPES = ("global", "layer")


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv and linear layer, by qualified name."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def validate(ratio: float, method: str, scope: str) -> float:
    """The ratio as a number in [0, 1), or a DfkdError that names the setting."""
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise DfkdError(f"pruning.ratio={ratio!r} is not a number: it is the fraction of conv and "
                        f"linear weights set to zero, e.g. pruning.ratio=0.9.") from None
    check(0.0 <= ratio < 1.0,
          f"pruning.ratio={ratio} is outside [0, 1): it is the fraction of conv and linear weights "
          f"set to zero (0.9 keeps one weight in ten).")
    check(method in CRITERIA,
          f"pruning.method={method!r} is unknown; choose one of {sorted(CRITERIA)}.")
    check(scope in SCOPES, f"pruning.scope={scope!r} is unknown; choose one of {list(SCOPES)}.")
    return ratio


def prune(model: nn.Module, ratio: float, method: str = "l1", scope: str = "global") -> nn.Module:
    """Zero ``ratio`` of the conv/linear weights in place: by magnitude (l1) or at random,
    ranked across the whole network (global) or within each layer (layer)."""
    ratio = validate(ratio, method, scope)
    layers = prunable(model)
    check(bool(layers), "The model has no conv or linear layer to prune; check the model setting.")
    model.to(memory_format=torch.contiguous_format)  # a GPU-trained teacher may be channels_last
    if scope == "global":
        tprune.global_unstructured([(m, "weight") for _, m in layers],
                                   pruning_method=CRITERIA[method], amount=ratio)
    else:
        for _, m in layers:
            CRITERIA[method].apply(m, "weight", amount=ratio)
    return model


class Unstructured:
    """What conf/pruning/{magnitude,random}.yaml build: unstructured pruning of every conv and
    linear weight to ``ratio``, by |weight| (l1) or at random, globally or per layer. Refuses a
    bad setting when it is built, before any work."""

    def __init__(self, ratio: float = 0.9, method: str = "l1", scope: str = "global") -> None:
        self.ratio = validate(ratio, method, scope)
        self.method, self.scope = method, scope

    def __call__(self, model: nn.Module) -> nn.Module:
        return prune(model, self.ratio, self.method, self.scope)

    def describe(self) -> str:
        return f"{self.ratio:.0%} {self.method}"

    def settings(self) -> dict:
        return {"pruning_ratio": self.ratio, "pruning_method": self.method, "pruning_scope": self.scope}


def is_masked(module: nn.Module) -> bool:
    return hasattr(module, "weight_mask")


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold masks into the weights (a plain state dict whose zeros are real zeros)."""
    for _, m in prunable(model):
        if is_masked(m):
            tprune.remove(m, "weight")
    return model


def sparsity(model: nn.Module) -> dict:
    """Fraction of exactly-zero weights, per conv/linear layer and over all of them."""
    layers, zeros, total = {}, 0, 0
    for name, m in prunable(model):
        w = m.weight.detach()
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return {"overall": zeros / max(total, 1), "layers": layers, "zeros": zeros, "weights": total}


def check_kept(model: nn.Module, ratio: float, tolerance: float = 1e-3) -> float:
    """Fail loudly if recovery undid the pruning; return the sparsity found."""
    found = sparsity(model)["overall"]
    if found < ratio - tolerance:
        raise DfkdError(
            f"Recovery undid the pruning: sparsity is {found:.4f} after recovery, but "
            f"pruning.ratio={ratio}. The student was not saved as pruned; this is a bug in the "
            f"recovery method (recovery=...), please report it.")
    return found
