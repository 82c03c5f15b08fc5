"""How far did recovery move the student's weights? For each finished run of `python -m dfkd.run`
with unstructured pruning, the squared distance of its saved student's weights from its teacher's,
over the weights the student kept (non-zero, and every 1-d parameter: biases, BatchNorm scales
and shifts); BatchNorm running statistics are left out. It reads the teacher the run recorded.

    .venv/bin/python experiments/weight_drift.py outputs/bench/cifar10_75pct_1000_none/dream_kd_0 \\
        outputs/bench/cifar10_75pct_1000_anchor01/dream_kd_0

With `recovery.anchor_weight` > 0 the run's own log has the same figure for every step
(`train/drift`). Seconds on a CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def drift(run: Path) -> tuple[float, float, int]:
    """Squared distance from the teacher, the teacher's squared norm over the same weights, and
    how many weights that is."""
    student = torch.load(run / "student.pt", map_location="cpu", weights_only=True)
    teacher = torch.load(json.loads((run / "teacher.json").read_text())["source"], map_location="cpu",
                         weights_only=True)
    moved = norm = 0.0
    kept = 0
    for name, weight in student.items():
        if not weight.is_floating_point() or name.endswith(("running_mean", "running_var")):
            continue
        if teacher[name].shape != weight.shape:
            sys.exit(f"{run}: {name} has another shape than the teacher's (structured pruning?): "
                     f"this measure compares weight for weight.")
        mask = weight != 0 if weight.dim() > 1 else torch.ones_like(weight, dtype=torch.bool)
        moved += (weight - teacher[name])[mask].pow(2).sum().item()
        norm += teacher[name][mask].pow(2).sum().item()
        kept += int(mask.sum())
    return moved, norm, kept


if __name__ == "__main__":
    print("| run | squared distance from the teacher | teacher's squared norm there | weights |")
    print("|---|---|---|---|")
    for folder in sys.argv[1:]:
        moved, norm, kept = drift(Path(folder))
        print(f"| {folder} | {moved:.2f} | {norm:.1f} | {kept} |")
