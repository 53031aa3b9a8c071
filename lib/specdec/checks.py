"""Argument checks shared by the library: the one definition of "an integer in a range".

:func:`require_int` checks a value passed in code and raises a ``ValueError`` that names the
argument and says what is allowed; :mod:`specdec.cli` phrases the same bounds for command
lines (:func:`allowed_ints`).
"""

from __future__ import annotations

from numbers import Integral

__all__ = ["allowed_ints", "require_int"]


def allowed_ints(minimum: int | None = None, maximum: int | None = None) -> str:
    """What an integer in ``[minimum, maximum]`` is, in words (either bound may be None)."""
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


def require_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) in ``[minimum, maximum]``, else
    ``ValueError("<name> must be <allowed>, got <value>")``."""
    if (isinstance(value, bool) or not isinstance(value, Integral) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        raise ValueError(f"{name} must be {allowed_ints(minimum, maximum)}, got {value!r}")
    return int(value)
