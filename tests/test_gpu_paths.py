"""The flagship configuration's GPU code paths, proven on the CPU before a GPU minute is spent:
channels_last memory, bf16 autocast (Lightning's and the synthesizer's own), evaluation in
inference mode between two trainings, pruning of channels_last weights, DDP with 2 processes.

Both GPU-only bugs found on the first GPU run fail here: pruning a channels_last teacher
(``prune`` made it contiguous), and moving or converting a model inside inference mode during
evaluation (the student then fails to train: "Inference tensors cannot be saved for backward").
What only a GPU can exercise is listed in experiments/README.md (gpu_flagship).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfkd.run import run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# +experiment=resnet50_90pct as it runs on a GPU, at tiny width on a tiny image tree, on the CPU
# (code paths, not quality: a 2-epoch teacher need not learn, teacher.min_accuracy=0 keeps it)
GPU_PATHS = ["+experiment=resnet50_90pct", "trainer.accelerator=cpu", "trainer.precision=bf16-mixed",
             "trainer.channels_last=true", "synthesis.synthesizer.mixed_precision=true",
             "data=image_folder", "data.num_classes=3", "data.image_size=16", "data.batch_size=6",
             "data.num_workers=0", "model.width=4", "teacher.epochs=2", "teacher.min_accuracy=0",
             "teacher.val_every_n_epochs=1",
             "recovery.steps=4", "recovery.batch_size=6", "recovery.val_every_n_steps=2",
             "synthesis.synthesizer.warmup_steps=2", "synthesis.synthesizer.g_steps=1",
             "recovery.pool.batch_size=6", "recovery.pool.size=12", "recovery.pool.initial_batches=1",
             "recovery.pool.refresh_every=2", "recovery.image_grid_every_n_steps=2",
             "logger=none", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("recovery", ["dream_kd", "real_kd"])
def test_flagship_gpu_paths_on_the_cpu(make_cfg, image_tree, tmp_path, recovery):
    cfg = make_cfg(*GPU_PATHS, f"data.root={image_tree}", f"recovery={recovery}",
                   f"paths.cache_dir={tmp_path / 'cache'}", fast=False)
    assert cfg.trainer.channels_last and cfg.trainer.precision == "bf16-mixed" and cfg.trainer.benchmark
    results = run(cfg)
    assert results["recovered"]["sparsity"] >= 0.9 - 1e-3
    state = torch.load(tmp_path / "student.pt", weights_only=True)
    assert all(not t.is_inference() for t in state.values())
    if recovery == "dream_kd":
        assert results["synthesis"]["synthesized_images"] >= 12 and "target_acc" in results["synthesis"]


def test_bf16_autocast_in_the_synthesizer_on_the_cpu(digits_teacher):
    from dfkd.synthesis import DeepInversion

    teacher, data = digits_teacher
    seen = []
    handle = teacher.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        DeepInversion(teacher=teacher, image_shape=data.image_shape, num_classes=10,
                      pixel_bounds=data.pixel_bounds(), iterations=2, mixed_precision=True).synthesize(8)
    finally:
        handle.remove()
    assert torch.bfloat16 in seen


def test_flagship_gpu_paths_under_ddp_with_two_processes(tmp_path, image_tree):
    run_dir = tmp_path / "run"
    env = {**os.environ, "DFKD_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "dfkd.run", *GPU_PATHS, f"data.root={image_tree}", "trainer=ddp",
         "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={run_dir}",
         "pruning.scope=layer"],  # global pruning of this barely trained width-4 teacher can empty a
                                  # whole layer, which is refused (tests/test_pruning.py)
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["recovered"]["sparsity"] >= 0.9 - 1e-3
    assert (run_dir / "synthetic_pool_rank1.pt").is_file()
