"""The two LightningModules: a classifier trained on labels (teacher, fine-tuning) and the
distillation of a frozen teacher into a (pruned) student."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from dfkd.errors import DfkdError, check, check_choice
from dfkd.models import batchnorm_layers, captured_inputs, classifier

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients, from the start (BN statistics must never move)."""
    return model.eval().requires_grad_(False)


# what the student matches: the teacher's softened outputs (kl) or its logits themselves (mse)
KD_LOSSES = ("kl", "mse")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float, loss: str = "kl") -> torch.Tensor:
    """``kl``: KL(teacher || student) on temperature-softened outputs, times T^2 (Hinton et al.).
    ``mse``: half the mean squared difference of the logits, the limit the T^2-scaled KL tends to
    as T grows for logits of zero mean (Hinton et al. 2015, sec. 2.1; unlike KL it also matches the
    logits' mean), so a learning rate tuned for KL is a fair start for it; matching logits keeps
    what softmax discards, their scale and the ranks of unlikely classes (Kim et al. 2021).
    ``temperature`` is not used by ``mse``."""
    if loss == "kl":
        t = temperature
        return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t
    if loss == "mse":
        return 0.5 * F.mse_loss(student_logits, teacher_logits)
    check_choice("recovery.loss", loss, KD_LOSSES)  # raises: reached only by an unknown loss


# how KD batches may be mixed before the teacher labels them
MIXES = ("none", "mixup", "cutmix")


def check_mix(mix: str, alpha: float) -> None:
    check_choice("recovery.mix", mix, MIXES)
    check(float(alpha) > 0, f"recovery.mix_alpha={alpha} must be > 0 (mixing proportions are drawn from Beta(alpha, alpha)).")


def mix_batch(x: torch.Tensor, mix: str, alpha: float, rng: np.random.Generator) -> torch.Tensor:
    """The batch mixed with a shuffled copy of itself, in a proportion drawn from Beta(alpha,
    alpha): blended (mixup) or a pasted rectangle (CutMix). KD needs no mixed labels: the teacher
    labels the mixed images, and the student matches it on them ("function matching", Beyer et
    al. 2022), which turns a small pool of dreams into many distinct KD inputs. The draws come
    from ``rng`` (saved in checkpoints, so a resumed run mixes as an uninterrupted one)."""
    if mix == "none" or len(x) < 2:
        return x
    lam = float(rng.beta(alpha, alpha))
    other = x[torch.from_numpy(rng.permutation(len(x))).to(x.device)]
    if mix == "mixup":
        return lam * x + (1 - lam) * other
    h, w = x.shape[-2:]
    cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    top, left = int(rng.integers(h - cut_h + 1)), int(rng.integers(w - cut_w + 1))
    mixed = x.clone()
    mixed[..., top:top + cut_h, left:left + cut_w] = other[..., top:top + cut_h, left:left + cut_w]
    return mixed


# where the optional feature term of KD compares student and teacher: the input of the classifier
# (the penultimate features), or the input of every BatchNorm layer (each convolution's output)
FEATURE_LAYERS = ("penultimate", "batchnorm")


def feature_taps(model: nn.Module, layers: str) -> list[nn.Module]:
    """The modules whose *input* the feature term compares (see FEATURE_LAYERS)."""
    if layers == "penultimate":
        head = classifier(model)
        return [head] if head is not None else []
    return list(batchnorm_layers(model))


def feature_scales(taps: list[nn.Module]) -> list[torch.Tensor | None]:
    """feature_loss's unit per tapped layer: a BatchNorm layer's running standard deviation, per
    channel; None (relative error) for the classifier."""
    return [(m.running_var + m.eps).sqrt() if isinstance(m, nn.modules.batchnorm._BatchNorm) else None for m in taps]


def mirror_mean(model: nn.Module, images: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """``model``'s mean logits on ``images`` and on their mirror images, left and right swapped
    (recovery.teacher_flip); ``logits``: ``model(images)`` where the caller has it already."""
    logits = model(images) if logits is None else logits
    return (logits + model(torch.flip(images, dims=[-1]))) / 2


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
                 scales: list[torch.Tensor | None]) -> torch.Tensor:
    """Mean over the tapped layers of the squared student-teacher difference in units that do
    not depend on the layer: per channel in the teacher's running standard deviation (``scale``,
    BatchNorm inputs), else relative to the teacher's feature energy (penultimate features)."""
    terms = []
    for s, t, scale in zip(student, teacher, scales):
        s, t = s.float(), t.float()
        if scale is not None:
            terms.append(((s - t) / scale.view(1, -1, *([1] * (t.dim() - 2)))).pow(2).mean())
        else:
            terms.append((s - t).pow(2).flatten(1).sum(1).mean() / t.pow(2).flatten(1).sum(1).mean().clamp_min(1e-8))
    return torch.stack(terms).mean()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate the running statistics of every BatchNorm layer of ``model`` as the plain
    average over ``batches`` (model input), with the weights as they are; returns the number of
    images seen. The model's mode and the layers' momentum are as they were afterwards."""
    layers = batchnorm_layers(model)
    momenta = [bn.momentum for bn in layers]
    training = model.training
    seen = 0
    try:
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: every batch counts the same
        model.train()
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        model.train(training)
    return seen


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear from 1/warmup to 1 over ``warmup`` steps, then a cosine
    from 1 to 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(step - warmup, total - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * progress))


class NetModule(L.LightningModule):
    """Shared parts: the trained network ``net``, accuracy on the real test split, the optimizer
    with a per-step schedule over the whole run (an optional linear warm-up over
    ``warmup_fraction`` of the steps, then a cosine to zero). ``channels_last``: the networks
    work in NHWC memory (what tensor cores prefer). ``bn_statistics``: "train" (the BatchNorm
    layers of ``net`` re-estimate their running statistics on the batches they see) or "frozen"
    (they keep the ones they came with; their scale and shift still learn). ``anchor_weight``: the
    loss gains anchor_weight / 2 x the squared distance of ``net``'s weights from the ones it came
    with (L2-SP, Li et al., ICML 2018): training moves them only where the batches pay for it."""

    def __init__(self, net: nn.Module, num_classes: int, optimizer: OptimizerFactory,
                 warmup_fraction: float = 0.0, channels_last: bool = False, bn_statistics: str = "train",
                 anchor_weight: float = 0.0) -> None:
        super().__init__()
        check(bn_statistics in ("train", "frozen"), f"bn_statistics={bn_statistics!r}: train or frozen.")
        self.net = net
        self.anchor_weight = float(anchor_weight)
        # the weights training starts from; kept out of the module's state (and so out of checkpoints):
        # a resumed run is handed the same pruned start and rebuilds them
        self.anchor = [p.detach().clone() for p in net.parameters()] if self.anchor_weight else None
        self.optimizer_factory = optimizer
        self.warmup_fraction, self.channels_last = float(warmup_fraction), bool(channels_last)
        self.bn_statistics = bn_statistics
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def train(self, mode: bool = True) -> NetModule:
        super().train(mode)
        if mode:
            self.hold_batchnorm()
        return self

    def hold_batchnorm(self) -> None:
        if self.bn_statistics == "frozen":
            for bn in batchnorm_layers(self.net):
                bn.eval()

    def on_train_epoch_start(self) -> None:
        self.hold_batchnorm()  # Lightning keeps each module's mode; set it where training starts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.anchor is not None:  # not part of the module's state, so not moved with it
            self.anchor = [a.to(self.device) for a in self.anchor]

    def check_finite(self, loss: torch.Tensor, setting: str) -> None:
        if not torch.isfinite(loss):
            kept = ("No student was saved and no results were written; the cached teacher is intact, and "
                    "the dreams made so far (dream_kd, noise_kd) are kept in the run folder "
                    "(synthetic_pool*.pt)."
                    if setting == "recovery" else "No teacher was cached.")
            raise DfkdError(
                f"The training loss became {loss.item()} at step {self.global_step}: training "
                f"diverged. Lower {setting}.optimizer.lr or set {setting}.gradient_clip_val "
                f"(e.g. 2.0). {kept}")

    def anchored(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the anchor term (with ``anchor_weight`` > 0)."""
        if self.anchor is None:
            return loss
        drift = sum((p - a).pow(2).sum() for p, a in zip(self.net.parameters(), self.anchor) if p.requires_grad)
        self.log("train/drift", drift)
        return loss + 0.5 * self.anchor_weight * drift

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self.net(x), y)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(p for p in self.net.parameters() if p.requires_grad)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ClassifierModule(NetModule):
    """Cross-entropy on real labels: trains a teacher, or fine-tunes a pruned student."""

    def __init__(self, net: nn.Module, num_classes: int, optimizer: OptimizerFactory,
                 label_smoothing: float = 0.0, config_group: str = "teacher", **schedule) -> None:
        super().__init__(net, num_classes, optimizer, **schedule)
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = self.anchored(F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing))
        self.check_finite(loss, self.hparams.config_group)
        self.train_acc(logits, y)
        self.log_dict({"train/loss": loss, "train/acc": self.train_acc}, prog_bar=True)
        return loss


class DistillModule(NetModule):
    """Frozen teacher -> student by KL at temperature T (x T^2) or by logit MSE (``loss``), plus
    optional CE on the teacher's labels, optional mixing of each batch (``mix``: mixup or CutMix,
    labelled by the teacher) and an optional feature term (``feature_weight`` x feature_loss at
    ``feature_layers``: the student mimics the teacher's intermediate features, which a pruned
    student of the same architecture can do layer for layer). ``teacher_flip``: the teacher's
    logits are the mean over each image and its mirror image (test-time augmentation, where a
    flip keeps the class). The batch's own labels are never used: the transfer set may be dreams."""

    def __init__(self, teacher: nn.Module, student: nn.Module, num_classes: int,
                 optimizer: OptimizerFactory, temperature: float = 4.0, loss: str = "kl",
                 ce_weight: float = 0.0, feature_weight: float = 0.0, feature_layers: str = "penultimate",
                 mix: str = "none", mix_alpha: float = 1.0, teacher_flip: bool = False, **schedule) -> None:
        check_mix(mix, mix_alpha)
        check_choice("recovery.loss", loss, KD_LOSSES)
        super().__init__(student, num_classes, optimizer, **schedule)
        self.save_hyperparameters(ignore=["teacher", "student", "optimizer"])
        self.teacher = freeze(teacher)
        self.agreement = MulticlassAccuracy(num_classes, average="micro")
        self.mixer = np.random.default_rng(torch.initial_seed())  # reseeded per rank in setup
        self.taps: tuple[list[nn.Module], list[nn.Module]] | None = None
        if feature_weight:
            self.taps = matching_taps(self.teacher, student, feature_layers, feature_weight)

    def setup(self, stage: str) -> None:
        # before a checkpoint is restored (on_load_checkpoint), after the run's seed is set
        self.mixer = np.random.default_rng([torch.initial_seed(), self.global_rank])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mixer"] = self.mixer.bit_generator.state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "mixer" in checkpoint:
            self.mixer.bit_generator.state = checkpoint["mixer"]

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()  # Lightning calls .train() on the whole module; the teacher stays frozen
        return self

    def training_step(self, batch, batch_idx):
        x = mix_batch(batch[0], self.hparams.mix, self.hparams.mix_alpha, self.mixer)
        teacher_taps, student_taps = self.taps or ([], [])
        with torch.no_grad(), captured_inputs(teacher_taps) as teacher_features:
            teacher_logits = self.teacher(x)
        if self.hparams.teacher_flip:  # outside the taps: the features are the unflipped images'
            with torch.no_grad():
                teacher_logits = mirror_mean(self.teacher, x, teacher_logits)
        with captured_inputs(student_taps) as student_features:
            logits = self.net(x)
        loss = kd_loss(logits, teacher_logits, self.hparams.temperature, self.hparams.loss)
        if self.taps:
            features = feature_loss(student_features, teacher_features, feature_scales(teacher_taps))
            self.log("train/feature_loss", features)
            loss = loss + self.hparams.feature_weight * features
        if self.hparams.ce_weight:
            loss = loss + self.hparams.ce_weight * F.cross_entropy(logits, teacher_logits.argmax(1))
        loss = self.anchored(loss)
        self.check_finite(loss, "recovery")
        self.agreement(logits.argmax(1), teacher_logits.argmax(1))
        self.log_dict({"train/kd_loss": loss, "train/agreement": self.agreement}, prog_bar=True)
        return loss


def matching_taps(teacher: nn.Module, student: nn.Module, layers: str,
                  weight: float) -> tuple[list[nn.Module], list[nn.Module]]:
    """The teacher's and the student's layers the feature term compares, refused where they do
    not pair up one to one with the same widths (a structurally pruned student)."""
    check_choice("recovery.feature_layers", layers, FEATURE_LAYERS)
    pairs = feature_taps(teacher, layers), feature_taps(student, layers)

    def widths(modules):
        return [m.in_features if isinstance(m, nn.Linear) else m.num_features for m in modules]

    check(bool(pairs[0]), f"recovery.feature_layers={layers} compares the inputs of the teacher's "
          f"{'BatchNorm layers' if layers == 'batchnorm' else 'classifier (its last nn.Linear)'}, and it has none: "
          f"set recovery.feature_layers={'penultimate' if layers == 'batchnorm' else 'batchnorm'} or "
          f"recovery.feature_weight=0.")
    check(widths(pairs[0]) == widths(pairs[1]),
          f"recovery.feature_weight={weight:g} needs the student's and the teacher's "
          f"{layers} layers to match one to one ({widths(pairs[0])} in the teacher, {widths(pairs[1])} in the "
          f"student; structured pruning changes the widths): set recovery.feature_weight=0.")
    return pairs
