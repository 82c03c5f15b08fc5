"""The two LightningModules: a classifier trained on labels (teacher, fine-tuning) and the
distillation of a frozen teacher into a (pruned) student."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from dfkd.errors import DfkdError, check
from dfkd.models import batchnorm_layers

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients, from the start (BN statistics must never move)."""
    return model.eval().requires_grad_(False)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened outputs, times T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


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
    (they keep the ones they came with; their scale and shift still learn)."""

    def __init__(self, net: nn.Module, num_classes: int, optimizer: OptimizerFactory,
                 warmup_fraction: float = 0.0, channels_last: bool = False, bn_statistics: str = "train") -> None:
        super().__init__()
        check(bn_statistics in ("train", "frozen"), f"bn_statistics={bn_statistics!r}: train or frozen.")
        self.net = net
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
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.check_finite(loss, self.hparams.config_group)
        self.train_acc(logits, y)
        self.log_dict({"train/loss": loss, "train/acc": self.train_acc}, prog_bar=True)
        return loss


class DistillModule(NetModule):
    """Frozen teacher -> student by KL at temperature T (x T^2), plus optional CE on the
    teacher's labels. The batch's own labels are never used: the transfer set may be dreams."""

    def __init__(self, teacher: nn.Module, student: nn.Module, num_classes: int,
                 optimizer: OptimizerFactory, temperature: float = 4.0, ce_weight: float = 0.0,
                 **schedule) -> None:
        super().__init__(student, num_classes, optimizer, **schedule)
        self.save_hyperparameters(ignore=["teacher", "student", "optimizer"])
        self.teacher = freeze(teacher)
        self.agreement = MulticlassAccuracy(num_classes, average="micro")

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()  # Lightning calls .train() on the whole module; the teacher stays frozen
        return self

    def training_step(self, batch, batch_idx):
        x = batch[0]
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.net(x)
        loss = kd_loss(logits, teacher_logits, self.hparams.temperature)
        if self.hparams.ce_weight:
            loss = loss + self.hparams.ce_weight * F.cross_entropy(logits, teacher_logits.argmax(1))
        self.check_finite(loss, "recovery")
        self.agreement(logits.argmax(1), teacher_logits.argmax(1))
        self.log_dict({"train/kd_loss": loss, "train/agreement": self.agreement}, prog_bar=True)
        return loss
