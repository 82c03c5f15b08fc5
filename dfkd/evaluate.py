"""Accuracy on the real test split and agreement with the teacher (torchmetrics)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy


def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
             teacher: nn.Module | None = None) -> dict[str, float]:
    """Top-1 accuracy of ``model`` and, with a teacher, how often their top-1 classes agree.
    Moves the models to ``device``."""
    was_training = model.training
    # moved outside inference mode: weights copied to a GPU inside it could never be trained again
    model.eval().to(device)
    if teacher is not None:
        teacher.to(device)
    accuracy = MulticlassAccuracy(num_classes, average="micro").to(device)
    agreement = MulticlassAccuracy(num_classes, average="micro").to(device)
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            accuracy.update(logits, y)
            if teacher is not None:
                agreement.update(logits.argmax(1), teacher(x).argmax(1))
    model.train(was_training)
    result = {"acc": accuracy.compute().item()}
    if teacher is not None:
        result["agreement"] = agreement.compute().item()
    return result
