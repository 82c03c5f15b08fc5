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


def _built(cfg, group):
    """What the option of ``group`` makes: the object it builds, or what it decides."""
    from dfkd.config import build
    from dfkd.teacher import build_model

    if group == "model":
        model = build_model(cfg.model, 0)
        shape = (1, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
        return type(model).__name__, tuple(model.eval()(torch.zeros(shape)).shape)
    if group == "synthesis":
        synth = build(cfg.synthesis.synthesizer, "synthesis")
        return synth.func.__name__, synth.keywords.get("competition_weight", 0) > 0
    if group == "trainer":
        t = cfg.trainer
        return t.accelerator, "ddp" in str(t.get("strategy", "")), t.get("num_nodes", 1)
    if group == "teacher":
        return cfg.teacher.label_smoothing > 0, cfg.teacher.checkpoint
    if group == "deploy":
        d = build(cfg.deploy, "deploy")
        return d.latency, d.export, d.onnx
    if group == "logger":
        return cfg.logger.get("_target_", "none").rsplit(".", 1)[-1]
    obj = build(cfg[group], group)
    return type(obj).__name__, getattr(obj, "name", None), getattr(obj, "method", None)


# each option of each group, and what it must make (a new option needs a row here)
MAKES = {
    ("data", "digits"): ("DigitsDataModule", "digits", None),
    ("data", "cifar10"): ("CIFARDataModule", "cifar10", None),
    ("data", "cifar100"): ("CIFARDataModule", "cifar100", None),
    ("data", "cifar10_jpg"): ("ImageFolderDataModule", "cifar10_jpg", None),
    ("data", "image_folder"): ("ImageFolderDataModule", "image_folder", None),
    ("model", "digits_cnn"): ("DigitsCNN", (1, 10)),
    ("model", "resnet18"): ("CifarResNet", (1, 10)),
    ("model", "resnet34"): ("CifarResNet", (1, 10)),
    ("model", "resnet50"): ("CifarResNet", (1, 10)),
    ("model", "mobilenetv2"): ("MobileNetV2", (1, 10)),
    ("model", "vgg16"): ("VGG16BN", (1, 10)),
    ("pruning", "magnitude"): ("Unstructured", None, "l1"),
    ("pruning", "random"): ("Unstructured", None, "random"),
    ("pruning", "iterative"): ("Iterative", None, "l1"),
    ("pruning", "nm"): ("NM", None, None),
    ("pruning", "structured"): ("Structured", None, None),
    ("deploy", "default"): (True, True, True),
    ("deploy", "none"): (False, False, False),
    ("recovery", "dream_kd"): ("SyntheticKD", "dream_kd", None),
    ("recovery", "noise_kd"): ("SyntheticKD", "noise_kd", None),
    ("recovery", "real_kd"): ("RealKD", "real_kd", None),
    ("recovery", "finetune"): ("FineTune", "finetune", None),
    ("recovery", "none"): ("NoRecovery", "none", None),
    ("synthesis", "fast"): ("FastSynthesizer", False),
    ("synthesis", "deepinversion"): ("DeepInversion", False),
    ("synthesis", "adi"): ("DeepInversion", True),
    ("synthesis", "noise"): ("Noise", False),
    ("teacher", "default"): (False, None),
    ("teacher", "cifar"): (True, None),
    ("trainer", "cpu"): ("cpu", False, 1),
    ("trainer", "gpu"): ("gpu", False, 1),
    ("trainer", "ddp"): ("gpu", True, 1),
    ("trainer", "multinode"): ("gpu", True, 2),
    ("logger", "wandb"): "WandbLogger",
    ("logger", "csv"): "CSVLogger",
    ("logger", "none"): "none",
}
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def test_every_option_has_an_expectation():
    assert sorted(MAKES) == sorted(o for o in OPTIONS if o != ("model", "custom"))


@pytest.mark.parametrize("group,option", sorted(MAKES))
def test_every_config_option_makes_what_it_names(make_cfg, group, option):
    root = ["data.root=/nonexistent"] if option == "image_folder" else []
    if group == "model" and option != "digits_cnn":
        root = ["data=cifar10"]  # 32x32 colour images: what the CIFAR architectures are built for
    assert _built(make_cfg(f"{group}={option}", *root, fast=False), group) == MAKES[group, option]


def test_an_architecture_that_cannot_take_the_images_is_refused_before_training(make_cfg, tmp_path):
    cfg = make_cfg("model=vgg16", f"paths.cache_dir={tmp_path / 'cache'}")  # digits: 8x8 grey
    with pytest.raises(DfkdError, match=r"model=vgg16 cannot take data=digits's images .*model=digits_cnn"):
        run(cfg)
    assert _no_work_done(tmp_path / "cache", tmp_path)


def test_a_model_that_returns_more_than_logits_is_refused_before_training(make_cfg, tmp_path, monkeypatch):
    (tmp_path / "tuplenets.py").write_text(
        "from dfkd.models import DigitsCNN\n\n"
        "class Net(DigitsCNN):\n"
        "    def forward(self, x):\n"
        "        return super().forward(x), x.flatten(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_cfg("model=custom", "model.path=tuplenets.Net", "model.kwargs={num_classes: 10}",
                   f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(DfkdError, match=r"model=custom returns a tuple, not a tensor of logits.*model\.path"):
        run(cfg)
    assert _no_work_done(tmp_path / "cache", tmp_path)


def test_custom_model_needs_its_import_path(make_cfg, tmp_path):
    cfg = make_cfg("model=custom", f"paths.cache_dir={tmp_path}", fast=False)
    with pytest.raises(DfkdError, match=r"model\.path"):
        run(cfg)


def test_the_slurm_launcher_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0


@pytest.mark.parametrize("experiment", sorted(f.stem for f in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(make_cfg, experiment):
    make_cfg(f"+experiment={experiment}", fast=False)


def test_recovery_baselines_share_the_budget(make_cfg):
    methods = ("dream_kd", "noise_kd", "real_kd", "finetune")
    budgets = {m: make_cfg(f"recovery={m}").recovery for m in methods}
    for key in ("steps", "batch_size", "temperature", "loss", "optimizer"):
        assert len({str(budgets[m][key]) for m in methods}) == 1, key


def test_unknown_architecture_or_data_set_is_refused(make_cfg):
    with pytest.raises(MissingConfigException, match="model"):
        make_cfg("model=resnet9000")
    with pytest.raises(MissingConfigException, match="data"):
        make_cfg("data=imagenet21k")


def _no_work_done(cache_dir: Path, out: Path) -> bool:
    return not list(cache_dir.glob("teachers/*")) and not (out / "results.json").exists()


@pytest.mark.parametrize("override,message", [
    ("recovery.optimizer.momentum=0", r"recovery\.optimizer cannot build its optimizer.*Nesterov"),
    ("recovery.optimizer.lr=-0.1", r"recovery\.optimizer cannot build its optimizer.*learning rate"),
    ("recovery.optimizer._target_=torch.optim.Adam", r"recovery\.optimizer cannot build.*~recovery\.optimizer\.nesterov"),
    ("teacher.optimizer.lr=-1", r"teacher\.optimizer cannot build its optimizer"),
])
def test_an_optimizer_that_cannot_be_built_is_refused_before_work(make_cfg, tmp_path, override, message):
    with pytest.raises(DfkdError, match=message):
        run(make_cfg(override, f"paths.cache_dir={tmp_path / 'cache'}"))
    assert _no_work_done(tmp_path / "cache", tmp_path)


@pytest.mark.parametrize("override,setting", [
    ("pruning.ratio=1.0", "pruning.ratio"),
    ("pruning.ratio=-0.5", "pruning.ratio"),
    ("pruning.method=magic", "pruning.method"),
    ("recovery.steps=0", "recovery.steps"),
    ("recovery.pool.size=10", "recovery.pool"),
    ("recovery.pool.shift=translate", "recovery.pool.shift"),
    ("recovery.pool.jitter=-1", "recovery.pool.jitter"),
    ("recovery.pool.initial_batches=9", "recovery.pool.initial_batches=9 batches"),  # 9 x 256 > 2048: never full
    ("recovery.feature_weight=-1", "recovery.feature_weight"),
    ("recovery.anchor_weight=-0.1", "recovery.anchor_weight"),
    ("recovery.teacher_flip=true", "data.hflip=false"),  # digits: a mirrored digit is another digit
    ("pruning=structured pruning.coupled=stem", "pruning.coupled"),
    ("recovery.feature_layers=conv", "recovery.feature_layers"),
    ("recovery.mix=cutout", "recovery.mix"),
    ("recovery=real_kd recovery.loss=l1", "recovery.loss"),
    ("model.batch_norm=false recovery=real_kd recovery.feature_weight=1 recovery.feature_layers=batchnorm",
     "recovery.feature_layers=penultimate"),
    ("recovery=real_kd recovery.mix_alpha=0", "recovery.mix_alpha"),
    ("pruning=structured recovery.feature_weight=1", "recovery.feature_weight=0 with structured"),
    ("pruning=structured pruning.importance=taylor pruning.dreams=0", "pruning.dreams"),
    ("model.batch_norm=false recovery=real_kd pruning=structured pruning.importance=taylor", "pruning.importance=l1"),
    ("synthesis.synthesizer.g_steps=0", "synthesis.synthesizer.g_steps"),
    ("synthesis.synthesizer.generators=0", "synthesis.synthesizer.generators"),
    ("synthesis.synthesizer.warmup_latents=random", "synthesis.synthesizer.warmup_latents"),
    ("synthesis.synthesizer.diversity_weight=-1", "synthesis.synthesizer.diversity_weight"),
    ("synthesis.synthesizer.bn_weight=-1", "synthesis.synthesizer.bn_weight"),
    ("data.batch_size=0", "data.batch_size"),
    ("recovery.steps=30.5", "recovery.steps"),
    ("+prunning.ratio=0.5", "Did you mean pruning\\? Give it without the '\\+': pruning.ratio=0.5"),
    ("pruning.ratio=abc", "pruning.ratio"),
    ("data.num_classes=7", "data.num_classes"),
    ("data.mean=abc data.std=[0.3]", "data.mean='abc' must be numbers"),
    ("teacher.checkpoint=/nonexistent/teacher.pt", "teacher.checkpoint"),
])
def test_bad_settings_stop_before_any_work(make_cfg, tmp_path, override, setting):
    cfg = make_cfg(*override.split(), f"paths.cache_dir={tmp_path / 'cache'}")
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
    # a torch.compile'd model's keys, and a training module's: the teacher's weights beside a loss's buffer
    for name, state in (("compiled.pt", {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}),
                        ("module.pt", {"state_dict": {**{f"teacher.{k}": v for k, v in net.state_dict().items()},
                                                      "criterion.weight": torch.ones(10)}})):
        torch.save(state, tmp_path / name)
        loaded = load_weights(DigitsCNN(width=16), tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    # two networks that both fit (a module holding a teacher and an unpruned student): refused, not guessed
    torch.save({f"{who}.{k}": v for who in ("teacher", "student") for k, v in net.state_dict().items()},
               tmp_path / "both.pt")
    with pytest.raises(DfkdError, match="more than one set of weights"):
        load_weights(DigitsCNN(width=16), tmp_path / "both.pt")


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


def test_a_pool_larger_than_memory_is_refused_before_any_work(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr("dfkd.recovery.available_memory", lambda: 8 * 2**30)  # a machine with 8 GiB free
    cfg = make_cfg("recovery.pool.size=20000000", f"paths.cache_dir={tmp_path / 'cache'}")  # 5 GB of dreams
    with pytest.raises(DfkdError, match=r"recovery\.pool\.size=20000000 .* 4\.8 GiB, more than half"):
        run(cfg)
    assert _no_work_done(tmp_path / "cache", tmp_path)


def test_a_sweep_with_one_bad_value_starts_no_job(tmp_path):
    proc = _cli(tmp_path, "-m", "pruning.ratio=0.5,1.5", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "job `pruning.ratio=1.5" in proc.stderr and "no job was started" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list((tmp_path / "sweep").iterdir()) and not (tmp_path / "cache").exists()


def test_a_run_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = _cli(tmp_path, f"hydra.run.dir={tmp_path / 'a_file' / 'run'}")
    assert proc.returncode == 2
    assert f"hydra.run.dir={tmp_path / 'a_file' / 'run'}: the run folder cannot be written" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_resume_that_contradicts_its_checkpoint_is_refused(tmp_path):
    from dfkd.rundir import record_teacher, resume_argv

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- pruning.ratio=0.9\n- model.width=16\n")
    for change, path in (("pruning.ratio=0.5", "pruning"), ("model.width=8", "model"), ("seed=3", "seed"),
                         ("recovery=noise_kd", "recovery.name"), ("recovery.pool.size=64", "recovery.pool"),
                         ("recovery.student_bn=frozen", "recovery.student_bn"), ("data.val_size=10", "data"),
                         ("synthesis.synthesizer.generators=2", "synthesis.synthesizer.generators")):
        with pytest.raises(DfkdError, match=rf"change {path.replace('.', '[.]')} \(from"):
            resume_argv(["dfkd.run", f"resume={tmp_path}", change])
    # what may change: where the data is, the trainer, the budget, the synthesis weights; a value
    # given again, or given as the default it already had, is no change
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    record_teacher(tmp_path, teacher)
    argv = resume_argv(["dfkd.run", f"resume={tmp_path}", "data.root=/elsewhere", "trainer=gpu",
                        "recovery.steps=9", "synthesis.synthesizer.bn_weight=3", "pruning.ratio=0.90", "seed=0"])
    # the resumed run distils the very teacher it started with, whatever the trainer now is
    assert f"teacher.checkpoint='{teacher.resolve()}'" in argv


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
