"""Structured (channel) pruning (conf/pruning/structured.yaml) with torch-pruning's dependency
graph: whole channels leave every layer that shares them (residual additions, depthwise
convolutions and concatenations included), until the student has ``ratio`` fewer FLOPs (or
parameters) than the teacher. The student is a genuinely smaller network: every layer is thinner,
so it runs faster on any hardware and its file is smaller.

Channels are ranked by the L1 or L2 norm of their weights, by their BatchNorm scale, or by the
first-order Taylor estimate of how much the loss would change without them (``taylor``, Molchanov
et al. 2019, on ``dreams`` images dreamed from the teacher, so no real data is read:
dfkd/pruning/taylor.py); the same
share of channels leaves every layer (uniform) or the least important across the network leave
first (global), their scores put on one scale per layer by torch-pruning's ``normalizer`` (mean:
each layer's scores over their mean; lamp: Lee et al.'s LAMP scores, as unstructured pruning's
default ranks single weights). ``coupled=keep`` leaves whole the channels that residual additions
tie across layers (a ResNet's residual streams, a MobileNetV2 stage's outputs) and takes the ratio
from the channels inside each block, as filter pruning for CIFAR ResNets often does (Li et al.
2017). With ``rounds`` > 1 the target is reached in prune-recover rounds
(as pruning=iterative reaches an unstructured ratio), channels re-ranked on the recovered student
each round."""

from __future__ import annotations

import copy
import logging

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dfkd.errors import DfkdError, check, check_choice
from dfkd.pruning.common import (LAYERS, Pruner, check_ratio, dense_names, is_depthwise, prunable, run_order, sparsity,
                                 undone)
from dfkd.pruning.taylor import TaylorImportance

log = logging.getLogger(__name__)

IMPORTANCE = {"l1": lambda normalizer: tp.importance.MagnitudeImportance(p=1, normalizer=normalizer),
              "l2": lambda normalizer: tp.importance.MagnitudeImportance(p=2, normalizer=normalizer),
              "bn_scale": lambda normalizer: tp.importance.BNScaleImportance(normalizer=normalizer),
              "taylor": TaylorImportance}
SCOPES = ("uniform", "global")
NORMALIZERS = ("mean", "max", "sum", "lamp", "gaussian", "standarization")  # torch-pruning's names
TARGETS = ("flops", "params")
COUPLED = ("prune", "keep")
STEPS = 100  # channels leave in steps of 1% of each layer's width, until the target is met
MAX_CHANNEL_RATIO = 0.95  # no layer loses more than this share of its channels (in one round)


def coupled_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose output channels others share through element-wise joins (residual
    additions, or gates that multiply two branches): torch-pruning groups in which more than one
    (non-depthwise) conv or linear layer produces the channels, as the stem and every block's last
    conv of a ResNet produce its residual stream."""
    graph = tp.DependencyGraph().build_dependency(model, example)
    found = []
    for group in graph.get_all_groups():
        producers = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)
                     and isinstance(dep.target.module, LAYERS) and not is_depthwise(dep.target.module)]
        if len(producers) > 1:
            found += producers
    return found


def classifier(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The conv or linear layer that runs last on ``example`` (in execution order, not the order
    the model lists its layers): the classifier, whose output channels are the classes."""
    layers = dict(prunable(model))
    return [layers[name] for name in run_order(model, example)[-1:]]


def channels(model: nn.Module) -> dict[str, int]:
    """The output channels of every conv and linear layer, by name."""
    return {n: int(m.weight.shape[0]) for n, m in prunable(model)}


def count(model: nn.Module, example: torch.Tensor, what: str) -> int:
    """The model's parameters, or its FLOPs on ``example`` (torch's own counter)."""
    if what == "params":
        return sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops())


class Structured(Pruner):
    """Remove whole channels until ``ratio`` of the FLOPs (``target=flops``) or of the parameters
    (``target=params``) are gone; ``keep_dense`` layers keep their output channels, and so does
    the classifier (the layer that runs last), whose outputs are the classes. ``coupled=keep``:
    channels that residual additions tie across layers stay, and the ratio comes from the layers'
    own channels. ``rounds`` > 1: in that many rounds of the ``schedule`` (cubic or linear), each
    followed by recovery."""

    structured = True

    def __init__(self, ratio: float = 0.5, target: str = "flops", importance: str = "l1", scope: str = "uniform",
                 keep_dense=(), round_to: int | None = None, normalizer: str = "mean", rounds: int = 1,
                 schedule: str = "cubic", coupled: str = "prune", dreams: int = 1024) -> None:
        super().__init__(check_ratio(ratio, f"the fraction of the {target} removed"), keep_dense)
        check_choice("pruning.coupled", coupled, COUPLED)
        check_choice("pruning.target", target, TARGETS)
        check_choice("pruning.importance", importance, sorted(IMPORTANCE))
        check_choice("pruning.scope", scope, SCOPES)
        check_choice("pruning.normalizer", normalizer, NORMALIZERS)
        check(normalizer == "mean" or scope == "global",
              f"pruning.normalizer={normalizer} puts the layers' channel scores on one scale, which only "
              f"pruning.scope=global uses: set pruning.scope=global, or leave pruning.normalizer=mean.")
        check(round_to is None or (isinstance(round_to, int) and round_to >= 1),
              f"pruning.round_to={round_to!r} must be null or a whole number of channels >= 1.")
        check(importance != "taylor" or (isinstance(dreams, int) and not isinstance(dreams, bool) and dreams >= 1),
              f"pruning.dreams={dreams!r} must be a whole number >= 1: the images dreamed from the teacher that "
              f"pruning.importance=taylor ranks channels on.")
        self.target, self.importance, self.scope, self.round_to = target, importance, scope, round_to
        self.dreams = dreams if importance == "taylor" else 0  # what the pipeline dreams before pruning
        self.normalizer, self.coupled = normalizer, coupled
        self.in_rounds(rounds, schedule)
        self.found: dict = {}  # the last call's: "before" is the whole network's count, which every round's ratio is of

    def validate(self, model, example):
        """Prune a copy of the (untrained) architecture: a target that cannot be reached is refused
        now, before a teacher is trained."""
        model = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(0)
        for m in model.modules():  # an untrained network's BatchNorm scales are all 1: bn_scale would tie
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                with torch.no_grad():
                    m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
        dreams = None
        if self.dreams:  # noise stands in for the dreams: only whether the target is reachable is checked
            images = torch.randn((2, *example.shape[1:]), generator=generator)
            with torch.no_grad():
                dreams = images, model.eval()(images).argmax(1)
        self(model, example, dreams=dreams)

    def __call__(self, model, example=None, ratio=None, dreams=None):
        check(example is not None, "pruning=structured needs an example input to trace the network.")
        check(not self.dreams or dreams is not None, "pruning.importance=taylor ranks channels on dreams, but "
              "none were given: pass dreams=(images, classes), e.g. from dfkd.synthesis.dream (python -m dfkd.run "
              "dreams them itself).")
        # a later round of the schedule gets the network the round before left; its ratio, like every
        # round's, is of the whole network, counted when the first round (or a one-shot call) got it
        later = ratio is not None and any(abs(ratio - r) < 1e-9 for r in self._rounds[1:])
        if later and not self.found:
            raise DfkdError(f"pruning=structured was asked for round {self._round(ratio)} of {len(self._rounds)} "
                            f"before round 1 counted the whole network's {self.target}: prune the rounds in order.")
        ratio = self.ratio if ratio is None else ratio
        was_training = model.training
        # torch-pruning leaves frozen parameters alone, so a frozen model would lose nothing: thawed
        # while it is pruned, each parameter frozen again after (by name: pruning replaces them)
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        model.requires_grad_(True)
        model.to(memory_format=torch.contiguous_format).eval()  # tracing must not touch BatchNorm statistics
        example = example.to(next(model.parameters()).device)
        try:
            pruner, importance, kept = self.meta_pruner(model, example)
            before = self.found["before"] if later else count(model, example, self.target)
            goal = (1 - ratio) * before
            for _ in range(STEPS):
                if count(model, example, self.target) <= goal:
                    break
                if self.dreams:
                    importance.accumulate(model, *dreams)
                try:
                    pruner.step()
                except (IndexError, RuntimeError) as err:  # e.g. channels split (chunk) before their BatchNorm
                    raise DfkdError(f"pruning=structured could not remove channels from this model "
                                    f"({type(err).__name__}: {err}): torch-pruning cannot follow every way a "
                                    f"model splits or reshapes its channels; use unstructured pruning "
                                    f"(pruning=magnitude) or pruning=nm for this model.") from err
            after = count(model, example, self.target)
        finally:  # the caller's model back in its mode and its frozen parameters frozen, whatever happened
            model.train(was_training)
            for name, p in model.named_parameters():
                p.requires_grad_(name not in frozen)
        if after > goal * 1.001:
            where = (f"pruning.ratio={ratio}" if len(self._rounds) == 1 else
                     f"round {self._round(ratio)} of {len(self._rounds)} on the way to pruning.ratio={self.ratio}")
            raise DfkdError(f"pruning=structured cannot remove {100 * ratio:.3g}% of the {self.target} ({where}) "
                            f"without removing whole layers: it reached {1 - after / before:.0%} with every pruned "
                            f"layer at {1 - MAX_CHANNEL_RATIO:.0%} of the channels it had when the round began. Lower "
                            f"pruning.ratio, or leave fewer layers dense (pruning.keep_dense"
                            f"{', pruning.coupled=prune' if kept else ''}).")
        self.found = {"before": before, "after": after, "removed": 1 - after / before, "coupled": len(kept),
                      "channels": channels(model)}
        return model

    def meta_pruner(self, model: nn.Module, example: torch.Tensor):
        """torch-pruning's pruner for ``model`` in 1% steps, its importance, and the layers that
        ``coupled=keep`` leaves whole."""
        self.learn_order(model, example)
        dense = dense_names(model, self.keep_dense, self.order)
        try:
            kept = coupled_layers(model, example) if self.coupled == "keep" else []
            if self.coupled == "keep" and not kept and self.found.get("coupled") != 0:  # said once, not each call
                log.warning("pruning.coupled=keep: %s has no residual additions (no channels that several "
                            "layers produce), so it is pruned as with pruning.coupled=prune.",
                            type(model).__name__)
            importance = IMPORTANCE[self.importance](self.normalizer)
            pruner = tp.pruner.MetaPruner(
                model, example, importance=importance,
                global_pruning=self.scope == "global",
                pruning_ratio=MAX_CHANNEL_RATIO, max_pruning_ratio=MAX_CHANNEL_RATIO, iterative_steps=STEPS,
                ignored_layers=[m for n, m in prunable(model) if n in dense] + kept + classifier(model, example),
                round_to=self.round_to)
        except Exception as err:  # torch-pruning cannot trace every custom forward
            raise DfkdError(f"pruning=structured could not trace the model's layers ({type(err).__name__}: {err}); "
                            f"use unstructured pruning (pruning=magnitude) or pruning=nm for this model.") from err
        return pruner, importance, kept

    def _round(self, ratio: float) -> int:
        """Which round of the schedule ``ratio`` is (1-based)."""
        return 1 + min(range(len(self._rounds)), key=lambda k: abs(self._rounds[k] - ratio))

    def check_kept(self, model):
        """The student still has the pruned channel counts; returns the share of its zero weights."""
        if self.found and channels(model) != self.found["channels"]:
            raise undone("the student's channel counts changed")
        return sparsity(model)["overall"]

    def describe(self) -> str:
        kept = ", residual streams whole" if self.coupled == "keep" and self.found.get("coupled", 1) else ""
        if self.found:
            return f"{self.found['removed']:.1%} of the {self.target} removed, channels by {self.importance}{kept}"
        return f"{self.ratio:.0%} of the {self.target}{self.rounds_phrase()}, channels by {self.importance}{kept}"

    def settings(self) -> dict:
        ranked = self.importance if self.scope == "uniform" else f"{self.importance} global"
        if self.normalizer != "mean":
            ranked += f" {self.normalizer}"
        if self.coupled == "keep":
            ranked += " coupled kept"
        rounds = {}
        if len(self._rounds) > 1:
            ranked += f" {self.rounds_label()}"
            rounds = self.rounds_settings()
        dreams = {"pruning_dreams": self.dreams} if self.dreams else {}
        return {"pruning_ratio": self.ratio, "pruning_method": f"structured {ranked}",
                "pruning_scope": self.scope, "pruning_normalizer": self.normalizer, "pruning_target": self.target,
                "pruning_keep_dense": self.keep_dense, "pruning_coupled": self.coupled, **rounds, **dreams}
