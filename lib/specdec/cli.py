"""Command lines that answer bad input the way command lines do.

Every command of the book (``python -m specdec``, ``python -m specdec.bench``) parses its
arguments with :class:`ArgumentParser` and the type functions below, so that a wrong value is
refused *before* any work starts (no model is loaded, no generation runs) with one line on
stderr and exit status 2::

    python -m specdec: error: argument -k: got 0; allowed: an integer >= 1

The type functions raise :class:`argparse.ArgumentTypeError` with ``"<what is wrong>; <what is
allowed>"``; argparse prefixes the argument's name. Those that take parameters are factories::

    ap = ArgumentParser(prog="python -m specdec.bench")
    ap.add_argument("-k", type=positive_int)
    ap.add_argument("--ks", type=int_list(minimum=1))                  # "1,2,4,8"
    ap.add_argument("--temperatures", type=float_list(minimum=0.0))    # "0,0.7,1"
    ap.add_argument("--top-p", type=float_range(0.0, 1.0, min_open=True))
    ap.add_argument("--domains", type=name_list(["code", "conversation"], what="domain"))
    ap.add_argument("--pairs", type=name_list(validate=check_pair, what="pair"))

``validate`` is any callable that raises ``ValueError`` (or ``KeyError``) with a message, or
returns ``False``, for a name it refuses: pair names include made-up ones such as
``synthetic-eps0.2`` that no fixed list holds.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable, Collection, Iterable

__all__ = [
    "ArgumentParser",
    "int_range",
    "positive_int",
    "nonneg_int",
    "float_range",
    "positive_float",
    "nonneg_float",
    "nonempty_str",
    "choice",
    "checked",
    "int_list",
    "float_list",
    "name_list",
]

_CHOICE_ERROR = re.compile(r"invalid choice: (?P<value>.*) \(choose from (?P<choices>.*)\)$")


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are one line, ``<prog>: error: <what is
    wrong>; <what is allowed>``, on stderr, with exit status 2: no usage block, no traceback.

    Sub-parsers made with ``add_subparsers().add_parser`` are of this class too. For checks that
    involve several arguments, call :meth:`argument_error` after ``parse_args``.
    """

    def error(self, message: str):  # argparse calls this for every parsing error
        message = " ".join(str(message).split())  # one line, whatever argparse wrote
        m = _CHOICE_ERROR.search(message)
        if m:  # argparse's own "invalid choice: 'x' (choose from 'a', 'b')"
            choices = m.group("choices").replace("'", "")
            message = message[: m.start()] + f"invalid choice {m.group('value')}; choose from {choices}"
        elif "; " not in message:
            message += f"; see '{self.prog} --help'"
        self.exit(2, f"{self.prog}: error: {message}\n")

    def argument_error(self, argument: str, problem: str, allowed: str):
        """Refuse a value found wrong after parsing (e.g. two arguments that contradict each
        other): prints ``<prog>: error: argument <argument>: <problem>; <allowed>`` and exits 2."""
        self.error(f"argument {argument}: {problem}; {allowed}")


# --------------------------------------------------------------------------------------------
# Single values
# --------------------------------------------------------------------------------------------


def _fail(problem: str, allowed: str):
    raise argparse.ArgumentTypeError(f"{problem}; allowed: {allowed}")


def _int_allowed(minimum: int | None, maximum: int | None) -> str:
    from .checks import allowed_ints

    return allowed_ints(minimum, maximum)


def _parse_int(text: str, allowed: str, context: str = "") -> int:
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        _fail(f"got {s!r}{context}, which is not an integer", allowed)


def _check_int_bounds(value: int, minimum, maximum, allowed: str, context: str = "") -> int:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        _fail(f"got {value}{context}", allowed)
    return value


def int_range(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """A type for an integer in ``[minimum, maximum]`` (either bound may be None)."""
    allowed = _int_allowed(minimum, maximum)

    def parse(text: str) -> int:
        return _check_int_bounds(_parse_int(text, allowed), minimum, maximum, allowed)

    parse.__name__ = "int_range"
    return parse


positive_int = int_range(1)
positive_int.__name__ = "positive_int"
positive_int.__doc__ = "An integer >= 1, e.g. a draft length or a token budget."
nonneg_int = int_range(0)
nonneg_int.__name__ = "nonneg_int"
nonneg_int.__doc__ = "An integer >= 0, e.g. a seed or a top-k (0 = off)."


def _float_allowed(minimum, maximum, min_open: bool, max_open: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if min_open else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if max_open else '<='} {maximum:g}")
    return "a number" + (" " + " and ".join(parts) if parts else "")


def _parse_float(text: str, allowed: str, context: str = "") -> float:
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        _fail(f"got {s!r}{context}, which is not a number", allowed)
    if not math.isfinite(value):
        _fail(f"got {s!r}{context}, which is not a finite number", allowed)
    return value


def _check_float_bounds(value: float, minimum, maximum, min_open, max_open, allowed, context="") -> float:
    too_low = minimum is not None and (value <= minimum if min_open else value < minimum)
    too_high = maximum is not None and (value >= maximum if max_open else value > maximum)
    if too_low or too_high:
        _fail(f"got {value:g}{context}", allowed)
    return value


def float_range(minimum: float | None = None, maximum: float | None = None, min_open: bool = False,
                max_open: bool = False) -> Callable[[str], float]:
    """A type for a finite number between ``minimum`` and ``maximum`` (each bound inclusive unless
    ``min_open`` / ``max_open``; either may be None). NaN and infinities are refused."""
    allowed = _float_allowed(minimum, maximum, min_open, max_open)

    def parse(text: str) -> float:
        return _check_float_bounds(_parse_float(text, allowed), minimum, maximum, min_open, max_open, allowed)

    parse.__name__ = "float_range"
    return parse


positive_float = float_range(0.0, min_open=True)
positive_float.__name__ = "positive_float"
nonneg_float = float_range(0.0)
nonneg_float.__name__ = "nonneg_float"


def nonempty_str(text: str) -> str:
    """A string with some non-blank text (returned as given); an empty or blank one is refused."""
    if not text.strip():
        _fail("got an empty string" if not text else "got only whitespace", "a non-empty text")
    return text


def _names_text(choices: Iterable[str]) -> str:
    return ", ".join(str(c) for c in choices)


def _validator(choices: Collection[str] | None, validate: Callable[[str], object] | None, what: str):
    """One function name -> None that raises ArgumentTypeError for a refused name."""
    if choices is None and validate is None:
        raise ValueError("give choices, validate, or both")
    choices = None if choices is None else tuple(choices)

    def check(name: str, context: str = "") -> None:
        if choices is not None and name in choices:
            return
        if validate is None:
            _fail(f"unknown {what} {name!r}{context}", f"one of {_names_text(choices)}")
        try:
            ok = validate(name)
        except (ValueError, KeyError) as e:
            msg = e.args[0] if e.args else f"unknown {what} {name!r}"
            msg = " ".join(str(msg).split())
            if context and name in msg:
                msg = msg.replace(repr(name), repr(name) + context, 1)
            raise argparse.ArgumentTypeError(msg if "; " in msg else f"{msg}; see --help") from None
        if ok is False:
            allowed = f"one of {_names_text(choices)}" if choices else f"a valid {what}"
            _fail(f"unknown {what} {name!r}{context}", allowed)

    return check


def _one_name(check, name: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        check(text.strip())
        return text.strip()

    parse.__name__ = name
    return parse


def choice(choices: Collection[str], what: str = "value") -> Callable[[str], str]:
    """A type for one of ``choices``: like argparse's ``choices=``, with the same one-line error
    as the other types (``unknown drafter 'x'; allowed: one of ngram, nf4, early``)."""
    return _one_name(_validator(choices, None, what), "choice")


def checked(validate: Callable[[str], object], what: str = "value") -> Callable[[str], str]:
    """A type for one name accepted by ``validate`` (raises ValueError/KeyError, or returns
    False, to refuse it)."""
    return _one_name(_validator(None, validate, what), "checked")


# --------------------------------------------------------------------------------------------
# Comma-separated lists
# --------------------------------------------------------------------------------------------


def _items(text: str, allowed: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if all(not s for s in items):
        _fail("got an empty list", allowed)
    if any(not s for s in items):
        _fail(f"got an empty item in {text!r}", allowed)
    return items


def _no_repeats(values: list, text: str, allowed: str, unique: bool) -> None:
    if unique:
        seen = set()
        for v in values:
            if v in seen:
                _fail(f"got {v} twice in {text!r}", allowed + ", each at most once")
            seen.add(v)


def int_list(minimum: int | None = None, maximum: int | None = None, unique: bool = True,
             example: str = "1,2,4,8") -> Callable[[str], tuple[int, ...]]:
    """A type for comma-separated integers in ``[minimum, maximum]``, e.g. ``"1,2,4,8"``;
    returns a tuple. Blanks around items are ignored; an empty list or item is refused, and so is
    a repeated value unless ``unique=False``."""
    allowed = f"comma-separated integers{_bounds_text(_int_allowed(minimum, maximum))}, e.g. {example}"

    def parse(text: str) -> tuple[int, ...]:
        out = []
        for s in _items(text, allowed):
            ctx = f" in {text!r}" if "," in text else ""
            out.append(_check_int_bounds(_parse_int(s, allowed, ctx), minimum, maximum, allowed, ctx))
        _no_repeats(out, text, allowed, unique)
        return tuple(out)

    parse.__name__ = "int_list"
    return parse


def float_list(minimum: float | None = None, maximum: float | None = None, min_open: bool = False,
               max_open: bool = False, unique: bool = True,
               example: str = "0,0.7,1") -> Callable[[str], tuple[float, ...]]:
    """A type for comma-separated finite numbers between ``minimum`` and ``maximum`` (see
    :func:`float_range`); returns a tuple."""
    allowed = (f"comma-separated numbers{_bounds_text(_float_allowed(minimum, maximum, min_open, max_open))}"
               f", e.g. {example}")

    def parse(text: str) -> tuple[float, ...]:
        out = []
        for s in _items(text, allowed):
            ctx = f" in {text!r}" if "," in text else ""
            out.append(_check_float_bounds(_parse_float(s, allowed, ctx), minimum, maximum, min_open, max_open,
                                           allowed, ctx))
        _no_repeats(out, text, allowed, unique)
        return tuple(out)

    parse.__name__ = "float_list"
    return parse


def _bounds_text(single: str) -> str:
    # "an integer >= 1" -> " >= 1"; "a number > 0 and <= 1" -> " > 0 and <= 1"
    for prefix in ("an integer", "a number"):
        if single.startswith(prefix):
            return single[len(prefix):]
    return ""


def name_list(choices: Collection[str] | None = None, validate: Callable[[str], object] | None = None,
              what: str = "name", unique: bool = True) -> Callable[[str], tuple[str, ...]]:
    """A type for comma-separated names, each in ``choices`` or accepted by ``validate`` (a
    callable that raises ValueError/KeyError with a message, or returns False, to refuse a name);
    returns a tuple. With both, a name in ``choices`` is accepted without calling ``validate``."""
    check = _validator(choices, validate, what)
    allowed = f"comma-separated {what}s" + (f" from {_names_text(choices)}" if choices is not None else "")

    def parse(text: str) -> tuple[str, ...]:
        names = _items(text, allowed)
        for name in names:
            check(name, f" in {text!r}" if "," in text else "")
        _no_repeats(names, text, allowed, unique)
        return tuple(names)

    parse.__name__ = "name_list"
    return parse
