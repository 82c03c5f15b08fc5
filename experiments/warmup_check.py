"""Why VGG16-BN learned slowly on the first GPU run: the first steps of SGD at a large learning
rate, with and without a linear warm-up, for VGG16-BN and ResNet-18 (both at width 16, on the CPU).

100 SGD steps (Nesterov, weight decay 5e-4, label smoothing 0.1) of 128 images drawn from a fixed
6,400-image subset of the CIFAR-10 JPEG copy, with the teacher recipe's crops and flips; prints
the mean training loss of the first and of the last 10 steps (chance: 2.30).

    .venv/bin/python experiments/warmup_check.py      # about 2 minutes on 2 cores
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from dfkd.data import ImageFolderDataModule
from dfkd.data.vision import CIFAR_STATS
from dfkd.models.cifar import VGG16BN, resnet18

STEPS, BATCH = 100, 128


def train(model, lr: float, images, labels, data, warmup: int = 0) -> tuple[float, float]:
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    losses = []
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        idx = torch.randint(len(images), (BATCH,))
        loss = F.cross_entropy(model(data.model_input(images[idx], train=True)), labels[idx],
                               label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10


def main() -> None:
    mean, std = CIFAR_STATS["cifar10"]
    data = ImageFolderDataModule(root=".data/cifar10-jpg", num_classes=10, train_subset=6400, mean=mean, std=std)
    data.setup()
    images, labels = data.train_set.tensors
    runs = [("vgg16", VGG16BN, 0.1, 0), ("vgg16", VGG16BN, 0.02, 0), ("vgg16", VGG16BN, 0.1, 50),
            ("resnet18", resnet18, 0.1, 0)]
    print("| network | lr | warm-up steps | loss, first 10 steps | loss, last 10 steps | seconds |")
    print("|---|---|---|---|---|---|")
    for name, build, lr, warmup in runs:
        torch.manual_seed(0)
        start = time.perf_counter()
        first, last = train(build(width=16), lr, images, labels, data, warmup)
        print(f"| {name} | {lr} | {warmup} | {first:.2f} | {last:.2f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
