"""Entry point: ``python -m dfkd.run [overrides]``.

teacher (load or train, cached) -> prune -> evaluate -> recover -> evaluate -> report

Every stage is built from its own config group and gets only what it needs; bad settings stop the
run before any work. ``python -m dfkd.run resume=RUN_DIR`` goes on with an interrupted run
(dfkd/rundir.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from dfkd import loggers, pruning, report, rundir, trainer
from dfkd.config import build, refuse_missing
from dfkd.errors import DfkdError, check
from dfkd.evaluate import evaluate
from dfkd.teacher import build_model, cache_file, obtain_teacher

log = logging.getLogger("dfkd")


class Stopwatch(dict):
    """Wall time of each stage, in seconds."""

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - start


def run(cfg: DictConfig) -> dict:
    """The whole pipeline for one configuration; returns (and writes) its results."""
    out = Path(cfg.paths.output_dir)
    refuse_missing(cfg)
    check(isinstance(cfg.seed, int), f"seed={cfg.seed!r} must be a whole number (e.g. seed=0).")
    trainer.validate(cfg.trainer)
    data = build(cfg.data, "data")
    data.setup()
    model = build_model(cfg.model, cfg.teacher.seed)
    prune = build(cfg.pruning, "pruning")
    recovery = build(cfg.recovery, "recovery")
    recovery.validate(model, data, cfg.seed)
    device, nhwc, times = trainer.device_of(cfg.trainer), cfg.trainer.channels_last, Stopwatch()
    logger = loggers.build_logger(cfg)
    try:
        with times("teacher"):
            cache = cache_file(cfg.paths.cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer)
            teacher, teacher_info = obtain_teacher(model, cfg.teacher, data, cfg.trainer, cache, out)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        with times("prune"):
            student = prune(copy.deepcopy(teacher).requires_grad_(True).train())
        with times("evaluate"):
            pruned = {**evaluate(student, data, device, teacher, channels_last=nhwc),
                      "sparsity": pruning.sparsity(student)["overall"]}
        log.info("Pruned to %.2f%% sparsity (%s): test accuracy %.2f%% (teacher %.2f%%)",
                 100 * pruned["sparsity"], prune.describe(), 100 * pruned["acc"], 100 * teacher_info["acc"])
        with times("recover"):
            synthesis = recovery.recover(teacher, student, data, cfg.trainer, logger, out, seed=cfg.seed,
                                         resume=bool(cfg.get("resume")))
        student = pruning.make_permanent(student.cpu())
        with times("evaluate"):
            kept = pruning.check_kept(student, prune.ratio)
            recovered = {**evaluate(student, data, device, teacher, channels_last=nhwc), "sparsity": kept}
            if data.val_size:  # what experiments choose settings on
                recovered["val_acc"] = evaluate(student, data, device, split="val")["acc"]
        log.info("Recovered (%s): test accuracy %.2f%%, agreement with the teacher %.2f%%", recovery.name,
                 100 * recovered["acc"], 100 * recovered["agreement"])
        results = {
            "teacher": teacher_info, "pruned": pruned, "recovered": recovered,
            "config": {"model": cfg.model.name, "data": cfg.data.name, **prune.settings(),
                       **recovery.settings(), "synthesis": synthesis.get("synthesizer"), "seed": cfg.seed},
            "synthesis": synthesis, "sparsity_layers": pruning.sparsity(student)["layers"],
            "times": {**times, "total": sum(times.values())}, "student_path": str(out / "student.pt")}
        results["warnings"] = report.warnings(results, data.num_classes)
        for warning in results["warnings"]:
            log.warning(warning)
        if rank_zero_only.rank == 0:  # under DDP every rank ran the pipeline; one writes it down
            torch.save(student.state_dict(), out / "student.pt")
            report.write_results(results, out)
            loggers.write_summary(logger, report.flatten(
                {k: results[k] for k in ("teacher", "pruned", "recovered", "synthesis", "times")}))
            log.info("Results in %s", out / "results.json")
        return results
    finally:
        loggers.finish(logger)


def say(message: str) -> None:
    """A message for the user: on stderr, and in the run folder's run.log."""
    print(message, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("dfkd", logging.ERROR, __file__, 0, message.strip(), None, None))
            handler.flush()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg)
    except DfkdError as err:
        say(f"\ndfkd: error: {err}")
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning ends an interrupted fit with exit(1)
        if isinstance(stop, SystemExit) and stop.code in (0, None):
            raise
        say(f"\ndfkd: interrupted. Go on from the last checkpoint with: "
            f"python -m dfkd.run resume={cfg.paths.output_dir}")
        sys.exit(130)
    if torch.distributed.is_initialized():
        # Lightning leaves DDP's process group open; left to interpreter shutdown, gloo's threads
        # can abort the finished run (SIGABRT, "terminate called without an active exception").
        # Only on success: after a failure the other ranks may never join the teardown.
        torch.distributed.destroy_process_group()
    if rank_zero_only.rank == 0:
        print(report.table(results), flush=True)  # last, after the logger's own closing lines
    return results["recovered"]["acc"]  # what a Hydra sweeper would optimize


def cli() -> None:
    try:
        sys.argv = rundir.resume_argv(sys.argv)
    except DfkdError as err:
        print(f"dfkd: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
