"""The one exception type a user sees: a short paragraph that names the setting to change."""


class DfkdError(Exception):
    """A user-facing failure. ``python -m dfkd.run`` prints its message, no traceback."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DfkdError(message)


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``, for an error reported inside a longer sentence."""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def check_choice(setting: str, value, choices) -> None:
    """Refuse a ``value`` of ``setting`` that is not among ``choices``, listing them."""
    check(value in choices, f"{setting}={value!r} is unknown; choose one of {list(choices)}.")
