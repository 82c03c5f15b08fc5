"""Accuracy of saved students on train images their teacher never saw: for runs whose teacher
trained on a fixed subset (``data.train_subset``, as ``+experiment=synthesis_health`` does), the
train images outside the subset are a validation split that leaves the cached teacher as it is
(``data.val_size`` would change the teacher's data, and so retrain it). Takes ``n`` of them, evenly
spread and none in the subset, and prints a table of each run's held-out (validation) accuracy
beside its test accuracy from results.json.

    .venv/bin/python experiments/heldout_accuracy.py outputs/bench/RUN ... [--n 5000]

The data (folder, subset, normalization) is the first run's own data module, built from its
.hydra/config.yaml; every run must share it. Each run folder needs student.pt2 (the run's
deployment export: keep ``deploy.export`` on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dfkd.config import build


def heldout_indices(taken: list[int], size: int, n: int) -> list[int]:
    """``n`` indices spread over a split of ``size`` images, none of them in ``taken``."""
    taken = set(taken)
    free = [i for i in range(size) if i not in taken]
    return [free[int(i * len(free) / n)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    configs = [OmegaConf.load(run / ".hydra" / "config.yaml").data for run in args.runs]
    assert all(c == configs[0] for c in configs), "the runs were given different data settings"
    data = build(configs[0], "data")
    data.setup()
    train = data._folders["train"]  # the decoded folder and the subset dfkd's teacher trained on
    subset = data._subset(len(train))
    if subset is None:
        raise SystemExit("These runs trained on the whole train split (data.train_subset unset): no train "
                         "image is held out; give the run a validation split with data.val_size instead.")
    keep = heldout_indices(subset, len(train), args.n)
    images, labels = train.decode(keep).tensors
    x = data.model_input(images)
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
