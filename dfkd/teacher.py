"""Stage 1: the teacher. Build the architecture, then load the user's checkpoint or train it on
the real train split, cached on disk by architecture, data, recipe, seed and training hardware (a
sweep trains it once), with its test accuracy beside it."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dfkd.config import build
from dfkd.data import ImageDataModule
from dfkd.errors import DfkdError, check, first_line
from dfkd.evaluate import evaluate, near_chance
from dfkd.modules import ClassifierModule, freeze
from dfkd.report import BN_FIT_WARNING, bn_fit_warning, normalization_warning
from dfkd.rundir import TEACHER_CHECKPOINTS
from dfkd.synthesis.bn_stats import input_statistics
from dfkd.trainer import device_of, make_trainer

log = logging.getLogger(__name__)


def build_model(model_cfg: DictConfig, seed: int) -> nn.Module:
    """Instantiate conf/model with initial weights seeded by ``seed`` (teacher.seed, so a cached
    teacher is the same whoever trained it); a constructor error names the setting."""
    with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed alone
        torch.default_generator.manual_seed(seed)  # the CPU's stream only: an accelerator's stays as it was
        model = build(model_cfg, "model")
    check(isinstance(model, nn.Module), f"model={model_cfg.name} did not build an nn.Module; point "
          f"it at a torch.nn.Module class or factory.")
    return model


def check_fits(model: nn.Module, model_name: str, data: ImageDataModule) -> None:
    """The architecture takes the data's images and gives one logit per class: tried on two blank
    images now, before a teacher is trained or loaded, not found deep inside training."""
    shape = tuple(data.image_shape)
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(2, *shape))
    except Exception as err:  # noqa: BLE001 - a model may refuse a shape by assertion, ValueError, ...
        raise DfkdError(
            f"model={model_name} cannot take data={data.name}'s images (channels, height, width = "
            f"{shape}): {first_line(err)}. data.in_channels must be the channels the model takes, and "
            f"data.image_size a size it takes (a teacher of your own: the size it was trained at). Images this small "
            f"may be downsampled to nothing by the architecture: use larger images (the CIFAR architectures "
            f"are built for 32x32), or a smaller architecture (data=digits, 8x8 grey, goes with "
            f"model=digits_cnn).") from None
    finally:
        model.train(was_training)
    check(isinstance(logits, torch.Tensor),
          f"model={model_name} returns a {type(logits).__name__}, not a tensor of logits: dfkd distils, prunes "
          f"and exports a model whose forward returns the class logits alone (batch x classes). Wrap it in a "
          f"module whose forward returns only the logits (e.g. model(x)[0]), and point model.path at that.")
    check(logits.shape == (2, data.num_classes),
          f"model={model_name} gives {tuple(logits.shape[1:])} outputs per image but data={data.name} has "
          f"{data.num_classes} classes: make them agree (data.num_classes, or model.kwargs for model=custom).")


SAVE_HINT = "Save the teacher's weights with torch.save(model.state_dict(), PATH)."


def _unwrap_state_dict(obj, setting: str) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    check(isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()),
          f"{setting} holds neither a state dict nor a dict with a 'state_dict' entry. {SAVE_HINT}")
    for prefix in ("module.", "model.", "net."):  # DataParallel / LightningModule wrappers
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _under_prefix(state: dict, own: dict, setting: str) -> dict:
    """``state`` as it is if its keys fit ``own``'s; else the entries under the one prefix that
    makes them fit (a torch.compile'd model's ``_orig_mod.``, a training module's ``teacher.`` beside
    its loss's buffers, ...), said in the log; else ``state`` unchanged, for the mismatch message."""
    needed = {k for k in own if not k.endswith("num_batches_tracked")}

    def fits(keys) -> bool:
        return needed <= set(keys) <= set(own)

    if fits(state):
        return state
    prefixes = {k[:i + 1] for k in state for i, c in enumerate(k) if c == "." and k[i + 1:] in own}
    fitting = sorted(p for p in prefixes
                     if fits({k[len(p):] for k in state if k.startswith(p)}))
    check(len(fitting) <= 1, f"{setting} holds more than one set of weights that fits the model (under "
          f"{', '.join(repr(p) for p in fitting)}), and dfkd cannot tell which is the teacher. Save the "
          f"teacher's own state dict: torch.save(model.state_dict(), 'teacher.pt').")
    if not fitting:
        return state
    prefix = fitting[0]
    others = sorted(k for k in state if not k.startswith(prefix))
    log.info("%s: the teacher's weights are those under '%s'%s.", setting, prefix,
             f" ({len(others)} other entries ignored: {', '.join(others[:3])})" if others else "")
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _read(path: Path, setting: str) -> dict:
    check(path.exists(), f"{setting} does not exist. Point it at a saved state dict of the teacher, "
          f"or set teacher.checkpoint=null to train a teacher on the real data.")
    check(path.is_file(), f"{setting} is a folder, not a file. Point it at the file torch.save wrote.")
    check(path.stat().st_size > 0, f"{setting} is empty (0 bytes): the save that wrote it did not "
          f"finish. {SAVE_HINT}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # garbage, not pickled objects
            raise DfkdError(f"{setting} is not a file torch.save wrote, or it is damaged ({err}). "
                            f"{SAVE_HINT}") from err
        raise DfkdError(f"{setting} holds Python objects beyond tensors (a whole pickled model, or "
                        f"an object from a training framework), which dfkd does not unpickle: "
                        f"unpickling can run arbitrary code. {SAVE_HINT} If you trust the file, extract its "
                        f"weights once: torch.save(torch.load(PATH, weights_only=False)['state_dict'], 'teacher.pt') "
                        f"for a Lightning checkpoint, or torch.save(torch.load(PATH, weights_only=False)"
                        f".state_dict(), 'teacher.pt') for a whole model.") from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise DfkdError(f"{setting} is not a file torch.save wrote, or it is damaged ({err}). "
                        f"{SAVE_HINT}") from err


def load_weights(model: nn.Module, path: str | os.PathLike, setting: str | None = None,
                 advice: str | None = None) -> nn.Module:
    """Load a checkpoint into ``model``: whatever torch's strict loading accepts (old files without
    BatchNorm's num_batches_tracked too); a mismatch lists the first differences. ``setting``
    names the file in messages (default: teacher.checkpoint=PATH); ``advice`` replaces the advice
    given when the file does not fit."""
    path = Path(path).expanduser()
    setting = setting or f"teacher.checkpoint={path}"
    state = _unwrap_state_dict(_read(path, setting), setting)
    own = model.state_dict()
    state = _under_prefix(state, own, setting)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(items)}): {', '.join(items[:5])}"
                 for name, items in (("missing", missing), ("unexpected", unexpected),
                                     ("shape mismatch", shapes)) if items]
        raise DfkdError(f"{setting} does not fit the architecture model={model.__class__.__name__}: "
                        + "; ".join(parts) + ". " + (advice or "Choose the model (and data.num_classes) "
                                                     "the checkpoint was trained with: data.in_channels for "
                                                     "the first layer's inputs, data.num_classes for the last's "
                                                     "outputs, model.width or model.kwargs for the rest."))
    model.load_state_dict(state, strict=False)  # torch fills num_batches_tracked where it is absent
    return model


# conf/trainer settings that change what a trained teacher is
TRAINER_KEY = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def cache_file(cache_dir: str | os.PathLike, model: DictConfig, data: DictConfig, teacher: DictConfig,
               trainer: DictConfig) -> Path:
    """One file per architecture (and, for model=custom, the code of its class), data set, teacher
    recipe, seed and training hardware."""
    key = {name: OmegaConf.to_container(node, resolve=True)
           for name, node in (("model", model), ("data", data), ("teacher", teacher))}
    key["trainer"] = {k: str(trainer.get(k)) for k in TRAINER_KEY}
    if model.get("path"):  # model=custom: the class's code changes the teacher too
        key["code"] = _source_digest(str(model.path))
    for setting in ("num_workers", "in_memory"):  # how images are read, not which
        key["data"].pop(setting, None)
    target = str(key["data"].get("_target_", ""))
    for stat in ("mean", "std"):  # null: the data set's own normalization, keyed as before it could be null
        if stat in key["data"] and key["data"][stat] is None:
            if target.endswith("ImageFolderDataModule"):  # its guess, 0.5 per channel
                key["data"][stat] = [0.5] * int(key["data"]["in_channels"])
            elif target.endswith("CIFARDataModule"):  # CIFAR's own statistics
                del key["data"][stat]
    for setting in ("checkpoint", "val_every_n_epochs", "min_accuracy"):  # they change no weights
        key["teacher"].pop(setting, None)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir) / "teachers" / f"{model.name}-{data.name}-seed{teacher.seed}-{digest}.pt"


def _source_digest(path: str) -> str | None:
    """A digest of the file that defines ``package.module.Class`` (None if it cannot be read:
    model=custom refuses such a path with its own message)."""
    try:
        source = Path(inspect.getsourcefile(importlib.import_module(path.rpartition(".")[0])))
        return hashlib.sha1(source.read_bytes()).hexdigest()[:10]
    except (ImportError, TypeError, ValueError, OSError):
        return None


def training_checkpoint(run_dir: Path) -> tuple[Path, Path, Path]:
    """Where a teacher training in ``run_dir`` keeps its state: the folder, the last finished
    epoch's Lightning checkpoint, and the file that names which teacher it trains."""
    saved = Path(run_dir) / TEACHER_CHECKPOINTS
    return saved, saved / "epochs" / "last.ckpt", saved / "teacher"


def train_teacher(model: nn.Module, cfg: DictConfig, data: ImageDataModule, trainer: DictConfig,
                  run_dir: Path, key: str = "") -> nn.Module:
    """``cfg`` is conf/teacher, ``trainer`` conf/trainer; ``key`` names the teacher (its cache
    file's name): training goes on from the run folder's checkpoint only of that very teacher."""
    check(len(data.train_set) >= data.batch_size,
          f"data={data.name} has {len(data.train_set)} training images, fewer than data.batch_size="
          f"{data.batch_size}: the teacher would train on no batch at all (the last, incomplete batch "
          f"is dropped). Lower data.batch_size, or add images.")
    log.info("Training the teacher on the real train split (%d images, %d epochs): this is the only "
             "stage of a data-free run that touches training data.", len(data.train_set), cfg.epochs)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = ClassifierModule(model, data.num_classes, build(cfg.optimizer, "teacher.optimizer"),
                              label_smoothing=cfg.label_smoothing, warmup_fraction=cfg.warmup_fraction,
                              channels_last=trainer.channels_last)
    curve = cfg.get("val_every_n_epochs")  # a validation-split curve (test without one); nothing is selected on it
    # every epoch's end is kept (one file), so that resume= of an interrupted run goes on from there
    # (a run folder that holds such a checkpoint is only ever entered again by resume=)
    saved, last, named = training_checkpoint(run_dir)
    if last.is_file():
        was = named.read_text().strip() if named.is_file() else "unknown"
        check(was == key, f"{saved} holds the training of another teacher ({was}) than these settings give "
              f"({key}): teacher.*, model.*, data.* and the trainer's hardware must be those the run started "
              f"with to go on with it. Resume with them, or delete that folder (rm -r {saved}) to train this "
              f"teacher from the start.")
        log.info("Teacher training goes on from %s (the epochs it had finished).", last)
    elif rank_zero_only.rank == 0:
        saved.mkdir(parents=True, exist_ok=True)
        named.write_text(key)
    fit = make_trainer(trainer, "teacher", max_epochs=cfg.epochs, logger=False, default_root_dir=str(run_dir),
                       callbacks=[ModelCheckpoint(dirpath=last.parent, filename="last", enable_version_counter=False,
                                                  save_on_train_epoch_end=True)],
                       gradient_clip_val=cfg.gradient_clip_val, num_sanity_val_steps=0,
                       check_val_every_n_epoch=curve or 1, limit_val_batches=1.0 if curve else 0)
    fit.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    return model


def scores(teacher: nn.Module, data: ImageDataModule, device, nhwc: bool) -> dict:
    """The teacher's test accuracy and, where the data have a validation split, its accuracy
    there (``val_acc``): kept beside a cached teacher, which is not evaluated again."""
    found = evaluate(teacher, data, device, channels_last=nhwc)
    if data.val_size:
        found["val_acc"] = evaluate(teacher, data, device, channels_last=nhwc, split="val")["acc"]
    return found


def obtain_teacher(model: nn.Module, cfg: DictConfig, data: ImageDataModule, trainer: DictConfig,
                   cache: Path, run_dir: Path, evaluate_it: bool = True) -> tuple[nn.Module, dict]:
    """Weights for ``model`` from teacher.checkpoint, the cache file ``cache``, or training (then
    cached); returns the frozen teacher and what is known of it: where it came from and its test
    accuracy (kept beside a cached teacher, so a cached teacher is not evaluated again;
    ``evaluate_it=False``, strict data-free mode: a checkpoint is not evaluated)."""
    found = _obtain_teacher(model, cfg, data, trainer, cache, Path(run_dir), evaluate_it)
    _drop_training_checkpoints(run_dir, cache.name)  # the teacher they trained is known now, whatever the source
    return found


def _obtain_teacher(model: nn.Module, cfg: DictConfig, data: ImageDataModule, trainer: DictConfig,
                    cache: Path, run_dir: Path, evaluate_it: bool) -> tuple[nn.Module, dict]:
    start = time.perf_counter()
    device, nhwc = device_of(trainer), trainer.channels_last
    if cfg.checkpoint:
        teacher = freeze(load_weights(model, cfg.checkpoint))
        if not evaluate_it:
            log.info("Teacher from teacher.checkpoint=%s (not evaluated: strict data-free mode)", cfg.checkpoint)
            return teacher.to(device), {"source": str(cfg.checkpoint)}
        with input_statistics(teacher) as fit:
            info = {"source": str(cfg.checkpoint), **scores(teacher, data, device, nhwc)}
        distances = fit()  # how far the real images' BN statistics are from those it was trained on
        if distances:
            info["bn_fit"] = sum(distances) / len(distances)
            if info["bn_fit"] > BN_FIT_WARNING:
                log.warning(bn_fit_warning(info["bn_fit"]))
        # a teacher dfkd trained (its facts beside it: the cache, or a run's own record on resume) saw
        # these very images; one of the user's own may have been trained with other statistics
        if data.normalization == "guessed" and not _trained_by_dfkd(Path(cfg.checkpoint)):
            info["normalization_unset"] = {"mean": list(data.mean), "std": list(data.std)}
            log.warning(normalization_warning(info["normalization_unset"]))
        log.info("Teacher from teacher.checkpoint=%s: test accuracy %.2f%% (%.0f s)", cfg.checkpoint,
                 100 * info["acc"], time.perf_counter() - start)
        weak = below_bar(info["acc"], cfg, data.num_classes)
        if weak:
            raise DfkdError(
                f"The teacher from teacher.checkpoint={cfg.checkpoint} scores {weak} on the test split of "
                f"data={data.name}, so it does not see these images as it was trained to. Check the "
                f"normalization it was trained with (data.mean={list(data.mean)}, data.std={list(data.std)}), "
                f"its input size (data.image_size={data.image_size}) and its class order (an ImageFolder "
                f"tree's classes are its folder names in alphabetical order); teacher.min_accuracy=0 goes on "
                f"with it anyway.")
        return teacher, info
    facts = cache.with_suffix(".json")
    if cache.is_file():
        teacher = freeze(load_weights(
            model, cache, setting=f"The cached teacher {cache}",
            advice=f"It was trained with another version of this architecture's code. Delete it "
                   f"(rm {cache}) and run again to train a new one."))
        known = json.loads(facts.read_text()) if facts.is_file() else {}
        if "acc" not in known or (data.val_size and "val_acc" not in known):
            known = {**known, **scores(teacher, data, device, nhwc)}
            write_atomically(facts, lambda tmp: tmp.write_text(json.dumps(known)))
        log.info("Teacher from the cache: %s, test accuracy %.2f%%", cache, 100 * known["acc"])
        return teacher, {"source": str(cache), "cached": True, **known}
    return _train_and_cache(model, cfg, data, trainer, cache, Path(run_dir))


def _trained_by_dfkd(checkpoint: Path) -> bool:
    """The checkpoint has dfkd's facts beside it: a cached teacher's accuracy, or (the teacher a
    run kept in its own folder) the run's record of its teacher."""
    try:
        facts = json.loads(checkpoint.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(facts, dict) and ("acc" in facts or "source" in facts)


def below_bar(acc: float, cfg: DictConfig, num_classes: int) -> str | None:
    """None if a teacher's test accuracy ``acc`` clears teacher.min_accuracy (null: not near
    chance); else the accuracy and the bar, in words."""
    floor = cfg.get("min_accuracy")  # checked by run.check_settings
    if not (near_chance(acc, num_classes) if floor is None else acc < floor):
        return None
    bar = "null, i.e. not near chance" if floor is None else floor
    return (f"{100 * acc:.1f}% test accuracy ({num_classes} classes, chance {100 / num_classes:.0f}%; the bar: "
            f"teacher.min_accuracy={bar})")


def _train_and_cache(model: nn.Module, cfg: DictConfig, data: ImageDataModule, trainer: DictConfig,
                     cache: Path, run_dir: Path) -> tuple[nn.Module, dict]:
    """Train a teacher; refuse it near chance (or under teacher.min_accuracy), else cache it with
    its accuracy (kept in the run folder if the cache cannot be written)."""
    start = time.perf_counter()
    _check_writable(cache.parent)  # before hours of training, not after
    train_teacher(model, cfg, data, trainer, run_dir, key=cache.name)
    teacher = freeze(model)
    known = {**scores(teacher, data, device_of(trainer), trainer.channels_last),
             "train_seconds": time.perf_counter() - start}
    weak = below_bar(known["acc"], cfg, data.num_classes)
    if weak:
        kept = run_dir / "teacher_rejected.pt"  # a teacher at chance is never cached
        torch.save(teacher.state_dict(), kept)
        _drop_training_checkpoints(run_dir, cache.name)  # its weights are kept; other settings train another
        raise DfkdError(
            f"The teacher trained to {weak}: it was not cached (its weights are in {kept}). Lower "
            f"teacher.optimizer.lr (now {cfg.optimizer.get('lr')}), train longer (teacher.epochs={cfg.epochs}), "
            f"or check the data (data.root, data.num_classes).")
    try:  # atomic: an interrupted run never leaves a half-written teacher
        write_atomically(cache, lambda tmp: torch.save(teacher.state_dict(), tmp))
        write_atomically(cache.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(known)))
    except OSError as err:
        kept = run_dir / "teacher.pt"
        torch.save(teacher.state_dict(), kept)
        log.warning("The teacher could not be cached in %s (%s); it is kept in %s: reuse it with "
                    "teacher.checkpoint=%s", cache.parent, err, kept, kept)
        return teacher, {"source": str(kept), "cached": False, **known}
    log.info("Teacher trained in %.0f s: test accuracy %.2f%%; cached at %s", known["train_seconds"],
             100 * known["acc"], cache)
    return teacher, {"source": str(cache), "cached": False, **known}


def _drop_training_checkpoints(run_dir: Path, key: str) -> None:
    """The teacher ``key`` names is kept (cache, or run folder): its training checkpoints have
    served. Those of another teacher stay (a resume with its own settings goes on with them)."""
    saved, _, named = training_checkpoint(run_dir)
    if rank_zero_only.rank == 0 and named.is_file() and named.read_text().strip() == key:
        shutil.rmtree(saved, ignore_errors=True)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DfkdError(f"The teacher cache {folder} is not writable ({err.strerror}): a teacher "
                        f"trained now could not be kept. Set DFKD_CACHE_DIR (or paths.cache_dir) to a "
                        f"writable folder.") from err


def write_atomically(path: Path, write) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
