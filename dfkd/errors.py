"""The one exception type a user sees: a short paragraph that names the setting to change."""


class DfkdError(Exception):
    """A user-facing failure. ``python -m dfkd.run`` prints its message, no traceback."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DfkdError(message)


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
