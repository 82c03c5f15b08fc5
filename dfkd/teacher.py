"""Stage 1: the teacher. Build the architecture, then load the user's checkpoint or train it on
the real train split, cached on disk by architecture, data, recipe, seed and training hardware (a
sweep trains it once), with its test accuracy beside it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dfkd.config import build
from dfkd.data import ImageDataModule
from dfkd.errors import DfkdError, check
from dfkd.evaluate import evaluate
from dfkd.modules import ClassifierModule, freeze
from dfkd.trainer import device_of, make_trainer

log = logging.getLogger(__name__)


def build_model(model_cfg: DictConfig, seed: int) -> nn.Module:
    """Instantiate conf/model with initial weights seeded by ``seed`` (teacher.seed, so a cached
    teacher is the same whoever trained it); a constructor error names the setting."""
    with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed alone
        torch.manual_seed(seed)
        model = build(model_cfg, "model")
    check(isinstance(model, nn.Module), f"model={model_cfg.name} did not build an nn.Module; point "
          f"it at a torch.nn.Module class or factory.")
    return model


def _unwrap_state_dict(obj) -> dict:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    check(isinstance(obj, dict), "teacher.checkpoint holds neither a state dict nor a dict with "
          "a 'state_dict' entry; save the teacher with torch.save(model.state_dict(), PATH).")
    for prefix in ("module.", "model.", "net."):  # DataParallel / LightningModule wrappers
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint into ``model``; a mismatch lists the first differences."""
    path = Path(path).expanduser()
    check(path.is_file(), f"teacher.checkpoint={path} does not exist. Point it at a saved state "
          f"dict of the teacher, or set teacher.checkpoint=null to train a teacher on the real data.")
    try:
        state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise DfkdError(f"teacher.checkpoint={path} could not be read ({err}). It must be a state "
                        f"dict written by torch.save(model.state_dict(), PATH).") from err
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(items)}): {', '.join(items[:5])}"
                 for name, items in (("missing", missing), ("unexpected", unexpected),
                                     ("shape mismatch", shapes)) if items]
        raise DfkdError(f"teacher.checkpoint={path} does not fit the architecture "
                        f"model={model.__class__.__name__}: " + "; ".join(parts) +
                        ". Choose the model (and data.num_classes) the checkpoint was trained with.")
    model.load_state_dict(state)
    return model


# conf/trainer settings that change what a trained teacher is
TRAINER_KEY = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def cache_file(cache_dir: str | os.PathLike, model: DictConfig, data: DictConfig, teacher: DictConfig,
               trainer: DictConfig) -> Path:
    """One file per architecture, data set, teacher recipe, seed and training hardware."""
    key = {name: OmegaConf.to_container(node, resolve=True)
           for name, node in (("model", model), ("data", data), ("teacher", teacher))}
    key["trainer"] = {k: str(trainer.get(k)) for k in TRAINER_KEY}
    key["data"].pop("num_workers", None)
    for setting in ("checkpoint", "val_every_n_epochs"):
        key["teacher"].pop(setting, None)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir) / "teachers" / f"{model.name}-{data.name}-seed{teacher.seed}-{digest}.pt"


def train_teacher(model: nn.Module, cfg: DictConfig, data: ImageDataModule, trainer: DictConfig,
                  run_dir: Path) -> nn.Module:
    """``cfg`` is conf/teacher, ``trainer`` conf/trainer."""
    log.info("Training the teacher on the real train split (%d images, %d epochs): this is the only "
             "stage of a data-free run that touches training data.", len(data.train_set), cfg.epochs)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = ClassifierModule(model, data.num_classes, build(cfg.optimizer, "teacher.optimizer"),
                              label_smoothing=cfg.label_smoothing, warmup_fraction=cfg.warmup_fraction,
                              channels_last=trainer.channels_last)
    curve = cfg.get("val_every_n_epochs")  # a test-split curve in the log; nothing is selected on it
    fit = make_trainer(trainer, "teacher", max_epochs=cfg.epochs, logger=False, enable_checkpointing=False,
                       default_root_dir=str(run_dir), gradient_clip_val=cfg.gradient_clip_val,
                       num_sanity_val_steps=0, check_val_every_n_epoch=curve or 1,
                       limit_val_batches=1.0 if curve else 0)
    fit.fit(module, datamodule=data)
    return model


def obtain_teacher(model: nn.Module, cfg: DictConfig, data: ImageDataModule, trainer: DictConfig,
                   cache: Path, run_dir: Path) -> tuple[nn.Module, dict]:
    """Weights for ``model`` from teacher.checkpoint, the cache file ``cache``, or training (then
    cached); returns the frozen teacher and what is known of it: where it came from and its test
    accuracy (kept beside a cached teacher, so a cached teacher is not evaluated again)."""
    start = time.perf_counter()
    device, nhwc = device_of(trainer), trainer.channels_last
    if cfg.checkpoint:
        teacher = freeze(load_weights(model, cfg.checkpoint))
        info = {"source": str(cfg.checkpoint), **evaluate(teacher, data, device, channels_last=nhwc)}
        log.info("Teacher from teacher.checkpoint=%s: test accuracy %.2f%% (%.0f s)", cfg.checkpoint,
                 100 * info["acc"], time.perf_counter() - start)
        return teacher, info
    facts = cache.with_suffix(".json")
    if cache.is_file():
        teacher = freeze(load_weights(model, cache))
        known = json.loads(facts.read_text()) if facts.is_file() else {}
        if "acc" not in known:
            known = {**known, **evaluate(teacher, data, device, channels_last=nhwc)}
            _write_atomically(facts, lambda tmp: tmp.write_text(json.dumps(known)))
        log.info("Teacher from the cache: %s, test accuracy %.2f%%", cache, 100 * known["acc"])
        return teacher, {"source": str(cache), "cached": True, **known}
    train_teacher(model, cfg, data, trainer, run_dir)
    teacher = freeze(model)
    known = {**evaluate(teacher, data, device, channels_last=nhwc), "train_seconds": time.perf_counter() - start}
    cache.parent.mkdir(parents=True, exist_ok=True)
    # atomic: an interrupted run never leaves a half-written teacher
    _write_atomically(cache, lambda tmp: torch.save(teacher.state_dict(), tmp))
    _write_atomically(facts, lambda tmp: tmp.write_text(json.dumps(known)))
    log.info("Teacher trained in %.0f s: test accuracy %.2f%%; cached at %s", known["train_seconds"],
             100 * known["acc"], cache)
    return teacher, {"source": str(cache), "cached": False, **known}


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
