"""The real entry point on digits with a small budget: recovery works and leaves a usable run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfkd import pruning
from dfkd.models import DigitsCNN
from conftest import FAST, wandb_log_holds
from dfkd.run import run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


RECOVERS = 0.035  # "dfkd recovers": within 3.5 points of the teacher, at 90%, with the test budget


def test_data_free_recovery_restores_accuracy_and_keeps_sparsity(make_cfg, tmp_path):
    results = run(make_cfg("pruning.ratio=0.9"))
    teacher, pruned, recovered = (results[k]["acc"] for k in ("teacher", "pruned", "recovered"))
    assert pruned < 0.3
    assert recovered >= pruned + 0.7
    assert recovered >= teacher - RECOVERS, (teacher, recovered)
    assert results["recovered"]["sparsity"] >= 0.9 - 1e-3

    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["recovered"]["acc"] == recovered and on_disk["config"]["synthesis"] == "FastSynthesizer"
    assert set(on_disk["times"]) >= {"teacher", "prune", "recover", "evaluate", "total"}
    assert on_disk["synthesis"]["synthesized_images"] > 0
    state = torch.load(tmp_path / "student.pt", weights_only=True)
    student = DigitsCNN(width=16)
    student.load_state_dict(state)  # a plain state dict: no masks, real zeros
    assert pruning.sparsity(student)["overall"] >= 0.9 - 1e-3
    assert (tmp_path / "synthetic_pool.pt").is_file() and list((tmp_path / "synthetic").glob("*.png"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # what it must beat: the same KD on Gaussian noise does not pass the same bar
    noise = run(make_cfg("pruning.ratio=0.9", "recovery=noise_kd"))["recovered"]["acc"]
    assert noise < teacher - RECOVERS, (teacher, noise)


def test_dreams_beat_noise_with_the_same_budget(make_cfg):
    dreams = run(make_cfg("recovery=dream_kd", "pruning.ratio=0.95"))["recovered"]["acc"]
    noise = run(make_cfg("recovery=noise_kd", "pruning.ratio=0.95"))["recovered"]["acc"]
    # Measured with these settings at 95% sparsity (seed 0): dfkd 0.862, noise_kd 0.658. At 90%
    # the lead is smaller on digits (seeds 0/1/2: 0.980/0.971/0.982 against 0.949/0.938/0.836).
    assert dreams >= noise + 0.10


def test_real_data_baselines_recover_too(make_cfg):
    # Measured (seed 0): real_kd 0.996, finetune 0.993, from 0.096 pruned.
    for method in ("real_kd", "finetune"):
        results = run(make_cfg(f"recovery={method}"))
        assert results["recovered"]["acc"] >= results["pruned"]["acc"] + 0.6, method
        assert results["recovered"]["sparsity"] >= 0.9 - 1e-3


def test_teacher_is_cached_and_reused(make_cfg):
    first = run(make_cfg("recovery=none"))
    second = run(make_cfg("recovery=none", "pruning.ratio=0.5"))
    assert second["teacher"]["cached"] is True
    assert second["teacher"]["source"] == first["teacher"]["source"]
    assert second["teacher"]["acc"] == first["teacher"]["acc"]


def test_a_validation_split_judges_teacher_pruned_and_student(make_cfg, tmp_path):
    """With data.val_size, every stage is scored on the split that settings are chosen on, so that
    "within x points of the teacher" can be read there; the test split is still reported."""
    from dfkd import report
    from dfkd.data import DigitsDataModule
    from dfkd.evaluate import evaluate

    results = run(make_cfg("data.val_size=200", "recovery=finetune", "recovery.steps=30"))
    val = {k: results[k]["val_acc"] for k in ("teacher", "pruned", "recovered")}
    assert val["pruned"] < val["teacher"] - 0.3 and val["recovered"] > val["pruned"] + 0.3, val
    data = DigitsDataModule(val_size=200)  # the 200 images, scored again from the saved models
    for k, path in (("teacher", results["teacher"]["source"]), ("recovered", tmp_path / "student.pt")):
        model = DigitsCNN(width=16)
        model.load_state_dict(torch.load(path, weights_only=True))
        assert val[k] == evaluate(model, data, torch.device("cpu"), split="val")["acc"], k
        assert results[k]["acc"] == pytest.approx(evaluate(model, data, torch.device("cpu"))["acc"]), k
    kept = json.loads(Path(results["teacher"]["source"]).with_suffix(".json").read_text())
    assert kept["val_acc"] == val["teacher"]  # beside the cached teacher: not scored again
    assert "validation" in report.table(results).splitlines()[0]
    row = report.summarize([json.loads((tmp_path / "results.json").read_text())])[0]
    assert row["teacher_val"][0] == pytest.approx(val["teacher"])
    # without a validation split, no such figure and no such column
    plain = run(make_cfg("recovery=none"))
    assert "val_acc" not in plain["teacher"] and "validation" not in report.table(plain)


@pytest.mark.parametrize("method", ["dream_kd", "adi"])
def test_recovery_never_changes_the_teacher(make_cfg, digits_teacher, tmp_path, method):
    """Weights, BatchNorm running statistics and accuracy of the teacher, after a recovery
    (ADI's competition term and the synthesizer both run the teacher in training-like ways)."""
    import copy

    from dfkd.config import build
    from dfkd.evaluate import evaluate

    teacher, data = digits_teacher
    cfg = make_cfg("recovery.steps=20", *(["synthesis=adi"] if method == "adi" else []))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    acc_before = evaluate(teacher, data, torch.device("cpu"))["acc"]
    student = pruning.prune(copy.deepcopy(teacher).requires_grad_(True).train(), 0.9)
    build(cfg.recovery, "recovery").recover(teacher, student, data, cfg.trainer, None, tmp_path, seed=0)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert evaluate(teacher, data, torch.device("cpu"))["acc"] == acc_before


def test_wandb_logs_offline_without_a_login(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))           # no ~/.netrc: nobody is logged in
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = run(make_cfg("logger=wandb", "recovery.steps=10"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and results["recovered"]["sparsity"] >= 0.9 - 1e-3
    # The offline transaction log (what `wandb sync` uploads) holds the config, the summary
    # figures and the image grid.
    wandb_log_holds(runs[0], b"recovered/acc", b"train/kd_loss", b"pruning", b"synthesis/grid")
    assert list(runs[0].rglob("media/images/synthesis/*.png"))


def test_sweep_from_the_command_line_reuses_the_teacher(tmp_path, cache_dir):
    env = {**os.environ, "DFKD_CACHE_DIR": str(tmp_path / "cache")}
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "dfkd.run", "-m", "pruning.ratio=0.5,0.8", *FAST,
         "recovery.steps=10", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((sweep / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["config"]["pruning_ratio"] for r in results] == [0.5, 0.8]
    assert [r["teacher"]["cached"] for r in results] == [False, True]
    assert len(list((tmp_path / "cache" / "teachers").glob("*.pt"))) == 1


def test_same_seed_gives_the_same_figures(make_cfg, tmp_path):
    def once(name):
        return run(make_cfg("recovery.steps=20", f"paths.cache_dir={tmp_path / name / 'cache'}",
                            f"paths.output_dir={tmp_path / name}"))

    first = once("a")
    torch.rand(1000)  # whatever ran before in the same process must not matter
    second = once("b")
    assert second["teacher"]["cached"] is False
    for stage in ("teacher", "pruned", "recovered"):
        assert first[stage]["acc"] == second[stage]["acc"], stage


def test_an_interrupted_run_resumes_with_one_command(tmp_path, cache_dir):
    """`resume=RUN_DIR` goes on from the last checkpoint, in the same folder, with the settings
    the run was started with (here a 30-step run stopped after its step-30 checkpoint, whose
    results.json is gone, resumed with a longer budget)."""
    import csv

    env = {**os.environ, "DFKD_CACHE_DIR": str(cache_dir)}
    folder = tmp_path / "run"
    first = subprocess.run(
        [sys.executable, "-m", "dfkd.run", *FAST, "logger=csv", "recovery.steps=30",
         f"hydra.run.dir={folder}"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    clock = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["callbacks"]
    before = next(state["seconds"] for name, state in clock.items() if name.startswith("RecoveryClock"))
    (folder / "results.json").unlink()  # as if it had stopped before the end
    recorded = (folder / ".hydra" / "config.yaml").read_text()

    resumed = subprocess.run(
        [sys.executable, "-m", "dfkd.run", f"resume={folder}", "recovery.steps=60"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    results = json.loads((folder / "results.json").read_text())
    assert results["config"]["recovery_steps"] == 60 and results["config"]["pruning_ratio"] == 0.9
    # its recovery time is the whole of it: the first session's up to its checkpoint, and the resumed part's
    assert before > 0 and results["times"]["recover"] > before, (results["times"], before)
    assert results["config"]["recovery_loss"] == "kl"
    assert results["recovered"]["sparsity"] >= 0.9 - 1e-3
    # The resumed part trained steps 31-60 only, and the original record is untouched.
    with open(folder / "csv" / "version_1" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/kd_loss")]
    assert steps and min(steps) >= 30 and max(steps) >= 50
    assert (folder / ".hydra" / "config.yaml").read_text() == recorded
    assert (folder / ".hydra" / "resumed" / "overrides.yaml").is_file()

    again = subprocess.run([sys.executable, "-m", "dfkd.run", f"resume={folder}"],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert again.returncode == 2 and "has finished" in again.stderr
    nowhere = subprocess.run([sys.executable, "-m", "dfkd.run", f"resume={tmp_path / 'nope'}"],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert nowhere.returncode == 2 and "not the folder of a dfkd run" in nowhere.stderr


def test_a_run_interrupted_while_its_teacher_trains_goes_on_from_the_teachers_last_epoch(tmp_path):
    """Hours of teacher training are not lost to a Ctrl-C or a killed job: resume= goes on from
    the last epoch the teacher finished (never with a teacher of other settings), and the
    checkpoint goes once the teacher is cached."""
    import signal
    import time

    env = {**os.environ, "DFKD_CACHE_DIR": str(tmp_path / "cache")}
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dfkd.run", *FAST, "teacher.epochs=100", f"hydra.run.dir={folder}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    saved = folder / "teacher_checkpoints" / "epochs" / "last.ckpt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not saved.is_file():
        time.sleep(0.1)
    assert saved.is_file(), "no teacher checkpoint within 120 s"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert f"resume={folder}" in stderr and "it goes on from its last finished epoch" in stderr
    epochs_done = torch.load(saved, map_location="cpu", weights_only=False)["epoch"] + 1
    assert 1 <= epochs_done < 100 and [p.name for p in saved.parent.iterdir()] == ["last.ckpt"]  # one file

    def resume(*extra):
        return subprocess.run([sys.executable, "-m", "dfkd.run", f"resume={folder}", *extra], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=600)

    other = resume("teacher.optimizer.lr=0.01")  # another teacher: refused, the checkpoint kept
    assert other.returncode == 2 and "holds the training of another teacher" in other.stderr, other.stderr[-3000:]
    assert saved.is_file()
    resumed = resume()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (folder / "run.log").read_text().split("Teacher training goes on from")[-1]
    assert f"teacher epoch {epochs_done + 1}/100" in log and "teacher epoch 1/100" not in log
    assert (folder / "results.json").is_file() and not (folder / "teacher_checkpoints").exists()


def test_a_sweep_stopped_by_sigterm_stops_at_once_says_so_and_names_the_jobs_it_did_not_run(tmp_path, cache_dir):
    """A scheduler's SIGTERM (a time limit, kill, timeout) stops the run at once, even while it
    dreams (Lightning alone would go on to the next training step, then exit with status 0 as if
    the job had finished); the status says it (143), and the message gives the resume command and
    the sweep's jobs that never ran."""
    import signal
    import time

    env = {**os.environ, "DFKD_CACHE_DIR": str(cache_dir)}
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "dfkd.run", "-m", *FAST, "synthesis.synthesizer.warmup_steps=100000",
                             "pruning.ratio=0.5,0.7", f"hydra.sweep.dir={sweep}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    log = sweep / "0" / "run.log"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and "Recovery (dream_kd)" not in (log.read_text() if log.is_file() else ""):
        time.sleep(0.2)
    time.sleep(1.0)  # into the generator's warm-up of 100,000 steps
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never left dreaming behind a failed test
    assert proc.returncode == 143, stderr[-3000:]
    assert time.monotonic() - start < 30  # at once, not at the end of the warm-up
    assert "stopped by SIGTERM" in stderr and f"resume={sweep / '0'}" in stderr
    later = stderr.split("did not run")[-1]
    assert "pruning.ratio=0.7" in later and "pruning.ratio=0.5" not in later
    assert not (sweep / "1").exists()


def test_teacher_training_logs_every_epoch_without_a_progress_bar(make_cfg, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="dfkd"):
        run(make_cfg("recovery=none", "teacher.epochs=2", f"paths.cache_dir={tmp_path / 'cache'}"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher epoch")]
    assert [line.split(":")[0] for line in lines] == ["teacher epoch 1/2", "teacher epoch 2/2"]
    assert "train/acc" in lines[-1] and "train/loss" in lines[-1]
