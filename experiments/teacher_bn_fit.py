"""How well a teacher's BatchNorm statistics fit the real images it is judged on, with the
settings right and wrong: the figures behind report.BN_FIT_WARNING (experiments/README.md,
teacher_bn_fit). Each case: the teacher's test accuracy and ``bn_fit``, the mean over its BN
layers of the normalized distance between the test images' statistics and its running ones
(what a run computes for a teacher from teacher.checkpoint).

    .venv/bin/python experiments/teacher_bn_fit.py    # 2 minutes on 2 cores with the teachers cached; 25 more to train the synthesis_health ones
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfkd.config import build, compose_config  # noqa: E402
from dfkd.synthesis.bn_stats import input_statistics  # noqa: E402
from dfkd.teacher import build_model, cache_file, freeze, load_weights, obtain_teacher, scores  # noqa: E402

CIFAR = ["+experiment=cifar10_cpu_reduced"]
CASES = {
    "digits": ([], {}),
    "digits, mean 0.2 std 0.3 (measured: 0.31, 0.38)": ([], {"data.mean": "[0.2]", "data.std": "[0.3]"}),
    "cifar10": (CIFAR, {}),
    "cifar10, mean 0.5 std 0.5 (image_folder's guess)": (CIFAR, {"data.mean": "[0.5,0.5,0.5]",
                                                                  "data.std": "[0.5,0.5,0.5]"}),
    "cifar10, 40 pixels (trained at 32)": (CIFAR, {"data.image_size": "40"}),
    "cifar10, 48 pixels (trained at 32)": (CIFAR, {"data.image_size": "48"}),
}
# the synthesis health check's teachers (experiments/synthesis_health.py: 8 epochs on 10,000 images,
# about 1/8 of the standard width): weak, briefly trained teachers of every built-in architecture
WIDTHS = {"resnet18": "model.width=8", "resnet34": "model.width=8", "resnet50": "model.width=4",
          "mobilenetv2": "model.width_mult=0.25", "vgg16": "model.width=8"}
HEALTH = {arch: ["+experiment=synthesis_health", f"model={arch}", width] for arch, width in WIDTHS.items()}
GUESS = {"data.mean": "[0.5,0.5,0.5]", "data.std": "[0.5,0.5,0.5]"}
for arch, base in HEALTH.items():
    CASES[f"{arch} (synthesis_health teacher)"] = (base, {})
    CASES[f"{arch} (synthesis_health teacher), mean 0.5 std 0.5"] = (base, GUESS)
CASES["resnet18 (synthesis_health teacher), 48 pixels"] = (HEALTH["resnet18"], {"data.image_size": "48"})


def main() -> None:
    rows = {}
    for name, (base, wrong) in CASES.items():
        right = compose_config(base)  # the teacher is the one cached for the right settings
        cache = cache_file(ROOT / ".cache/dfkd", right.model, right.data, right.teacher, right.trainer)
        if not cache.is_file():  # trained and cached as a run would (the synthesis_health teachers: minutes)
            recipe = build(right.data, "data")
            recipe.setup()
            obtain_teacher(build_model(right.model, right.teacher.seed), right.teacher, recipe, right.trainer, cache,
                           ROOT / "outputs" / "bench" / "teacher_bn_fit")
        # the test split only (data.val_size changes the cache key, not the test split)
        cfg = compose_config(base + ["data.val_size=0", "data.num_workers=1"] + [f"{k}={v}" for k, v in wrong.items()])
        data = build(cfg.data, "data")
        data.setup()
        teacher = freeze(load_weights(build_model(cfg.model, cfg.teacher.seed), cache))
        with input_statistics(teacher) as fit:
            acc = scores(teacher, data, "cpu", False)["acc"]
        distances = fit()
        rows[name] = {"test_acc": acc, "bn_fit": sum(distances) / len(distances),
                      "bn_fit_per_layer": distances}
        print(f"| {name} | {100 * acc:.2f} | {rows[name]['bn_fit']:.2f} |", flush=True)
    out = ROOT / "experiments/results/teacher_bn_fit"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    lines = ["| teacher and settings | test % | bn_fit |", "|---|---|---|"]
    lines += [f"| {n} | {100 * r['test_acc']:.2f} | {r['bn_fit']:.2f} |" for n, r in rows.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
