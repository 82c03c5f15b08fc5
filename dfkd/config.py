"""Objects from the Hydra configuration: every conf/ group that names a ``_target_`` is built
here, and a constructor's failure comes out as a DfkdError that names the group."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dfkd.errors import DfkdError, check


def build(node, setting: str, **kwargs):
    """``hydra.utils.instantiate`` for user-facing objects: a DfkdError raised by a constructor
    comes out as it is, any other failure as a DfkdError that names the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, DfkdError):
            raise err.__cause__ from None
        raise DfkdError(f"Could not build {setting} from _target_={node.get('_target_')}: "
                        f"{err.__cause__ or err}. Check the {setting}.* settings.") from err


def check_optimizer(factory, setting: str) -> None:
    """Try the optimizer a partial config builds on one dummy parameter, so that a value it refuses
    (lr < 0, nesterov without momentum, a keyword another optimizer does not take) is named now,
    not as a traceback after the teacher is trained and the student pruned."""
    import torch

    if factory is None:
        return
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as err:
        hint = (f" Another {setting}._target_ may not take every keyword the default's has: remove those it "
                f"does not take (e.g. ~{setting}.nesterov)." if isinstance(err, TypeError) else "")
        raise DfkdError(f"{setting} cannot build its optimizer ({type(err).__name__}: {err}). Check the "
                        f"{setting}.* settings.{hint}") from None


def refuse_missing(cfg: DictConfig) -> None:
    """Settings left at ``???`` stop the run before any work, named."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    check(not missing, f"These settings need a value: {', '.join(missing)} (set them on the command "
          f"line, e.g. {missing[0] if missing else ''}=...). data=image_folder needs data.root=PATH; "
          f"model=custom needs model.path=package.module.Class (and teacher.checkpoint=PATH for a "
          f"teacher of your own; without it one is trained).")


CONF = str(Path(__file__).resolve().parents[1] / "conf")


def top_level_settings() -> set[str]:
    """The top-level names a dfkd config may hold: conf/config.yaml's settings and its groups."""
    base = OmegaConf.load(Path(CONF) / "config.yaml")
    groups = {next(iter(d)) for d in base.defaults if isinstance(d, DictConfig)}
    return (set(base) - {"defaults", "hydra"}) | groups


def refuse_unknown(cfg: DictConfig) -> None:
    """A top-level name no group or setting has (``+prunning.ratio=0.5``, which Hydra's own advice
    for a typo suggests) would be carried along unread: refused, the nearest name given."""
    import difflib

    known = top_level_settings()
    for name in sorted(set(cfg) - known):
        near = difflib.get_close_matches(name, sorted(known), n=1)
        hint = ""
        if near:
            node, path = cfg[name], near[0]
            while isinstance(node, DictConfig) and len(node) == 1:  # prunning.ratio=0.5 -> pruning.ratio=0.5
                key = next(iter(node))
                node, path = node[key], f"{path}.{key}"
            given = f"{path}={node}" if not isinstance(node, DictConfig) else f"{path}.*"
            hint = f" Did you mean {near[0]}? Give it without the '+': {given}."
        raise DfkdError(f"{name} is not a dfkd setting: it would be ignored.{hint} The settings are "
                        f"{', '.join(sorted(known))}; `python -m dfkd.run --cfg job` prints them all.")


def compose_config(overrides: list[str]) -> DictConfig:
    """conf/config.yaml with ``overrides``, composed outside a Hydra run (before one starts: to
    check a sweep's jobs, or a resume's settings). Hydra's own errors propagate."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides)


def sweep_jobs(argv: list[str], limit: int = 256) -> Iterator[list[str]]:
    """The command lines of the jobs a ``-m`` sweep will run (its comma lists and ranges expanded,
    Hydra's own settings left out), at most ``limit``, so that each can be checked first."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [a for a in argv[1:] if "=" in a and not a.startswith("-") and not override_key(a).startswith("hydra")]
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in OverridesParser.create().parse_overrides(given)]
    yield from itertools.islice((list(job) for job in itertools.product(*choices)), limit)


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")
