"""Stage 1: the teacher. Build the architecture, then load the user's checkpoint or train it on
the real train split, cached on disk by architecture, data and seed (a sweep trains it once)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dfkd.data import ImageDataModule
from dfkd.errors import DfkdError, build, check
from dfkd.modules import ClassifierModule, freeze
from dfkd.trainer import EpochLog, make_trainer

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig) -> nn.Module:
    """Instantiate conf/model with initial weights seeded by teacher.seed (so a cached teacher
    is the same whoever trained it); a constructor error names the setting."""
    with torch.random.fork_rng(devices=[]):  # initial weights depend on teacher.seed alone
        torch.manual_seed(cfg.teacher.seed)
        model = build(cfg.model, "model")
    check(isinstance(model, nn.Module), f"model={cfg.model.name} did not build an nn.Module; point "
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


def cache_path(cfg: DictConfig) -> Path:
    """One file per (architecture, data, teacher recipe, seed)."""
    key = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "teacher")}
    key["data"].pop("num_workers", None)
    key["teacher"].pop("checkpoint", None)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    arch = cfg.model.name
    return Path(cfg.paths.cache_dir) / "teachers" / f"{arch}-{cfg.data.name}-seed{cfg.teacher.seed}-{digest}.pt"


def train_teacher(model: nn.Module, cfg: DictConfig, data: ImageDataModule) -> nn.Module:
    log.info("Training the teacher on the real train split (%d images, %d epochs): this is the only "
             "stage of a data-free run that touches training data.", len(data.train_set),
             cfg.teacher.epochs)
    L.seed_everything(cfg.teacher.seed, workers=True, verbose=False)
    tc = cfg.teacher
    module = ClassifierModule(model, data.num_classes, build(tc.optimizer, "teacher.optimizer"),
                              label_smoothing=tc.label_smoothing, warmup_fraction=tc.warmup_fraction,
                              channels_last=cfg.trainer.channels_last)
    quiet = not cfg.trainer.get("enable_progress_bar", True)
    curve = tc.get("val_every_n_epochs")  # a test-split curve in the log; nothing is selected on it
    trainer = make_trainer(cfg.trainer, max_epochs=tc.epochs, logger=False,
                           callbacks=[EpochLog("teacher")] if quiet else [],
                           enable_checkpointing=False, default_root_dir=cfg.paths.output_dir,
                           gradient_clip_val=tc.gradient_clip_val, num_sanity_val_steps=0,
                           check_val_every_n_epoch=curve or 1, limit_val_batches=1.0 if curve else 0)
    trainer.fit(module, datamodule=data)
    return model


def obtain_teacher(model: nn.Module, cfg: DictConfig, data: ImageDataModule) -> tuple[nn.Module, dict]:
    """Weights for ``model`` from teacher.checkpoint, the cache, or training; returns the frozen
    teacher and where it came from."""
    if cfg.teacher.checkpoint:
        return freeze(load_weights(model, cfg.teacher.checkpoint)), {"source": str(cfg.teacher.checkpoint)}
    path = cache_path(cfg)
    if path.is_file():
        log.info("Teacher from the cache: %s", path)
        return freeze(load_weights(model, path)), {"source": str(path), "cached": True}
    train_teacher(model, cfg, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written teacher
    log.info("Teacher cached at %s", path)
    return freeze(model), {"source": str(path), "cached": False}
