"""The one exception type a user sees: a short paragraph that names the setting to change."""


class DfkdError(Exception):
    """A user-facing failure. ``python -m dfkd.run`` prints its message, no traceback."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DfkdError(message)
