"""The run folder: one folder per run (Hydra's), refused when it holds a finished run, and the
``resume=RUN_DIR`` command line that goes on with an interrupted one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from dfkd.config import compose_config
from dfkd.errors import DfkdError, check

RESUMED = "hydra.output_subdir=.hydra/resumed"
TEACHER_RECORD = "teacher.json"  # where a run notes the teacher it distils (a resume reuses it)
TEACHER_CHECKPOINTS = "teacher_checkpoints"  # a teacher's training checkpoints, while it trains (a resume goes on)
# What the checkpoint of a run embodies (its student, pruned from its teacher, and the pool): a
# resume may not change these. Where the data lives may change; the budget, trainer and logger too.
FIXED = ("model", "pruning", "data", "seed", "strict_data_free", "recovery._target_", "recovery.name",
         "recovery.pool", "recovery.student_bn", "recovery.synthesizer._target_",
         "synthesis.synthesizer._target_", "synthesis.synthesizer.generators")
MOVABLE = ("data.root", "data.num_workers", "data.download", "data.eval_batch_size")


def refuse_finished(folder: Path) -> None:
    check(not (Path(folder) / "results.json").exists(),
          f"The run in {folder} has finished (its results.json is there): there is nothing to resume. "
          f"Start a new run without resume=.")


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=RUN_DIR [overrides]`` -> the overrides RUN_DIR was started with, then any new ones
    (e.g. a different trainer), with RUN_DIR as the run folder again. Hydra records the relaunch
    under RUN_DIR/.hydra/resumed/, so the original record stays as it was."""
    given = [a for a in argv[1:] if a.startswith("resume=")]
    if not given or given[-1] in ("resume=null", "resume=") or RESUMED in argv:
        return argv  # nothing to resume, or already rewritten (DDP ranks re-run this command line)
    folder = Path(given[-1].split("=", 1)[1].strip("'\"")).expanduser().resolve()
    refuse_finished(folder)  # before Hydra writes anything into it
    recorded = folder / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        raise DfkdError(f"resume={folder} is not the folder of a dfkd run: it has no .hydra/overrides.yaml. "
                        f"Pass the folder a run wrote (outputs/dfkd/DATE_TIME, or one numbered job "
                        f"folder of a sweep, outputs/multirun/DATE_TIME/N).")
    original = [str(o) for o in OmegaConf.load(recorded) if not str(o).startswith("resume=")]
    extra = [a for a in argv[1:] if not a.startswith("resume=")]
    check("-m" not in extra and "--multirun" not in extra,
          "resume= continues one run; resume each job folder of a sweep on its own.")
    _refuse_contradictions(folder, original, extra)
    teacher = _recorded_teacher(folder)  # the very teacher, whatever the trainer or the cache now say
    return [argv[0], *original, *extra, *teacher, f"resume='{folder}'", f"hydra.run.dir='{folder}'", RESUMED]


def record_teacher(folder: Path, source: str) -> None:
    (Path(folder) / TEACHER_RECORD).write_text(json.dumps({"source": str(Path(source).resolve())}))


def _recorded_teacher(folder: Path) -> list[str]:
    record = folder / TEACHER_RECORD
    if not record.is_file():
        return []
    source = json.loads(record.read_text())["source"]
    check(Path(source).is_file(), f"resume={folder}: the teacher this run distils ({source}) is gone, so "
          f"the checkpoint cannot go on with it. Start a new run.")
    return [f"teacher.checkpoint='{source}'"]


def _refuse_contradictions(folder: Path, original: list[str], extra: list[str]) -> None:
    """A resume whose new settings change what the checkpoint holds (composed and compared, so
    a repeated value or an experiment's own value is no change) is refused, named."""
    from hydra.errors import HydraException

    try:
        before, after = compose_config(original), compose_config([*original, *extra])
    except HydraException:
        return  # an override Hydra refuses: it says so in its own words when the run starts
    for path in FIXED:
        was, now = (_plain(OmegaConf.select(c, path)) for c in (before, after))
        if isinstance(was, dict) and path == "data":
            for key in MOVABLE:
                was.pop(key.split(".")[1], None), now.pop(key.split(".")[1], None)
        if was != now:
            raise DfkdError(
                f"resume={folder} goes on with the student in its checkpoint, built and pruned with the "
                f"settings the run started with; the new settings change {path} (from {was} to {now}). "
                f"Start a new run for other model, data, pruning, seed or method settings; a resume may "
                f"change the trainer, the logger, the budget (recovery.steps, ...) and the synthesis "
                f"weights.")


# a process of a job launched as many processes at once (torchrun, Slurm tasks, MPI): each would
# check the folder on its own while the others write it, so such jobs are not checked
JOB_SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
# what a run leaves in its folder once it has done work worth keeping
WORK = ("results.json", TEACHER_RECORD, "student.pt", "checkpoints", "pruning_dreams.pt", "round_1", "teacher.pt",
        "teacher_rejected.pt", TEACHER_CHECKPOINTS)


def _one_of_many(argv: list[str]) -> bool:
    """A process of a distributed job: Lightning's relaunch of the command line for a later rank
    (into rank 0's run folder), or one of many processes started together."""
    if any(a.startswith("hydra.job.name=train_ddp_process_") for a in argv):
        return True
    sizes = (os.environ.get(k, "1") for k in JOB_SIZE_VARIABLES)
    return any(size.isdigit() and int(size) > 1 for size in sizes)


def holds_run(folder: Path) -> str | None:
    """'finished' or 'unfinished' if ``folder`` holds a run's work, else None."""
    if (folder / "results.json").exists():
        return "finished"
    return "unfinished" if any((folder / name).exists() for name in WORK) else None


def _refuse_held(key: str, value: str, folder: Path) -> None:
    """A run into ``folder`` (a sweep: into its numbered job folders) would overwrite a run's work."""
    what = {"finished": "a finished dfkd run", "unfinished": "an unfinished dfkd run"}
    if key == "hydra.run.dir":
        held = holds_run(folder)
        if held:
            go_on = "" if held == "finished" else f"go on with it (python -m dfkd.run resume={folder}), "
            raise DfkdError(f"{key}={value} holds {what[held]}, which a new run would overwrite: {go_on}give "
                            f"another folder, or delete it first (rm -r {folder}).")
        return
    for job in sorted(folder.glob("[0-9]*/"), key=lambda p: (len(p.name), p.name)):  # Hydra numbers its jobs
        held = holds_run(job)
        if held:
            go_on = "" if held == "finished" else f" (go on with that job alone: python -m dfkd.run resume={job})"
            raise DfkdError(f"{key}={value}: its job folder {job} holds {what[held]}, which the sweep would "
                            f"overwrite{go_on}. Give another hydra.sweep.dir.")


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def check_output_dir(argv: list[str]) -> None:
    """The run (or sweep) folder can be created: refused now, not as a traceback from Hydra. A
    folder that holds a run's work (a sweep folder: in a job folder) is refused too, so that a new
    run never overwrites results, checkpoints and dreams; ``resume=`` goes on with an unfinished one."""
    sweep = "-m" in argv or "--multirun" in argv
    given = False
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        key = key.lstrip("+")
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or "${" in value or (key == "hydra.run.dir") == sweep:
            continue  # a sweep writes into hydra.sweep.dir only, a single run into hydra.run.dir only
        given = True
        folder = Path(value.strip("'\"")).expanduser()
        if RESUMED not in argv and not _one_of_many(argv):
            _refuse_held(key, value, folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            check(os.access(folder, os.W_OK), f"{folder} is not writable")
        except (OSError, DfkdError) as err:
            raise DfkdError(f"{key}={value}: the run folder cannot be written ({err}). Give "
                            f"a folder you can write to.") from None
    if given:
        return
    check(os.access(Path.cwd(), os.W_OK), f"Runs write into outputs/ under the current folder "
          f"{Path.cwd()}, which is not writable: run from another folder, or set hydra.run.dir=PATH "
          f"(hydra.sweep.dir=PATH for -m).")
