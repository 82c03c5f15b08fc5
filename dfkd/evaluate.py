"""Accuracy on the real test split and agreement with the teacher (torchmetrics)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from dfkd.data import ImageDataModule


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
