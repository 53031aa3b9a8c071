"""Helpers the chapters share for presenting results in the book."""

from __future__ import annotations

import numpy as np

__all__ = ["glue"]


def glue(name: str, value, display: bool = False) -> None:
    """myst-nb's ``glue``, with numpy scalars turned into Python numbers first.

    myst-nb formats a glued number (``{glue:text}`name:.3f```) from its plain-text repr, and
    numpy 2 writes ``np.float64(0.5)`` there, which no format spec can read.
    """
    from myst_nb import glue as _glue

    if isinstance(value, np.generic):
        value = value.item()
    _glue(name, value, display=display)
