"""trainer=ddp with 2 CPU processes (gloo): the real entry point, one short recovery."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_ddp_on_two_cpu_processes_dreams_different_images_per_rank(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "DFKD_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "dfkd.run", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.precision=32-true", "logger=none", "trainer.enable_progress_bar=false",
         "teacher.epochs=2", "recovery.steps=4", "recovery.val_every_n_steps=2",
         "synthesis.synthesizer.warmup_steps=3", "synthesis.synthesizer.g_steps=1",
         "recovery.pool.batch_size=32",
         "recovery.pool.initial_batches=1", "recovery.pool.refresh_every=2",
         f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pools = [torch.load(run_dir / f"synthetic_pool_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert pools[0]["images"].shape == pools[1]["images"].shape == (64, 1, 8, 8)
    assert not torch.equal(pools[0]["images"], pools[1]["images"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["recovered"]["sparsity"] >= 0.9 - 1e-3
    assert proc.stdout.count("recovered (dream_kd)") == 1, "only rank 0 reports"
