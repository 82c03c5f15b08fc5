"""The run folder: one folder per run (Hydra's), refused when it holds a finished run, and the
``resume=RUN_DIR`` command line that goes on with an interrupted one."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from dfkd.errors import DfkdError, check

RESUMED = "hydra.output_subdir=.hydra/resumed"


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
    return [argv[0], *original, *extra, f"resume='{folder}'", f"hydra.run.dir='{folder}'", RESUMED]
