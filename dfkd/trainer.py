"""Lightning Trainers built from conf/trainer (cpu, gpu, ...) plus per-stage settings."""

from __future__ import annotations

import logging
import time
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from dfkd.config import build
from dfkd.errors import DfkdError

log = logging.getLogger("dfkd")

# Expected and harmless here: in-memory data needs no workers; short runs log rarely.
# The frozen teacher is in eval mode on purpose.
for _pattern in (".*does not have many workers.*", ".*is smaller than the logging interval.*",
                 ".*GPU available but not used.*", ".*`isinstance.*LeafSpec.*",
                 ".*module\\(s\\) in eval mode at the start of training.*",
                 ".*`IterableDataset` has `__len__` defined.*"):
    warnings.filterwarnings("ignore", _pattern)


class _NoAdvert(logging.Filter):
    """Drops Lightning's "Tip" to install its cloud logger, printed at every fit (teacher, each
    recovery) between dfkd's own lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoAdvert())


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


# of the synthesis figures, the ones a progress line shows (W&B and the CSV log have them all)
HEADLINE = ("synthesis/target_acc", "synthesis/class_balance", "synthesis/bn_loss")


class ProgressLog(Callback):
    """Plain log lines for runs without a progress bar (Slurm, CI, run.log): the logged figures
    and the time so far, after every epoch, or every ``every_n_steps`` optimizer steps and at the
    end. A long teacher training or recovery is never silent for an hour. In step mode the
    validation figures get a line of their own when a validation ends: the step's line comes
    before that step's validation, and would show the previous one's figures as if they were new."""

    def __init__(self, stage: str, every_n_steps: int | None = None) -> None:
        self.stage, self.every = stage, every_n_steps

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def _line(self, trainer, where: str, validation: bool | None = None) -> None:
        """``validation``: only the val/ figures (True), none of them (False), or all (None)."""
        if not trainer.is_global_zero:
            return
        figures = ", ".join(f"{k} {v.item():.4g}" for k, v in sorted(trainer.callback_metrics.items())
                            if v.numel() == 1 and (not k.startswith("synthesis/") or k in HEADLINE)
                            and (validation is None or k.startswith("val/") == validation))
        log.info("%s %s: %s (%.0f s)", self.stage, where, figures or "-", time.perf_counter() - self.start)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.every is None:
            self._line(trainer, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and (step % self.every == 0 or step == trainer.max_steps):
            self._line(trainer, f"step {step}/{trainer.max_steps}", validation=False)

    def on_validation_end(self, trainer, pl_module):
        if self.every and not trainer.sanity_checking:
            self._line(trainer, f"step {trainer.global_step}/{trainer.max_steps}, validation", validation=True)


# conf/trainer settings that are dfkd's, not the Lightning Trainer's
OWN_SETTINGS = ("channels_last",)


def make_trainer(cfg: DictConfig, stage: str, progress_every: int | None = None, callbacks=(),
                 **settings) -> L.Trainer:
    """``cfg`` is conf/trainer; ``settings`` are what differs between teacher training and
    recovery (max_steps, logger, ...). Without a progress bar, ``stage`` logs plain lines every
    epoch, or every ``progress_every`` steps."""
    callbacks = list(callbacks)
    if not cfg.get("enable_progress_bar", True):
        callbacks.append(ProgressLog(stage, progress_every))
    lightning = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in OWN_SETTINGS])
    return build(lightning, "trainer", callbacks=callbacks, **settings)


def device_of(cfg: DictConfig) -> torch.device:
    """The device evaluation runs on, matching the trainer's accelerator."""
    accelerator = str(cfg.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
