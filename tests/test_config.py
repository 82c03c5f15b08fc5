"""Every config composes; bad settings stop before any work with a message naming the setting."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from dfkd.errors import DfkdError
from dfkd.models import DigitsCNN
from dfkd.run import run

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "experiment")


@pytest.mark.parametrize("group,option", [(g, f.stem) for g in GROUPS
                                          for f in sorted((CONF / g).glob("*.yaml"))])
def test_every_config_option_composes(make_cfg, group, option):
    cfg = make_cfg(f"{group}={option}", fast=False)
    assert cfg.data.name and cfg.recovery.name and "ratio" in cfg.pruning


@pytest.mark.parametrize("experiment", sorted(f.stem for f in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(make_cfg, experiment):
    make_cfg(f"+experiment={experiment}", fast=False)


def test_recovery_baselines_share_the_budget(make_cfg):
    methods = ("dream_kd", "noise_kd", "real_kd", "finetune")
    budgets = {m: make_cfg(f"recovery={m}").recovery for m in methods}
    for key in ("steps", "batch_size", "temperature", "optimizer"):
        assert len({str(budgets[m][key]) for m in methods}) == 1, key


def test_unknown_architecture_or_data_set_is_refused(make_cfg):
    with pytest.raises(MissingConfigException, match="model"):
        make_cfg("model=resnet9000")
    with pytest.raises(MissingConfigException, match="data"):
        make_cfg("data=imagenet21k")


def _no_work_done(cache_dir: Path, out: Path) -> bool:
    return not list(cache_dir.glob("teachers/*")) and not (out / "results.json").exists()


@pytest.mark.parametrize("override,setting", [
    ("pruning.ratio=1.0", "pruning.ratio"),
    ("pruning.ratio=-0.5", "pruning.ratio"),
    ("pruning.method=magic", "pruning.method"),
    ("recovery.steps=0", "recovery.steps"),
    ("recovery.pool.size=10", "recovery.pool"),
    ("synthesis.synthesizer.g_steps=0", "synthesis.synthesizer.g_steps"),
    ("pruning.ratio=abc", "pruning.ratio"),
    ("data.num_classes=7", "data.num_classes"),
    ("teacher.checkpoint=/nonexistent/teacher.pt", "teacher.checkpoint"),
])
def test_bad_settings_stop_before_any_work(make_cfg, tmp_path, override, setting):
    cfg = make_cfg(override, f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(DfkdError, match=setting.replace(".", r"\.")):
        run(cfg)
    assert _no_work_done(tmp_path / "cache", tmp_path)


def test_teacher_without_batchnorm_is_refused_for_dreaming(make_cfg, tmp_path):
    cfg = make_cfg("model.batch_norm=false", f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(DfkdError, match="BatchNorm") as err:
        run(cfg)
    assert "recovery=noise_kd" in str(err.value) and "recovery=real_kd" in str(err.value)
    assert _no_work_done(tmp_path / "cache", tmp_path)


def test_checkpoint_that_does_not_fit_lists_the_differences(make_cfg, tmp_path):
    path = tmp_path / "wide.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in DigitsCNN(width=8).state_dict().items()}},
               path)
    cfg = make_cfg(f"teacher.checkpoint={path}")
    with pytest.raises(DfkdError, match="does not fit") as err:
        run(cfg)
    assert "shape mismatch" in str(err.value) and "features.0.weight" in str(err.value)


@pytest.mark.parametrize("make,says", [
    (lambda p: p.write_bytes(b"not a checkpoint at all"), "is not a file torch.save wrote"),
    (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    (lambda p: p.mkdir(), "is a folder, not a file"),
    (lambda p: torch.save(DigitsCNN(width=16), p), "holds Python objects beyond tensors"),
    (lambda p: torch.save({"weights": [1, 2]}, p), "neither a state dict"),
    (lambda p: None, "does not exist"),
])
def test_unreadable_checkpoints_say_what_is_wrong_and_how_to_save_one(tmp_path, make, says):
    from dfkd.teacher import load_weights

    path = tmp_path / "teacher.pt"
    make(path)
    with pytest.raises(DfkdError, match=r"teacher\.checkpoint=.*" + says) as err:
        load_weights(DigitsCNN(width=16), path)
    if "exist" not in says and "folder" not in says:
        assert "torch.save(model.state_dict(), PATH)" in str(err.value)


def test_a_checkpoint_from_an_older_torch_without_num_batches_tracked_loads(tmp_path):
    from dfkd.teacher import load_weights

    net = DigitsCNN(width=16)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    loaded = load_weights(DigitsCNN(width=16), tmp_path / "old.pt")
    assert torch.equal(loaded.features[0].weight, net.features[0].weight)


def test_a_fitting_checkpoint_with_wrappers_loads(make_cfg, tmp_path):
    from dfkd.teacher import load_weights

    net = DigitsCNN(width=16)
    path = tmp_path / "ok.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    loaded = load_weights(DigitsCNN(width=16), path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                  net.state_dict().values()))


def _cli(tmp_path, *args):
    env = {**os.environ, "DFKD_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "dfkd.run", *args, "logger=none"],
                          capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)


def test_command_line_error_is_one_paragraph_without_traceback(tmp_path):
    proc = _cli(tmp_path, "pruning.ratio=1.5", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "dfkd: error: pruning.ratio=1.5 is outside [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_ddp_inside_a_local_sweep_is_refused(tmp_path):
    proc = _cli(tmp_path, "-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                "pruning.ratio=0.5,0.9", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2
    assert "trainer=ddp cannot run inside a local sweep" in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_resume_rewrites_the_command_line_once(tmp_path):
    """resume=DIR becomes DIR's own overrides plus new ones; a DDP rank re-running the rewritten
    command line gets it unchanged."""
    from dfkd.rundir import resume_argv

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- pruning.ratio=0.5\n- recovery=noise_kd\n")
    argv = resume_argv(["dfkd.run", f"resume={tmp_path}", "trainer=gpu"])
    assert argv[1:4] == ["pruning.ratio=0.5", "recovery=noise_kd", "trainer=gpu"]
    assert f"hydra.run.dir='{tmp_path.resolve()}'" in argv
    assert resume_argv(argv) == argv
    assert resume_argv(["dfkd.run", "pruning.ratio=0.5"]) == ["dfkd.run", "pruning.ratio=0.5"]
