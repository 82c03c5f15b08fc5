"""Shared fixtures: the real Hydra config, composed for a fast CPU run in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF = str(Path(__file__).resolve().parents[1] / "conf")

# Small budgets that still show recovery on digits (see test_end_to_end.py for the margins).
FAST_BUDGET = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "teacher.epochs=15",
    "recovery.steps=60",
    "recovery.val_every_n_steps=30",
    "deploy=none",  # parameters, FLOPs and file sizes only: latency and export have tests of their own
]
FAST_POOL = [  # for the methods that distil on synthetic images (they have a pool)
    "recovery.pool.batch_size=128",
    "recovery.pool.size=512",
    "recovery.pool.initial_batches=2",
    "recovery.pool.refresh_every=20",
]
FAST = FAST_BUDGET + FAST_POOL  # the default recovery (dream_kd) on the command line


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One teacher cache for the whole test session: each digits teacher is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """compose(overrides) -> the real config, fast settings, writing into tmp_path."""

    def _make(*overrides: str, fast: bool = True) -> DictConfig:
        paths = [f"paths.output_dir={tmp_path}", f"paths.cache_dir={cache_dir}"]
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=[*paths, *(FAST_BUDGET if fast else []), *overrides])
            if fast and "pool" in cfg.recovery:
                cfg = compose("config", overrides=[*paths, *FAST, *overrides])
        return cfg

    return _make


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory, cache_dir):
    """A trained (cached) digits teacher and its data module, frozen."""
    from dfkd.teacher import build_model, cache_file, obtain_teacher
    from hydra.utils import instantiate

    out = tmp_path_factory.mktemp("teacher_run")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}",
                                           *FAST])
    data = instantiate(cfg.data)
    data.setup()
    cache = cache_file(cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer)
    teacher, _ = obtain_teacher(build_model(cfg.model, cfg.teacher.seed), cfg.teacher, data, cfg.trainer,
                                cache, out)
    return teacher, data


def write_image_tree(root: Path, classes: int = 3, train: int = 6, test: int = 2, size: int = 16) -> Path:
    """A tiny ImageFolder tree: root/{train,test}/class_k/*.png, one dominant colour per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pixels[..., k % 3] += 180
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory) -> Path:
    return write_image_tree(tmp_path_factory.mktemp("images"))


def wandb_log_holds(run_dir: Path, *keys: bytes, timeout: float = 30.0) -> None:
    """Assert that an offline W&B run's transaction log (what `wandb sync` uploads) holds every
    key. wandb's service process may still be flushing it when finish() returns, so wait for it."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        record = next(Path(run_dir).glob("*.wandb")).read_bytes()
        if all(key in record for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for key in keys:
        assert key in record, key
