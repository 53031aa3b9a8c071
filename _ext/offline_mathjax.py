"""Serve MathJax from the built book itself, so its equations render with no network.

Sphinx loads MathJax 3 from a CDN by default; a reader who builds the book offline would see
raw LaTeX. MathJax 3.2.2 (Apache-2.0) ships inside the PyPI package ``django-static-mathjax``
(no dependencies; pinned in requirements.txt). This extension points ``mathjax_path`` at a copy
of its ``es5`` bundle and puts that copy in ``_build/html/_static/mathjax``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from sphinx.errors import ExtensionError

BUNDLE = "tex-mml-chtml.js"


def _mathjax_es5() -> Path:
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError("MathJax for the offline book is missing: install the pinned "
                             "`django-static-mathjax` from requirements.txt (`make setup` does)")
    es5 = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if not (es5 / BUNDLE).is_file():
        raise ExtensionError(f"{es5 / BUNDLE} not found: reinstall `django-static-mathjax`")
    return es5


def _use_local_mathjax(app, config):
    _mathjax_es5()  # fail early, before any notebook runs, if it is not installed
    config.mathjax_path = f"mathjax/{BUNDLE}"  # relative to _static


def _copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    es5 = _mathjax_es5()
    target = Path(app.outdir) / "_static" / "mathjax"
    shutil.copytree(es5, target, dirs_exist_ok=True)
    shutil.copy2(es5.parent / "LICENSE", target / "LICENSE")


def setup(app):
    app.connect("config-inited", _use_local_mathjax)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
