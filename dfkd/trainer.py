"""Lightning Trainers built from conf/trainer (cpu, gpu, ...) plus per-stage settings."""

from __future__ import annotations

import logging
import time
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from dfkd.errors import DfkdError, build

log = logging.getLogger("dfkd")

# Expected and harmless here: in-memory data needs no workers; short runs log rarely.
# The frozen teacher is in eval mode on purpose.
for _pattern in (".*does not have many workers.*", ".*is smaller than the logging interval.*",
                 ".*GPU available but not used.*", ".*`isinstance.*LeafSpec.*",
                 ".*module\\(s\\) in eval mode at the start of training.*",
                 ".*`IterableDataset` has `__len__` defined.*"):
    warnings.filterwarnings("ignore", _pattern)


def validate(cfg: DictConfig) -> None:
    """Refuse DDP inside a local multirun: Lightning relaunches the command line once per rank,
    and each relaunch would start the whole sweep again (use hydra/launcher=slurm instead)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if "ddp" in str(cfg.get("strategy", "")) and "BasicLauncher" in launcher:
        raise DfkdError(
            "trainer=ddp cannot run inside a local sweep (-m): Lightning starts the extra ranks by "
            "re-running the command line, which would relaunch the sweep. Sweep with one device per "
            "run (trainer=gpu), or fan the sweep out with hydra/launcher=slurm.")


class EpochLog(Callback):
    """One log line per epoch (the last batch's logged figures and the time so far), for runs
    without a progress bar: a long teacher training is not silent for an hour."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        figures = ", ".join(f"{k} {v.item():.4g}" for k, v in sorted(trainer.callback_metrics.items())
                            if v.numel() == 1)
        log.info("%s epoch %d/%d: %s (%.0f s)", self.stage, trainer.current_epoch + 1, trainer.max_epochs,
                 figures or "-", time.perf_counter() - self.start)


# conf/trainer settings that are dfkd's, not the Lightning Trainer's
OWN_SETTINGS = ("channels_last",)


def make_trainer(cfg: DictConfig, **stage) -> L.Trainer:
    """``cfg`` is conf/trainer; ``stage`` sets what differs between teacher training and
    recovery (max_steps, logger, callbacks, ...)."""
    return build(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in OWN_SETTINGS]), "trainer", **stage)


def device_of(cfg: DictConfig) -> torch.device:
    """The device evaluation runs on, matching the trainer's accelerator."""
    accelerator = str(cfg.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
