"""Stage 3: recover the pruned student.

    dfkd      KD on images dreamed from the teacher (conf/synthesis), no real data
    noise_kd  the same KD on Gaussian noise (baseline: the floor)
    real_kd   the same KD on the real train split (baseline: the ceiling)
    finetune  cross-entropy on the real train split's labels (baseline)
    none      keep the pruned student as it is

Every method runs with the same budget (recovery.steps optimizer steps of
recovery.batch_size images), so their rows compare.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig
from torch import nn

from dfkd.data import ImageDataModule
from dfkd.errors import DfkdError, build, check
from dfkd.models import has_batchnorm
from dfkd.modules import ClassifierModule, DistillModule
from dfkd.synthesis import Noise, SyntheticDataModule
from dfkd.trainer import make_trainer

log = logging.getLogger(__name__)

SYNTHETIC, REAL = ("dfkd", "noise_kd"), ("real_kd", "finetune")
METHODS = (*SYNTHETIC, *REAL, "none")


def validate(cfg: DictConfig, teacher: nn.Module) -> None:
    """Refuse a recovery that cannot work, before any work is done."""
    method = cfg.recovery.method
    check(method in METHODS, f"recovery.method={method!r} is unknown; choose recovery= one of "
          f"{list(METHODS)}.")
    if method == "none":
        return
    check(cfg.recovery.steps >= 1 and cfg.recovery.batch_size >= 1,
          f"recovery.steps={cfg.recovery.steps} and recovery.batch_size={cfg.recovery.batch_size} "
          f"must both be at least 1.")
    check(cfg.recovery.temperature > 0, f"recovery.temperature={cfg.recovery.temperature} must be > 0.")
    if method == "dfkd":
        synthesizer = get_class(cfg.synthesis.synthesizer._target_)
        if synthesizer.needs_batchnorm and not has_batchnorm(teacher):
            raise DfkdError(
                f"synthesis={synthesizer.__name__} dreams images by matching the teacher's "
                f"BatchNorm statistics, but the teacher ({teacher.__class__.__name__}) has no "
                f"BatchNorm layer. Use a teacher with BatchNorm, or a recovery that does not "
                f"need it: recovery=noise_kd (no data) or recovery=real_kd (real data).")


class SynthesisMonitor(Callback):
    """Logs the quality and cost of every new synthetic batch, and a grid of dreams now and then
    (to W&B when it is the logger, and always as PNG files in the run folder)."""

    def __init__(self, data: ImageDataModule, folder: Path, every_n_steps: int) -> None:
        self.data, self.folder, self.every = data, Path(folder), max(int(every_n_steps), 1)
        self.seen, self.last_grid = 0, -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        source = trainer.datamodule
        if source.refreshes > self.seen:
            self.seen = source.refreshes
            pl_module.log_dict({**source.synthesizer.stats, "synthesis/images": float(source.images_made)})
        step = trainer.global_step
        if trainer.is_global_zero and source.last_batch is not None and step // self.every > self.last_grid:
            self.last_grid = step // self.every
            self.save_grid(trainer, source.last_batch, step)

    def save_grid(self, trainer: L.Trainer, images, step: int) -> None:
        from torchvision.utils import make_grid, save_image

        grid = make_grid(self.data.denormalize(images[:64]), nrow=8)
        self.folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.folder / f"grid_step{step:06d}.png")
        if hasattr(trainer.logger, "log_image"):
            trainer.logger.log_image(key="synthesis/grid", images=[grid], step=step)


def recover(cfg: DictConfig, teacher: nn.Module, student: nn.Module, data: ImageDataModule,
            logger) -> dict:
    """Run recovery in place on ``student``; return what it cost."""
    rc = cfg.recovery
    if rc.method == "none":
        return {}
    out = Path(cfg.paths.output_dir)
    optimizer = build(rc.optimizer, "recovery.optimizer")
    schedule = {"warmup_fraction": rc.get("warmup_fraction", 0.0), "channels_last": cfg.trainer.channels_last}
    if rc.method == "finetune":
        module = ClassifierModule(student, data.num_classes, optimizer, config_group="recovery", **schedule)
    else:
        module = DistillModule(teacher, student, data.num_classes, optimizer,
                               temperature=rc.temperature, ce_weight=rc.ce_weight, **schedule)
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=out / "checkpoints", save_last=True,
                                                 every_n_train_steps=rc.val_every_n_steps)]
    if rc.method in SYNTHETIC:
        sc = cfg.synthesis
        factory = Noise if rc.method == "noise_kd" else build(sc.synthesizer, "synthesis.synthesizer")
        synthesizer = factory(
            teacher=teacher, image_shape=data.image_shape, num_classes=data.num_classes,
            pixel_bounds=data.pixel_bounds(), seed=cfg.seed)
        synthesizer.student = student  # for terms that look at student-teacher disagreement (ADI)
        source = SyntheticDataModule(synthesizer, kd_batch_size=rc.batch_size,
                                     steps_per_epoch=rc.val_every_n_steps, seed=cfg.seed,
                                     real=data, **sc.pool)
        callbacks.append(SynthesisMonitor(data, out / "synthetic", sc.image_grid_every_n_steps))
    else:
        source = data.with_batch_size(rc.batch_size)
        log.info("recovery=%s uses the real train split.", rc.method)
    trainer = make_trainer(cfg.trainer, max_steps=rc.steps, max_epochs=-1, logger=logger or False,
                           callbacks=callbacks, gradient_clip_val=rc.gradient_clip_val,
                           val_check_interval=rc.val_every_n_steps, check_val_every_n_epoch=None,
                           default_root_dir=str(out))
    try:
        # resume=: Lightning finds the ModelCheckpoint's last.ckpt (and says so if there is none)
        trainer.fit(module, datamodule=source, ckpt_path="last" if cfg.get("resume") else None)
    finally:
        if isinstance(source, SyntheticDataModule) and source.images is not None:
            # Dreams are finished work: keep them whatever happened to the KD run.
            name = ("synthetic_pool.pt" if trainer.world_size == 1
                    else f"synthetic_pool_rank{trainer.global_rank}.pt")
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"images": source.images.cpu(), "targets": source.targets.cpu(),
                        "mean": data.mean, "std": data.std}, out / name)
    return source.summary() if isinstance(source, SyntheticDataModule) else {}
