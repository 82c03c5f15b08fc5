"""Experiment loggers from conf/logger: W&B (offline unless logged in), CSV, or none."""

from __future__ import annotations

import logging
import netrc
import os
import sys
from pathlib import Path

from hydra.utils import get_class
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from dfkd.config import build

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_logger(cfg: DictConfig) -> Logger | None:
    """The run's logger; W&B gets the resolved config at creation, so even a crashed offline run
    syncs with it, and keeps its files inside the run folder."""
    if not cfg.logger or not cfg.logger.get("_target_"):
        return None
    if issubclass(get_class(cfg.logger._target_), WandbLogger):
        extra = {}
        if cfg.logger.get("offline") is None and not os.environ.get("WANDB_MODE"):
            extra["offline"] = not wandb_logged_in()
        Path(cfg.logger.save_dir).mkdir(parents=True, exist_ok=True)
        earlier = Path(cfg.logger.save_dir) / "wandb" / "latest-run"
        if cfg.get("resume") and earlier.exists():  # go on with the interrupted run's W&B run
            extra.update(id=earlier.resolve().name.rsplit("-", 1)[-1], resume="allow")
        # ``config`` would clash with instantiate's own first argument: pass it to the partial
        logger = build(cfg.logger, "logger", _partial_=True, **extra)(
            config=OmegaConf.to_container(cfg, resolve=True))
        # Lightning passes wandb.init anonymous=None unasked, and this wandb warns on every run that the
        # (deprecated) setting has no effect: left out, it is W&B's own default all the same
        if getattr(logger, "_wandb_init", {}).get("anonymous", False) is None:
            del logger._wandb_init["anonymous"]
        if extra.get("offline"):
            log.info("W&B runs offline (no login found); sync later with: wandb sync %s/wandb/offline-run-*",
                     cfg.logger.save_dir)
        return logger
    return build(cfg.logger, "logger")


def write_summary(logger: Logger | None, summary: dict) -> None:
    """Final figures: W&B run summary, or the logger's metrics file."""
    if logger is None:
        return
    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(summary)
    else:
        logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        logger.save()


def finish(logger: Logger | None) -> None:
    """End the W&B run, so the next job of a multirun gets its own (always call in finally)."""
    if isinstance(logger, WandbLogger) and "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
