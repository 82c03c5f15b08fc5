"""Accuracy of saved students on CIFAR-10 train images their teacher never saw: for runs whose
teacher trained on a fixed subset (``data.train_subset``, every k-th image of the train split, as
``+experiment=synthesis_health`` does), images outside the subset are a validation split that
leaves the cached teacher as it is (``data.val_size`` would change the teacher's data, and so
retrain it). Takes ``n`` of them, evenly spread and none in the subset, and prints a table of each
run's held-out (validation) accuracy beside its test accuracy from results.json.

    .venv/bin/python experiments/heldout_accuracy.py outputs/bench/RUN ... [--subset 10000] [--n 5000]

Each run folder needs student.pt2 (the run's deployment export: keep ``deploy.export`` on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, read_file

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # conf/data/cifar10_jpg.yaml


def heldout_indices(size: int, subset: int, n: int) -> list[int]:
    """``n`` indices spread over the train split, none of them in dfkd's train subset (the image
    at int(i * (size / subset)) for each i < subset)."""
    step = size / subset  # as dfkd.data.vision._VisionDataModule._subset computes it
    taken = {int(i * step) for i in range(subset)}
    free = [i for i in range(size) if i not in taken]
    return [free[int(i * len(free) / n)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--root", default=".data/cifar10-jpg/train")
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    folder = datasets.ImageFolder(args.root, loader=str)
    keep = heldout_indices(len(folder.samples), args.subset, args.n)
    images = torch.stack([decode_image(read_file(folder.samples[i][0]), mode=ImageReadMode.RGB)
                          for i in keep]).float() / 255
    labels = torch.tensor([folder.samples[i][1] for i in keep])
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    print("| run | held-out train images (validation) % | test % | dreams' target agreement |")
    print("|---|---|---|---|")
    for run in args.runs:
        model = torch.export.load(str(run / "student.pt2")).module()
        with torch.no_grad():
            preds = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
        result = json.loads((run / "results.json").read_text())
        agreement = (result.get("synthesis") or {}).get("target_acc")
        print(f"| {run.name} | {100 * (preds == labels).float().mean():.2f} | "
              f"{100 * result['recovered']['acc']:.2f} | "
              f"{'-' if agreement is None else f'{agreement:.3f}'} |")


if __name__ == "__main__":
    main()
