"""Entry point: ``python -m dfkd.run [overrides]``.

teacher (load or train, cached) -> prune -> evaluate -> recover -> evaluate -> report

``python -m dfkd.run resume=RUN_DIR`` goes on with an interrupted run: the same settings, the same
folder, recovery from its last checkpoint, and the same W&B run.
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
from omegaconf import DictConfig, OmegaConf

from dfkd import loggers, pruning, recovery, report, trainer
from dfkd.errors import DfkdError, build, check
from dfkd.evaluate import evaluate
from dfkd.teacher import build_model, obtain_teacher

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
    check(not (cfg.get("resume") and (out / "results.json").exists()),
          f"The run in {out} has finished (its results.json is there): there is nothing to resume. "
          f"Start a new run without resume=.")
    missing = sorted(OmegaConf.missing_keys(cfg))
    check(not missing, f"These settings need a value: {', '.join(missing)} (set them on the command "
          f"line, e.g. {missing[0] if missing else ''}=...). data=image_folder needs data.root=PATH; "
          f"model=custom needs model.path=package.module.Class and teacher.checkpoint=PATH.")
    pruning.validate(cfg.pruning.ratio, cfg.pruning.method, cfg.pruning.scope)
    trainer.validate(cfg.trainer)
    data = build(cfg.data, "data")
    data.setup()
    model = build_model(cfg)
    recovery.validate(cfg, model)
    device, times = trainer.device_of(cfg.trainer), Stopwatch()
    logger = loggers.build_logger(cfg)
    try:
        with times("teacher"):
            teacher, teacher_info = obtain_teacher(model, cfg, data)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        with times("prune"):
            student = pruning.prune(copy.deepcopy(teacher).requires_grad_(True).train(),
                                    cfg.pruning.ratio, cfg.pruning.method, cfg.pruning.scope)
        nhwc = cfg.trainer.channels_last
        with times("evaluate"):
            results = {"teacher": {**evaluate(teacher, data, device, channels_last=nhwc), **teacher_info},
                       "pruned": {**evaluate(student, data, device, teacher, channels_last=nhwc),
                                  "sparsity": pruning.sparsity(student)["overall"]}}
        log.info("teacher %.2f%%, pruned %.2f%%", 100 * results["teacher"]["acc"],
                 100 * results["pruned"]["acc"])
        with times("recover"):
            synthesis = recovery.recover(cfg, teacher, student, data, logger)
        student = pruning.make_permanent(student.cpu())
        with times("evaluate"):
            kept = pruning.check_kept(student, cfg.pruning.ratio)
            results["recovered"] = {**evaluate(student, data, device, teacher, channels_last=nhwc),
                                    "sparsity": kept}
        results.update(
            config={"model": cfg.model.name, "data": cfg.data.name,
                    "pruning_ratio": cfg.pruning.ratio, "pruning_method": cfg.pruning.method,
                    "pruning_scope": cfg.pruning.scope, "recovery": cfg.recovery.method,
                    "synthesis": synthesis.get("synthesizer"),
                    "recovery_steps": cfg.recovery.steps, "recovery_batch_size": cfg.recovery.batch_size,
                    "seed": cfg.seed},
            synthesis=synthesis,
            sparsity_layers=pruning.sparsity(student)["layers"],
            times={**times, "total": sum(times.values())},
            student_path=str(out / "student.pt"))
        if rank_zero_only.rank == 0:  # under DDP every rank ran the pipeline; one writes it down
            torch.save(student.state_dict(), out / "student.pt")
            report.write_results(results, out)
            loggers.write_summary(logger, report.flatten(
                {k: results[k] for k in ("teacher", "pruned", "recovered", "synthesis", "times")}))
            log.info("Results in %s", out / "results.json")
        return results
    finally:
        loggers.finish(logger)


RESUMED = "hydra.output_subdir=.hydra/resumed"


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=RUN_DIR [overrides]`` -> the overrides RUN_DIR was started with, then any new ones
    (e.g. a different trainer), with RUN_DIR as the run folder again. Hydra records the relaunch
    under RUN_DIR/.hydra/resumed/, so the original record stays as it was."""
    given = [a for a in argv[1:] if a.startswith("resume=")]
    if not given or given[-1] in ("resume=null", "resume=") or RESUMED in argv:
        return argv  # nothing to resume, or already rewritten (DDP ranks re-run this command line)
    folder = Path(given[-1].split("=", 1)[1].strip("'\"")).expanduser().resolve()
    recorded = folder / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        raise DfkdError(f"resume={folder} is not the folder of a dfkd run: it has no .hydra/overrides.yaml. "
                        f"Pass the folder a run wrote (outputs/dfkd/DATE_TIME, or one numbered job "
                        f"folder of a sweep, outputs/multirun/DATE_TIME/N).")
    original = [str(o) for o in OmegaConf.load(recorded) if not str(o).startswith("resume=")]
    extra = [a for a in argv[1:] if not a.startswith("resume=")]
    check("-m" not in extra and "--multirun" not in extra,
          "resume= continues one run; resume each job folder of a sweep on its own.")
    return [argv[0], *original, *extra, f"resume='{folder}'", f"hydra.run.dir='{folder}'", RESUMED]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg)
    except DfkdError as err:
        print(f"\ndfkd: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
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
        sys.argv = resume_argv(sys.argv)
    except DfkdError as err:
        print(f"dfkd: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
