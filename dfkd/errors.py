"""The one exception type a user sees: a short paragraph that names the setting to change."""


class DfkdError(Exception):
    """A user-facing failure. ``python -m dfkd.run`` prints its message, no traceback."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DfkdError(message)


def check_choice(setting: str, value, choices) -> None:
    """Refuse a ``value`` of ``setting`` that is not among ``choices``, listing them."""
    check(value in choices, f"{setting}={value!r} is unknown; choose one of {list(choices)}.")
