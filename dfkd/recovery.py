"""Stage 3: recover the pruned student. Each method is one class, built by Hydra from the
``_target_`` of its conf/recovery/*.yaml:

    dream_kd  SyntheticKD  KD on images dreamed from the teacher (conf/synthesis), no real data
    noise_kd  SyntheticKD  the same KD on Gaussian noise (baseline: the floor)
    real_kd   RealKD       the same KD on the real train split (baseline: the ceiling)
    finetune  FineTune     cross-entropy on the real train split's labels (baseline)
    none      NoRecovery   keep the pruned student as it is

Every method runs with the same budget (``steps`` optimizer steps of ``batch_size`` images), so
their rows compare. A method owns its validation (run before the teacher is trained), its
LightningModule and its source of batches; adding one is one class and one YAML file.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig
from torch import nn

from dfkd.data import ImageDataModule
from dfkd.errors import DfkdError, check, check_choice
from dfkd.models import has_batchnorm
from dfkd.modules import (FEATURE_LAYERS, KD_LOSSES, ClassifierModule, DistillModule, NetModule, check_mix,
                          matching_taps, recalibrate_batchnorm)
from dfkd.synthesis import SynthesisMonitor, SyntheticDataModule, make_synthesizer
from dfkd.trainer import device_of, make_trainer

log = logging.getLogger(__name__)

# what the student's BatchNorm running statistics do during recovery: re-estimated on the KD
# batches as usual (train), kept as the teacher's (frozen), or kept during KD and re-estimated on
# CALIBRATION_BATCHES KD batches with the final weights (recalibrate)
STUDENT_BN = ("train", "frozen", "recalibrate")
CALIBRATION_BATCHES = 50


class RecoveryClock(Callback):
    """The wall seconds of a recovery over every session of a resumed run: those before its last
    checkpoint travel in the checkpoint (``earlier`` once restored), so that a resumed run's
    recovery time is the whole of it, not only the part after the resume."""

    def __init__(self) -> None:  # made just before the fit: its set-up (the first dreams) counts
        self.earlier, self.start = 0.0, time.perf_counter()

    def state_dict(self) -> dict:
        return {"seconds": self.earlier + time.perf_counter() - self.start}

    def load_state_dict(self, state_dict: dict) -> None:
        self.earlier = float(state_dict.get("seconds", 0.0))


class Recovery:
    """The shared budget and the Lightning fit; subclasses choose the module and the batches."""

    uses_real_data = False
    distills = True  # the teacher labels the batches (recovery=finetune: the data set's labels)
    earlier_seconds = 0.0  # after recover(): its wall seconds before a resume (RecoveryClock)

    def __init__(self, name: str, steps: int = 300, batch_size: int = 128, temperature: float = 4.0,
                 loss: str = "kl", ce_weight: float = 0.0, gradient_clip_val: float | None = None,
                 warmup_fraction: float = 0.0,
                 val_every_n_steps: int = 50, optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 student_bn: str = "train", feature_weight: float = 0.0, feature_layers: str = "penultimate",
                 mix: str = "none", mix_alpha: float = 1.0, anchor_weight: float = 0.0, teacher_flip: bool = False,
                 **synthetic_only) -> None:
        # An experiment file sets the pool for whichever method runs; real-data methods have none.
        unknown = sorted(set(synthetic_only) - {"synthesizer", "pool", "image_grid_every_n_steps"})
        check(not unknown, f"recovery.{unknown[0] if unknown else ''} is not a setting of recovery={name}.")
        check(all(isinstance(v, int) and v >= 1 for v in (steps, batch_size)),
              f"recovery.steps={steps} and recovery.batch_size={batch_size} must both be whole numbers, at least 1.")
        check(float(temperature) > 0, f"recovery.temperature={temperature} must be > 0.")
        check_choice("recovery.loss", loss, KD_LOSSES)
        check(0.0 <= float(warmup_fraction) < 1.0,
              f"recovery.warmup_fraction={warmup_fraction} must lie in [0, 1).")
        check(int(val_every_n_steps) >= 1, f"recovery.val_every_n_steps={val_every_n_steps} must be >= 1.")
        check_choice("recovery.student_bn", student_bn, STUDENT_BN)
        check(float(feature_weight) >= 0, f"recovery.feature_weight={feature_weight} must be >= 0 (0: logits only).")
        check_choice("recovery.feature_layers", feature_layers, FEATURE_LAYERS)
        check_mix(mix, mix_alpha)
        check(float(anchor_weight) >= 0, f"recovery.anchor_weight={anchor_weight} must be >= 0 (0: no anchor).")
        check(isinstance(teacher_flip, bool), f"recovery.teacher_flip={teacher_flip!r} must be true or false.")
        self.anchor_weight, self.teacher_flip = float(anchor_weight), teacher_flip
        self.student_bn, self.mix, self.mix_alpha = student_bn, mix, float(mix_alpha)
        self.feature_weight, self.feature_layers = float(feature_weight), feature_layers
        self.name, self.steps, self.batch_size = name, int(steps), int(batch_size)
        self.temperature, self.loss, self.ce_weight = float(temperature), loss, float(ce_weight)
        self.gradient_clip_val, self.warmup_fraction = gradient_clip_val, float(warmup_fraction)
        self.val_every_n_steps, self.optimizer = int(val_every_n_steps), optimizer

    def validate(self, model: nn.Module, data: ImageDataModule, seed: int) -> None:
        """Refuse what cannot work, given the (untrained) architecture, before any work."""
        if self.feature_weight:
            matching_taps(model, model, self.feature_layers, self.feature_weight)
        check(not self.teacher_flip or not self.distills or data.hflip,
              f"recovery.teacher_flip=true labels KD batches by the teacher's mean output on the images and their "
              f"mirror images, but data.hflip=false says a mirrored {data.name} image may not keep its class: set "
              f"recovery.teacher_flip=false.")

    def settings(self) -> dict:
        return {"recovery": self.name, "recovery_steps": self.steps, "recovery_batch_size": self.batch_size,
                "recovery_loss": self.loss}

    def with_steps(self, steps: int) -> Recovery:
        """The same recovery with a budget of ``steps`` (a round of pruning in rounds)."""
        clone = copy.copy(self)
        clone.steps = int(steps)
        return clone

    # -- what subclasses choose ------------------------------------------------------------
    def module(self, teacher: nn.Module, student: nn.Module, num_classes: int, channels_last: bool) -> NetModule:
        return DistillModule(teacher, student, num_classes, self.optimizer, temperature=self.temperature,
                             loss=self.loss, ce_weight=self.ce_weight, feature_weight=self.feature_weight,
                             feature_layers=self.feature_layers, mix=self.mix, mix_alpha=self.mix_alpha,
                             teacher_flip=self.teacher_flip, **self.schedule(channels_last))

    def schedule(self, channels_last: bool) -> dict:
        return {"warmup_fraction": self.warmup_fraction, "channels_last": channels_last,
                "bn_statistics": "train" if self.student_bn == "train" else "frozen",
                "anchor_weight": self.anchor_weight}

    def source(self, teacher: nn.Module, student: nn.Module, data: ImageDataModule, seed: int,
               out: Path, curve: bool = True) -> tuple[L.LightningDataModule, list[Callback]]:
        """The batches to train on, and callbacks that watch them. ``curve``: an accuracy curve on
        real images (off in strict data-free mode)."""
        raise NotImplementedError

    def calibration_batches(self, source: L.LightningDataModule, data: ImageDataModule,
                            device: torch.device) -> Iterator[torch.Tensor]:
        """Model input like the KD batches, for re-estimating BatchNorm statistics."""
        raise NotImplementedError

    def keep(self, source: L.LightningDataModule, trainer: L.Trainer, data: ImageDataModule, out: Path) -> dict:
        """After the fit, whatever happened: save what is worth keeping; return its summary."""
        return {}

    # -- the run -----------------------------------------------------------------------------
    def recover(self, teacher: nn.Module, student: nn.Module, data: ImageDataModule, trainer: DictConfig,
                logger, out: Path, seed: int = 0, resume: bool = False, callbacks: list[Callback] = (),
                checkpoints: bool = True, real_data: bool = True) -> dict:
        """Train ``student`` in place; return what the recovery cost (and, for dreams, how good
        they were). ``trainer`` is conf/trainer; ``resume`` goes on from out/checkpoints/last.ckpt;
        ``real_data=False`` (strict data-free mode): no accuracy curve on real images."""
        out = Path(out)
        module = self.module(teacher, student, data.num_classes, trainer.channels_last)
        source, own = self.source(teacher, student, data, seed, out, curve=real_data)
        clock = RecoveryClock()
        own.append(clock)
        if checkpoints:
            own.append(ModelCheckpoint(dirpath=out / "checkpoints", save_last=True,
                                       every_n_train_steps=self.val_every_n_steps))
        fit = make_trainer(trainer, "recovery", progress_every=self.val_every_n_steps,
                           callbacks=[*own, *callbacks], max_steps=self.steps, max_epochs=-1,
                           logger=logger or False, enable_checkpointing=checkpoints,
                           gradient_clip_val=self.gradient_clip_val, val_check_interval=self.val_every_n_steps,
                           check_val_every_n_epoch=None, default_root_dir=str(out))
        log.info("Recovery (%s): %d steps of %d images.", self.name, self.steps, self.batch_size)
        try:
            # resume: Lightning finds the ModelCheckpoint's last.ckpt (and says so if there is none)
            fit.fit(module, datamodule=source, ckpt_path="last" if resume else None)
        finally:
            summary = self.keep(source, fit, data, out)
            self.earlier_seconds = clock.earlier  # spent before a resume, in the sessions before this one
        if self.student_bn == "recalibrate":  # on the trainer's device (Lightning's teardown left it on the CPU)
            device, back = device_of(trainer), next(student.parameters()).device
            seen = recalibrate_batchnorm(student.to(device), self.calibration_batches(source, data, device))
            student.to(back)
            log.info("Student BatchNorm statistics re-estimated on %d images.", seen)
        return summary


class NoRecovery(Recovery):
    """Keep the pruned student as it is (recovery=none)."""

    distills = False

    def recover(self, *args, **kwargs) -> dict:
        return {}


class RealKD(Recovery):
    """KD on the real train split (recovery=real_kd): the ceiling for data-free recovery."""

    uses_real_data = True

    def source(self, teacher, student, data, seed, out, curve=True):
        log.info("recovery=%s uses the real train split.", self.name)
        return data.with_batch_size(self.batch_size), []

    def calibration_batches(self, source, data, device):
        for x, _ in islice(source.train_dataloader(), CALIBRATION_BATCHES):
            yield data.model_input(x.to(device), train=True)


class FineTune(RealKD):
    """Cross-entropy on the real train split's labels (recovery=finetune)."""

    distills = False

    def module(self, teacher, student, num_classes, channels_last):
        if self.mix != "none" or self.feature_weight or self.loss != "kl" or self.teacher_flip:
            log.warning("recovery=finetune trains on labels: it ignores recovery.mix=%s, "
                        "recovery.feature_weight=%g, recovery.loss=%s and recovery.teacher_flip=%s (settings of "
                        "the KD methods).", self.mix, self.feature_weight, self.loss, self.teacher_flip)
        return ClassifierModule(student, num_classes, self.optimizer, config_group="recovery",
                                **self.schedule(channels_last))


class SyntheticKD(Recovery):
    """KD on synthetic images (recovery=dream_kd: dreamed by conf/synthesis; recovery=noise_kd:
    Gaussian noise), served from a bounded pool refreshed during KD (``pool``). The dreams are
    finished work: they are saved whatever happens to the KD run."""

    def __init__(self, name: str, synthesizer: Callable, pool: dict, image_grid_every_n_steps: int = 100,
                 **budget) -> None:
        super().__init__(name, **budget)
        self.synthesizer, self.pool = synthesizer, dict(pool)
        self.grid_every = int(image_grid_every_n_steps)
        SyntheticDataModule.check_pool(**self.pool)

    @property
    def synthesizer_class(self) -> type:
        return getattr(self.synthesizer, "func", self.synthesizer)

    @staticmethod
    def check_dreamable(kind: type, model: nn.Module, remedy: str = "") -> None:
        """Refuse a synthesizer that needs BatchNorm statistics for a teacher that has none;
        ``remedy``: what else to set, for a caller other than recovery=dream_kd."""
        if getattr(kind, "needs_batchnorm", False) and not has_batchnorm(model):
            raise DfkdError(
                f"synthesis={kind.__name__} dreams images by matching the teacher's BatchNorm "
                f"statistics, but the teacher ({model.__class__.__name__}) has no BatchNorm layer. "
                f"Use a teacher with BatchNorm, or " + (remedy or
                f"a recovery that does not need it: recovery=noise_kd (no data) or recovery=real_kd (real "
                f"data); in strict data-free mode, synthesis=noise too (its held-out dreams are made by "
                f"synthesis=...)."))

    def validate(self, model, data, seed):
        super().validate(model, data, seed)
        self.check_dreamable(self.synthesizer_class, model)
        self.make_synthesizer(model, data, seed)  # its settings are checked on the architecture
        need, free = 4 * self.pool["size"] * math.prod(data.image_shape), available_memory()
        check(free is None or need <= free / 2,
              f"recovery.pool.size={self.pool['size']} dreams of shape {tuple(data.image_shape)} take "
              f"{need / 2**30:.1f} GiB, more than half of the {(free or 0) / 2**30:.1f} GiB this machine "
              f"has free: lower recovery.pool.size (the pool is refreshed during KD; it need not hold "
              f"every dream).")

    def make_synthesizer(self, teacher, data, seed):
        return make_synthesizer(self.synthesizer, teacher, data, seed)

    def source(self, teacher, student, data, seed, out, curve=True):
        synthesizer = self.make_synthesizer(teacher, data, seed)
        synthesizer.student = student  # for terms that look at student-teacher disagreement (ADI)
        stream = SyntheticDataModule(synthesizer, kd_batch_size=self.batch_size, steps_per_epoch=self.val_every_n_steps,
                                     seed=seed, real=data if curve else None, **self.pool)
        return stream, [SynthesisMonitor(data.denormalize, out / "synthetic", self.grid_every)]

    def calibration_batches(self, source, data, device):
        for _ in range(CALIBRATION_BATCHES):
            yield source.sample()[0].to(device)

    def keep(self, source, trainer, data, out):
        if source.images is not None:
            name = ("synthetic_pool.pt" if trainer.world_size == 1
                    else f"synthetic_pool_rank{trainer.global_rank}.pt")
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"images": source.images.cpu(), "targets": source.targets.cpu(),
                        "mean": data.mean, "std": data.std}, out / name)
        return source.summary()


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable; None elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return 1024 * int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
