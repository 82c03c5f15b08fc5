"""What every pruning method shares: the prunable layers, the layers left dense, the sparsity
report, and torch's mask parametrization made permanent before the student is saved."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from dfkd.errors import DfkdError, check, check_choice

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
ALIASES = ("first", "last")  # keep_dense: the first and the last conv/linear layer, whatever their names
SCHEDULES = ("cubic", "linear")  # how prune-recover rounds approach the final ratio


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv and linear layer, by qualified name, in the order the model lists them."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAYERS)]


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise convolution: one filter per input channel, so it follows its input's channels."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.in_channels == module.groups


def run_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The names of the conv and linear layers that a forward pass on ``example`` reaches, in the
    order it first reaches them (not the order the model lists them: a model may declare its
    classifier first). The pass runs in eval mode, so no running statistics move."""
    names = {m: n for n, m in prunable(model)}
    ran: list[str] = []

    def seen(module, inputs, output):
        if names[module] not in ran:
            ran.append(names[module])

    hooks = [m.register_forward_hook(seen) for m in names]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return ran


def dense_names(model: nn.Module, keep_dense, order: list[str] | None = None) -> set[str]:
    """The layer names ``pruning.keep_dense`` means on this model ('first' and 'last' resolved: the
    first and the last layer to run, by ``order`` (run_order), else as the model lists them); a
    name that is not a conv or linear layer of the model is refused with the valid names."""
    names = [n for n, _ in prunable(model)]
    ran = order or names
    found = set()
    for name in keep_dense or ():
        if name in ALIASES:
            check(bool(names), "The model has no conv or linear layer to prune; check the model setting.")
            found.add(ran[0] if name == "first" else ran[-1])
            continue
        check(name in names, f"pruning.keep_dense names {name!r}, which is not a conv or linear layer of the "
              f"model; give 'first', 'last' or names among: {', '.join(names)}.")
        found.add(name)
    return found


def targets(model: nn.Module, keep_dense, order: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The layers a method prunes: every conv and linear layer but those left dense."""
    dense = dense_names(model, keep_dense, order)
    layers = [(n, m) for n, m in prunable(model) if n not in dense]
    check(bool(layers), f"Nothing is left to prune: pruning.keep_dense={list(keep_dense or [])} keeps every "
          f"conv and linear layer dense.")
    return layers


def check_ratio(ratio, what: str = "the fraction of conv and linear weights set to zero") -> float:
    """``pruning.ratio`` as a number in [0, 1), or a DfkdError that names the setting."""
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise DfkdError(f"pruning.ratio={ratio!r} is not a number: it is {what}, e.g. pruning.ratio=0.9.") from None
    check(0.0 <= ratio < 1.0, f"pruning.ratio={ratio} is outside [0, 1): it is {what} (0.9 keeps one in ten).")
    return ratio


def round_ratios(ratio: float, rounds: int = 1, kind: str = "cubic") -> list[float]:
    """The ratios ``rounds`` prune-recover rounds pass through to ``ratio``: Zhu & Gupta's cubic
    schedule (big steps first) or a linear one; one round is one-shot pruning."""
    check(isinstance(rounds, int) and rounds >= 1, f"pruning.rounds={rounds!r} must be a whole number >= 1.")
    check_choice("pruning.schedule", kind, SCHEDULES)
    if kind == "linear":
        return [ratio * (i + 1) / rounds for i in range(rounds)]
    return [ratio * (1 - (1 - (i + 1) / rounds) ** 3) for i in range(rounds)]


def check_no_layer_removed(model: nn.Module, ratio: float, hint: str) -> None:
    """A pruned layer whose every weight is zero is removed for good (its outputs no longer depend
    on its inputs, and masked weights never come back): refuse it, naming the layer."""
    for name, m in prunable(model):
        if is_masked(m) and not bool(m.weight_mask.any()):
            raise DfkdError(f"pruning.ratio={ratio} removes every weight of layer {name}: its outputs would no "
                            f"longer depend on its inputs, and recovery cannot bring it back: {hint}")


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


def undone(what: str) -> DfkdError:
    return DfkdError(f"Recovery undid the pruning: {what}. The student was not saved as pruned; this is a "
                     f"bug in the recovery method (recovery=...), please report it.")


class Pruner:
    """The interface conf/pruning/*.yaml build (``_target_``): refuse bad settings when built,
    check them on the architecture before any work (``validate``), prune a model in place
    (``__call__``), and check after recovery that the pattern is still there (``check_kept``).
    ``rounds`` are the ratios a schedule of prune-recover rounds passes through (one for one-shot)."""

    structured = False  # True: the student is a smaller network, not a masked copy of the teacher
    dreams = 0  # > 0: the pipeline dreams that many images from the teacher for __call__ to rank on

    def __init__(self, ratio: float = 0.9, keep_dense=()) -> None:
        self.ratio = check_ratio(ratio)
        self.keep_dense = list(keep_dense or [])
        self.order: list[str] | None = None  # the layers in the order they run (keep_dense's first and last)
        self.in_rounds(1)

    def learn_order(self, model: nn.Module, example: torch.Tensor | None) -> None:
        """Note the order ``model``'s layers run in (the names stay the same in every student)."""
        if example is not None and self.keep_dense:
            self.order = run_order(model, example)

    def in_rounds(self, rounds: int, schedule: str = "cubic") -> None:
        """Reach ``ratio`` in ``rounds`` prune-recover rounds of the ``schedule`` (pruning.rounds,
        pruning.schedule)."""
        self._rounds, self.schedule = round_ratios(self.ratio, rounds, schedule), schedule

    def rounds_label(self) -> str:
        return f"{len(self._rounds)}x{self.schedule}"

    def rounds_phrase(self) -> str:
        """' in 3 cubic rounds' for a schedule of rounds, '' for one-shot pruning."""
        return f" in {len(self._rounds)} {self.schedule} rounds" if len(self._rounds) > 1 else ""

    def rounds_settings(self) -> dict:
        return {"pruning_rounds": [round(r, 4) for r in self._rounds]}

    def validate(self, model: nn.Module, example: torch.Tensor) -> None:
        """Refuse what cannot work on this (untrained) architecture."""
        self.learn_order(model, example)
        self.pruned_layers(model)

    def __call__(self, model: nn.Module, example: torch.Tensor | None = None, ratio: float | None = None,
                 dreams: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
        """Prune ``model`` in place to ``ratio`` (the schedule's round; None: the final ratio).
        ``dreams``: (images, target classes) dreamed from the teacher, for methods that ask for them."""
        raise NotImplementedError

    def rounds(self) -> list[float]:
        return self._rounds

    def pruned_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return targets(model, self.keep_dense, self.order)

    def check_kept(self, model: nn.Module) -> float:
        """Fail loudly if recovery undid the pruning; return the sparsity of the layers it pruned."""
        layers = self.pruned_layers(model)
        zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
        found = zeros / sum(m.weight.numel() for _, m in layers)
        if found < self.ratio - 1e-3:
            raise undone(f"sparsity is {found:.4f} after recovery, but pruning.ratio={self.ratio}")
        return found

    def describe(self) -> str:
        raise NotImplementedError

    def settings(self) -> dict:
        raise NotImplementedError
