"""Entry point: ``python -m dfkd.run [overrides]``.

teacher (load or train, cached) -> prune -> evaluate -> recover -> evaluate -> deploy -> report

Every stage is built from its own config group and gets only what it needs; bad settings stop the
run before any work. ``python -m dfkd.run resume=RUN_DIR`` goes on with an interrupted run
(dfkd/rundir.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from dfkd import config, loggers, pruning, report, rundir, trainer
from dfkd.config import build, refuse_missing
from dfkd.errors import DfkdError, check, first_line
from dfkd.evaluate import Judge, held_out_dreams
from dfkd.recovery import SyntheticKD
from dfkd.synthesis import dream, make_synthesizer
from dfkd.teacher import build_model, cache_file, check_fits, obtain_teacher, training_checkpoint, write_atomically

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
    trainer.validate(cfg.trainer)
    data, recovery, prune, deploy = check_settings(cfg)
    strict = bool(cfg.get("strict_data_free"))
    if strict:
        refuse_real_data(cfg, data, recovery)
    else:
        data.setup()
    model = build_model(cfg.model, cfg.teacher.seed)
    check_fits(model, cfg.model.name, data)
    # strict mode's held-out dreams, and the dreams pruning.importance=taylor ranks channels on, come
    # from synthesis=..., whatever the recovery
    dreamer = build(cfg.synthesis.synthesizer, "synthesis.synthesizer") if strict or prune.dreams else None
    kind = getattr(dreamer, "func", dreamer)  # the synthesizer class the partial builds
    if prune.dreams:
        SyntheticKD.check_dreamable(kind, model, remedy=(
            f"pruning.importance=l1 (pruning.importance={prune.importance} ranks channels on its dreams)."))
    if strict:
        SyntheticKD.check_dreamable(kind, model)
    prune.validate(model, torch.zeros(1, *data.image_shape))
    recovery.validate(model, data, cfg.seed)
    held_out = dreamer if strict else None
    device, nhwc, times = trainer.device_of(cfg.trainer), cfg.trainer.channels_last, Stopwatch()
    logger = loggers.build_logger(cfg)
    try:
        with times("teacher"):
            cache = cache_file(cfg.paths.cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer)
            teacher, teacher_info = obtain_teacher(model, cfg.teacher, data, cfg.trainer, cache, out,
                                                   evaluate_it=not strict)
        if rank_zero_only.rank == 0:
            rundir.record_teacher(out, teacher_info["source"])  # resume= goes on with this very teacher
        with times("evaluate"):
            dreams = (held_out_dreams(held_out, teacher, data, cfg.seed, cfg.strict_data_free_images)
                      if held_out is not None else None)
            judge = Judge(data, device, nhwc, dreams)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        stages = Stages(cfg, teacher, data, judge, logger, out, times, dreamer)
        student, pruned, synthesis, rounds = stages.prune_and_recover(prune, recovery, real_data=not strict)
        student = pruning.make_permanent(student.cpu())
        prune.check_kept(student)
        zeros = pruning.sparsity(student)
        with times("evaluate"):
            recovered = {**judge(student, teacher, validation=True), "sparsity": zeros["overall"]}
        log.info("Recovered (%s): %s", recovery.name, headline(recovered))
        results = {
            "teacher": teacher_info, "pruned": pruned, "recovered": recovered, "real_data_read": not strict,
            "input": data.input_spec(),  # how images must reach the student, wherever it is deployed
            "config": {"model": cfg.model.name, "data": cfg.data.name, **prune.settings(),
                       **recovery.settings(), "synthesis": synthesis.get("synthesizer"), "seed": cfg.seed},
            "synthesis": synthesis, "pruning": {"rounds": rounds, **getattr(prune, "found", {})},
            "sparsity_layers": zeros["layers"], "student_path": str(out / "student.pt")}
        if rank_zero_only.rank == 0:  # under DDP every rank ran the pipeline; one writes it down
            torch.save(student.state_dict(), out / "student.pt")  # kept first, whatever comes next
            with times("deploy"):
                try:
                    results["deployment"] = deploy(teacher, student, data.image_shape, out)
                except Exception as err:  # noqa: BLE001 - the student is saved; its figures are not lost for this
                    log.exception("Measuring the student for deployment failed")
                    results["deployment_error"] = first_line(err)
        results["times"] = {**times, "total": sum(times.values())}
        results["warnings"] = report.warnings(results, data.num_classes)
        for warning in results["warnings"]:
            log.warning(warning)
        if rank_zero_only.rank == 0:
            report.write_results(results, out)
            loggers.write_summary(logger, report.flatten(
                {k: results[k] for k in ("teacher", "pruned", "recovered", "synthesis", "deployment", "times")
                 if k in results}))
            log.info("Results in %s", out / "results.json")
        return results
    finally:
        loggers.finish(logger)


class Stages:
    """Prune, then recover, once or in the rounds of a schedule (pruning=iterative, or
    pruning=structured with pruning.rounds), which share recovery.steps. A round's student is kept
    in RUN_DIR/round_K/student.pt, so a resumed run starts from the first unfinished round."""

    def __init__(self, cfg: DictConfig, teacher, data, judge: Judge, logger, out: Path, times: Stopwatch,
                 dreamer=None) -> None:
        self.cfg, self.teacher, self.data, self.judge = cfg, teacher, data, judge
        self.logger, self.out, self.times = logger, out, times
        self.dreamer = dreamer  # the synthesizer factory (synthesis=...) of the pruning dreams

    def prune_and_recover(self, prune, recovery, real_data: bool = True):
        """The student, its figures right after pruning (the last round's, which its last recovery
        starts from), the recovery's summary, and each round's figures (none for one-shot pruning)."""
        ratios, example = prune.rounds(), torch.zeros(1, *self.data.image_shape)
        dreams = None
        if prune.dreams:  # dreamed and scored on the run's device, wherever the cache left the teacher
            self.teacher.to(self.judge.device)
            with self.times("dream"):
                dreams = self.pruning_dreams(prune.dreams)
        student, rounds, pruned, synthesis = copy.deepcopy(self.teacher).requires_grad_(True).train(), [], None, {}
        for k, ratio in enumerate(ratios):
            final = k == len(ratios) - 1
            with self.times("prune"):
                student = prune(student, example, ratio=ratio, dreams=dreams)
            if dreams is not None:
                self.check_same_channels(prune.found["channels"], k)
            with self.times("evaluate"):
                found = {**self.judge(student, self.teacher, validation=True),
                         "sparsity": pruning.sparsity(student)["overall"]}
            log.info("Pruned (%s%s), %.2f%% of the weights zero: %s", prune.describe(),
                     "" if len(ratios) == 1 else f", round {k + 1} of {len(ratios)}: {ratio:.1%}", 100 * found["sparsity"],
                     headline(found))
            pruned = found  # the student the last round's recovery starts from
            steps = recovery.steps // len(ratios) + (recovery.steps % len(ratios) if final else 0)
            folder = self.out if final else self.out / f"round_{k + 1}"
            with self.times("recover"):
                synthesis = self.recover_round(recovery.with_steps(steps), student, folder, final, real_data)
            if len(ratios) > 1:
                removed = {"removed": prune.found["removed"]} if prune.structured else {}  # of the teacher's count
                rounds.append({"ratio": ratio, "steps": steps, **removed, "pruned": found})
            if not final:
                with self.times("evaluate"):
                    rounds[-1]["recovered"] = self.judge(student, self.teacher, validation=True)
        return student, pruned, synthesis, rounds

    def pruning_dreams(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` dreams of conf/synthesis, each with the teacher's class for it, for a pruning method
        that ranks on them. They have their own seed (no KD batch repeats them) and
        leave the global random stream on the CPU as it was. Kept in RUN_DIR/pruning_dreams.pt: a
        resumed run, and every DDP rank but the first (started after it pruned), reads them back, so
        that all prune the same channels."""
        path = self.out / "pruning_dreams.pt"
        if (self.cfg.get("resume") or rank_zero_only.rank > 0) and path.is_file():
            kept = torch.load(path, map_location="cpu", weights_only=True)
            return kept["images"], kept["classes"]
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # a generator's initial weights come from the global stream
            maker = make_synthesizer(self.dreamer, self.teacher, self.data, self.cfg.seed + 20011)
            images = dream(maker, n)[0]
        with torch.no_grad():
            classes = torch.cat([self.teacher(x).argmax(1) for x in images.split(256)]).cpu()
        images = images.cpu()  # minibatches go to the student's device in turn
        if rank_zero_only.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda tmp: torch.save(
                {"images": images, "classes": classes, "mean": self.data.mean, "std": self.data.std}, tmp))
        log.info("Dreamed %d images to rank channels on in %.0f s (kept in %s).", n, time.perf_counter() - start, path)
        return images, classes

    def check_same_channels(self, channels: dict, k: int) -> None:
        """Channels ranked on dreams: the counts of round ``k`` are kept in RUN_DIR/pruned_channels.json,
        and a resumed run (or a DDP rank but the first) that ranked differently stops here with a
        message, not in a checkpoint that no longer fits the network."""
        path = self.out / "pruned_channels.json"
        known = json.loads(path.read_text()) if path.is_file() else {}
        follows = self.cfg.get("resume") or rank_zero_only.rank > 0  # (a rank may come before round k is written)
        if follows and str(k) in known:
            if known[str(k)] != channels:
                raise DfkdError(
                    "pruning.importance=taylor ranked the channels differently than when this run started (GPU "
                    "arithmetic is not bit-exact, and near-tied channels changed places), so the layers now have "
                    "other channel counts than the saved student: set pruning.scope=uniform, whose counts do not "
                    "depend on the ranking, or pruning.importance=l1, and start the run again.")
            return
        if rank_zero_only.rank == 0:  # a new run's rounds: none of an earlier run's in that folder kept
            known = {**{r: c for r, c in known.items() if int(r) < k}, str(k): channels}
            write_atomically(path, lambda tmp: tmp.write_text(json.dumps(known)))

    def recover_round(self, recovery, student, folder: Path, final: bool, real_data: bool) -> dict:
        resume = bool(self.cfg.get("resume"))
        if not final:
            done = folder / "student.pt"
            if resume and done.is_file():  # a finished round of the interrupted run
                student.load_state_dict(torch.load(done, map_location="cpu", weights_only=True))
                log.info("Round kept from %s.", done)
                return {}
            resume = resume and (folder / "checkpoints" / "last.ckpt").is_file()
        summary = recovery.recover(self.teacher, student, self.data, self.cfg.trainer,
                                   self.logger if final else None, folder, seed=self.cfg.seed, resume=resume,
                                   real_data=real_data)
        self.times["recover"] = self.times.get("recover", 0.0) + recovery.earlier_seconds  # a resumed run's whole
        if not final and rank_zero_only.rank == 0:
            torch.save(student.state_dict(), folder / "student.pt")
        return summary


def check_settings(cfg: DictConfig):
    """The checks that need neither data nor a teacher (every job of a sweep passes them before
    the first job starts); returns the data module (not set up), the recovery, the pruner and the
    deployment measurement."""
    refuse_missing(cfg)
    config.refuse_unknown(cfg)
    check(isinstance(cfg.seed, int), f"seed={cfg.seed!r} must be a whole number (e.g. seed=0).")
    floor = cfg.teacher.get("min_accuracy")
    check(floor is None or (isinstance(floor, (int, float)) and 0 <= floor <= 1),
          f"teacher.min_accuracy={floor} is not a fraction: give one between 0 and 1 (0.5 for 50%), "
          f"or null for 'not near chance'.")
    recovery, prune = build(cfg.recovery, "recovery"), build(cfg.pruning, "pruning")
    config.check_optimizer(recovery.optimizer, "recovery.optimizer")
    if not cfg.teacher.checkpoint:
        config.check_optimizer(build(cfg.teacher.optimizer, "teacher.optimizer"), "teacher.optimizer")
    rounds = len(prune.rounds())
    check(rounds == 1 or recovery.name != "none",
          f"pruning.rounds={rounds}: pruning in rounds recovers the student between them, and recovery=none "
          f"recovers nothing, so the rounds would be one-shot pruning in {rounds} steps. Choose a recovery "
          f"(recovery=dream_kd, the default), or prune in one shot with recovery=none: "
          f"{'pruning=magnitude' if not prune.structured else 'pruning.rounds=1'}.")
    check(rounds <= recovery.steps, f"pruning.rounds={rounds} rounds share recovery.steps={recovery.steps}: give "
          f"each round at least one step (raise recovery.steps or lower pruning.rounds).")
    check(not (prune.structured and recovery.feature_weight),
          f"recovery.feature_weight={recovery.feature_weight:g} makes the student mimic the teacher's features layer "
          f"for layer, but pruning=structured removes channels, so the layers no longer pair up: set "
          f"recovery.feature_weight=0 with structured pruning.")
    return build(cfg.data, "data"), recovery, prune, build(cfg.deploy, "deploy")


def check_sweep(argv: list[str]) -> None:
    """``-m``: compose every job of the sweep and check its settings, so that one bad value stops
    the sweep before its first job, not hours later."""
    from hydra.errors import HydraException

    try:
        jobs = list(config.sweep_jobs(argv))
    except HydraException:  # glob(), interval() or a typo: Hydra expands or refuses them itself
        return
    for job in jobs:
        placeholder = [] if any(o.startswith("paths.output_dir=") for o in job) else [
            "paths.output_dir=."]  # Hydra's run folder is not made yet; nothing is written
        try:
            check_settings(config.compose_config([*job, *placeholder]))
        except HydraException:
            return  # an override Hydra itself refuses: it says so, in its own words, when it starts
        except DfkdError as err:
            raise DfkdError(f"The sweep's job `{' '.join(job)}` would fail, so no job was started: {err}") from None


def headline(found: dict) -> str:
    if "acc" in found:
        return f"test accuracy {100 * found['acc']:.2f}%, agreement with the teacher {100 * found['agreement']:.2f}%"
    return f"agreement with the teacher on held-out dreams {100 * found['dream_agreement']:.2f}%"


def refuse_real_data(cfg: DictConfig, data, recovery) -> None:
    """strict_data_free=true: the run opens no real data at all; refuse what would need it."""
    check(bool(cfg.teacher.checkpoint), "strict_data_free=true needs teacher.checkpoint=PATH: without "
          "it the teacher would be trained on real data.")
    check(not recovery.uses_real_data, f"strict_data_free=true cannot run recovery={recovery.name}, which "
          f"trains on the real train split; use recovery=dream_kd (or noise_kd).")
    check(isinstance(cfg.strict_data_free_images, int) and cfg.strict_data_free_images >= 1,
          f"strict_data_free_images={cfg.strict_data_free_images} must be a whole number >= 1: the "
          f"held-out dreams the student is judged on.")
    check(data.normalization_given, "strict_data_free=true needs the normalization the teacher was "
          "trained with, since no data may be read to measure it: set data.mean=[...] and data.std=[...].")


def say(message: str) -> None:
    """A message for the user: on stderr, and in the run folder's run.log."""
    print(message, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("dfkd", logging.ERROR, __file__, 0, message.strip(), None, None))
            handler.flush()


INTERRUPTED, TERMINATED = 130, 143  # the exit statuses of a shell's process ended by SIGINT, by SIGTERM
_terminated: list[int] = []


def _stopped(terminated: bool) -> tuple[str, int]:
    """How an interrupted run says it stopped, and its exit status."""
    return ("stopped by SIGTERM", TERMINATED) if terminated else ("interrupted", INTERRUPTED)


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler's time limit, ``kill``, ``timeout``) stops the run now, wherever it is,
    the way Ctrl-C does: checkpoints kept, the resume command said, exit status 143. (Lightning
    alone only sets a flag that its training loop reads between steps, so that dreaming or
    evaluating ran on for minutes, and then ends the process with status 0.)"""
    _terminated.append(signum)
    # once: a scheduler's SIGTERM reaches every process of the job at once (DataLoader workers too,
    # whose ends then surface as errors of their own), and a second one must not cut short the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _later_jobs() -> str:
    """In a ``-m`` sweep, what an interrupt leaves undone (the jobs after this one): their command
    lines where the sweep's own command line gives them; otherwise the sweep folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    unlisted = f"\nAny later jobs of the sweep did not run (its finished ones are in {run_folder(None).parent})."
    if HydraConfig.get().sweeper.get("params"):  # swept from a config file too: not listed here
        return unlisted
    try:
        rest = list(config.sweep_jobs(sys.argv))[HydraConfig.get().job.num + 1:]
    except Exception:  # noqa: BLE001 - a sweep syntax the listing does not follow (glob, ...)
        return unlisted
    jobs = "".join(f"\n    python -m dfkd.run {' '.join(job)}" for job in rest[:8])
    more = f"\n    ... and {len(rest) - 8} more" if len(rest) > 8 else ""
    return f"\nThe sweep's {len(rest)} later job(s) did not run; each runs on its own with:{jobs}{more}" if rest else ""


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)  # Lightning's own handler calls it after its own
    try:
        results = run(cfg)
    except DfkdError as err:
        say(f"\ndfkd: error: {err}")
        sys.exit(2)
    except BaseException as stop:  # Lightning ends an interrupted fit with exit(1)
        # after a SIGTERM, whatever surfaces (a DataLoader worker it ended, say) is the termination
        terminated = bool(_terminated) or isinstance(stop, SIGTERMException)
        interrupted = isinstance(stop, KeyboardInterrupt) or (isinstance(stop, SystemExit) and stop.code not in (0, None))
        if not (terminated or interrupted):
            raise
        folder, out = run_folder(cfg), Path(cfg.paths.output_dir)
        training = not (cfg.teacher.checkpoint or (out / rundir.TEACHER_RECORD).is_file()
                        or cache_file(cfg.paths.cache_dir, cfg.model, cfg.data, cfg.teacher, cfg.trainer).is_file())
        saved = training_checkpoint(out)[1].is_file()
        unfinished = "" if not training else (
            " (the teacher had not finished training: it goes on from its last finished epoch)" if saved else
            " (the teacher had not finished its first epoch: it trains again from the start)")
        how, status = _stopped(terminated)
        say(f"\ndfkd: {how}. Go on from the last checkpoint with: python -m dfkd.run resume={folder}{unfinished}"
            f"{_later_jobs()}")
        sys.exit(status)
    if torch.distributed.is_initialized():
        # Lightning leaves DDP's process group open; left to interpreter shutdown, gloo's threads
        # can abort the finished run (SIGABRT, "terminate called without an active exception").
        # Only on success: after a failure the other ranks may never join the teardown.
        torch.distributed.destroy_process_group()
    if rank_zero_only.rank == 0:
        print(report.table(results), flush=True)  # last, after the logger's own closing lines
    recovered = results["recovered"]
    return recovered.get("acc", recovered.get("dream_agreement"))  # what a Hydra sweeper would optimize


def run_folder(cfg: DictConfig) -> Path:
    """The folder Hydra made for this run (what resume= takes), whatever paths.output_dir says."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.paths.output_dir)


def cli() -> None:
    try:
        sys.argv = rundir.resume_argv(sys.argv)
        rundir.check_output_dir(sys.argv)
        if "-m" in sys.argv or "--multirun" in sys.argv:
            check_sweep(sys.argv)
    except DfkdError as err:
        print(f"dfkd: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:  # outside a job: before the first, or between two of a sweep
        how, status = _stopped(bool(_terminated))
        print(f"\ndfkd: {how} between runs: the finished runs are complete; resume= goes on with an unfinished "
              f"one (dfkd refuses a run folder that holds one and names it).", file=sys.stderr, flush=True)
        sys.exit(status)


if __name__ == "__main__":
    cli()
