"""Accuracy on the real test split and agreement with the teacher (torchmetrics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from dfkd.data import ImageDataModule
from dfkd.synthesis import dream, make_synthesizer


def near_chance(acc: float, num_classes: int) -> bool:
    """Whether an accuracy is about what guessing gets: within a tenth of the way from chance
    to perfect (19% for 10 classes, 55% for 2, 10.9% for 100)."""
    chance = 1.0 / num_classes
    return acc < chance + 0.1 * (1 - chance)


def evaluate(model: nn.Module, data: ImageDataModule, device: torch.device,
             teacher: nn.Module | None = None, channels_last: bool = False, split: str = "test") -> dict[str, float]:
    """Top-1 accuracy of ``model`` on the test (or validation) split of ``data`` and, with a
    teacher, how often their top-1 classes agree. Moves the models to ``device`` (and to
    channels_last memory)."""
    was_training = model.training
    # Moved outside inference mode: weights copied or converted inside it would be inference
    # tensors, which could never be trained again.
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model.eval().to(device, memory_format=fmt)
    if teacher is not None:
        teacher.to(device, memory_format=fmt)
    accuracy = MulticlassAccuracy(data.num_classes, average="micro").to(device)
    agreement = MulticlassAccuracy(data.num_classes, average="micro").to(device)
    with torch.inference_mode():
        for x, y in data.loader(split):
            x, y = data.model_input(x.to(device)), y.to(device)
            logits = model(x)
            accuracy.update(logits, y)
            if teacher is not None:
                agreement.update(logits.argmax(1), teacher(x).argmax(1))
    model.train(was_training)
    result = {"acc": accuracy.compute().item()}
    if teacher is not None:
        result["agreement"] = agreement.compute().item()
    return result


@torch.no_grad()
def judge_on_dreams(model: nn.Module, teacher: nn.Module, images: torch.Tensor, num_classes: int,
                    batch_size: int = 512) -> dict:
    """Strict data-free mode's figures, on held-out dreams no KD step saw: how often ``model``'s
    top-1 class agrees with the teacher's (overall and per teacher class) and the KL divergence
    KL(teacher || model) of their outputs."""
    device = next(teacher.parameters()).device
    was_training = model.training
    model.eval().to(device)
    agree = torch.zeros(num_classes, device=device)
    count = torch.zeros(num_classes, device=device)
    kl = 0.0
    for x in images.split(batch_size):
        x = x.to(device)
        t, m = teacher(x).float(), model(x).float()
        top = t.argmax(1)
        agree += torch.bincount(top, weights=(m.argmax(1) == top).float(), minlength=num_classes)
        count += torch.bincount(top, minlength=num_classes).float()
        kl += F.kl_div(m.log_softmax(1), t.log_softmax(1), log_target=True, reduction="sum").item()
    model.train(was_training)
    per_class = (agree / count.clamp_min(1)).tolist()
    return {"dream_agreement": (agree.sum() / count.sum()).item(), "dream_kl": kl / len(images),
            "dream_agreement_per_class": per_class}


def held_out_dreams(synthesizer, teacher: nn.Module, data: ImageDataModule, seed: int, n: int,
                    batch_size: int = 256) -> torch.Tensor:
    """``n`` dreams from their own synthesizer (``synthesizer``: the factory conf/synthesis
    builds) with their own seed, so that no KD step ever sees them."""
    return dream(make_synthesizer(synthesizer, teacher, data, seed + 10007), n, batch_size)[0]


class Judge:
    """How the pipeline judges a model: accuracy on the real test split (and, with a validation
    split, on it too) and agreement with the teacher; or, in strict data-free mode, agreement and
    KL on held-out dreams (``dreams``), without opening any real data."""

    def __init__(self, data: ImageDataModule, device: torch.device, channels_last: bool = False,
                 dreams: torch.Tensor | None = None) -> None:
        self.data, self.device, self.channels_last, self.dreams = data, device, channels_last, dreams

    def __call__(self, model: nn.Module, teacher: nn.Module, validation: bool = False) -> dict:
        if self.dreams is not None:
            return judge_on_dreams(model, teacher, self.dreams, self.data.num_classes)
        found = evaluate(model, self.data, self.device, teacher, channels_last=self.channels_last)
        if validation and self.data.val_size:  # what experiments choose settings on
            found["val_acc"] = self.val_acc(model)
        return found

    def val_acc(self, model: nn.Module) -> float:
        """Top-1 accuracy of ``model`` on the validation split. The global random stream is left
        as it was (a loader draws its seed from it), so a run's recovery is the same with or
        without this figure."""
        with torch.random.fork_rng(devices=[]):
            return evaluate(model, self.data, self.device, channels_last=self.channels_last, split="val")["acc"]
