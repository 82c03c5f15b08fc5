"""Objects from the Hydra configuration: every conf/ group that names a ``_target_`` is built
here, and a constructor's failure comes out as a DfkdError that names the group."""

from __future__ import annotations

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


def refuse_missing(cfg: DictConfig) -> None:
    """Settings left at ``???`` stop the run before any work, named."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    check(not missing, f"These settings need a value: {', '.join(missing)} (set them on the command "
          f"line, e.g. {missing[0] if missing else ''}=...). data=image_folder needs data.root=PATH; "
          f"model=custom needs model.path=package.module.Class and teacher.checkpoint=PATH.")
