"""The built book, as a reader sees it: every chapter page loads in a real (headless) browser.

For the intro and every page under book/ the check asks that
* the page renders: it has a title and a heading;
* no output cell shows a Python traceback (cells tagged ``raises-exception`` show one on purpose);
* no stderr output ends in an exception line, and no MyST role is left unrendered;
* every equation is typeset by MathJax (served from the book itself), without a LaTeX error;
* every image has loaded (``naturalWidth > 0``) and every local resource has arrived;
* a page built from a notebook shows at least one figure.
One screenshot per page goes to screenshots/ for a person to look at.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from .chromium_cdp import HTML_DIR, REPO, SCREENSHOT_DIR, serve

INTRO = "book/intro.html"

# Runs in the page; resolves to a plain object describing what the reader would see.
PAGE_SCRIPT = r"""
(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map(img => {
    img.loading = "eager";
    if (img.complete) return null;
    return new Promise(done => {
      img.addEventListener("load", done, {once: true});
      img.addEventListener("error", done, {once: true});
      setTimeout(done, 10000);
    });
  }));
  const main = document.querySelector("article.bd-article") || document.querySelector("main")
               || document.body;
  const equations = Array.from(main.querySelectorAll(".math"));
  const mathjax = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
  if (equations.length && mathjax) {
    await Promise.race([window.MathJax.startup.promise, new Promise(done => setTimeout(done, 15000))]);
  }
  const deliberate = el => el.closest(".tag_raises-exception") !== null;
  const checked = main.cloneNode(true);
  checked.querySelectorAll(".tag_raises-exception").forEach(el => el.remove());
  const text = checked.textContent;
  const tracebackSelector = ".output.traceback, .output.error, .output_error, .cell_output .traceback";
  const heading = main.querySelector("h1");
  return {
    title: document.title.trim(),
    heading: heading ? heading.textContent.replace(/#$/, "").trim() : "",
    images: images.map(img => ({
      src: img.getAttribute("src"), width: img.naturalWidth, height: img.naturalHeight,
      figure: img.closest(".cell_output, figure") !== null})),
    tracebackCells: Array.from(main.querySelectorAll(tracebackSelector))
      .filter(el => !deliberate(el)).map(el => el.textContent.trim().slice(0, 400)),
    tracebackText: text.includes("Traceback (most recent call last)"),
    stderrExceptions: Array.from(main.querySelectorAll(".output.stderr"))
      .filter(el => !deliberate(el)).map(el => el.textContent)
      .filter(t => /^\s*[A-Za-z_][\w.]*(Error|Exception):/m.test(t))
      .map(t => t.trim().slice(-400)),
    equations: equations.length,
    mathjaxLoaded: Boolean(mathjax),
    untypesetEquations: equations.filter(el => !el.querySelector("mjx-container"))
      .map(el => el.textContent.trim().slice(0, 120)),
    texErrors: Array.from(main.querySelectorAll("mjx-merror"))
      .map(el => el.getAttribute("data-mjx-error") || el.textContent),
    unrenderedRoles: text.match(/\{(glue|glue:text|glue:any|glue:figure|cite|cite:p|cite:t|ref|numref|eq|doc)\}`/g) || [],
  };
})()
"""


def discover_pages() -> list[tuple[str, bool]]:
    """(path under the HTML root, built from a notebook?) for the intro and every book/ page."""
    book = HTML_DIR / "book"
    if not book.is_dir():
        return []
    pages = []
    for page in sorted(book.glob("*.html")):
        relative = page.relative_to(HTML_DIR).as_posix()
        from_notebook = (HTML_DIR / "_sources" / "book" / f"{page.stem}.ipynb").is_file()
        pages.append((relative, from_notebook))
    pages.sort(key=lambda item: (item[0] != INTRO, item[0]))
    return pages


def problems_on(tab, url: str, from_notebook: bool) -> tuple[list[str], dict]:
    """Load ``url`` in ``tab``; returns what is wrong with the page and what the page reported."""
    load = tab.load(url)
    seen = tab.evaluate(PAGE_SCRIPT)
    problems = []
    if not seen["title"]:
        problems.append("the page has no <title>")
    if not seen["heading"]:
        problems.append("the page has no <h1> heading in its article")
    for text in seen["tracebackCells"]:
        problems.append(f"an output cell shows a traceback:\n{text}")
    if seen["tracebackText"] and not seen["tracebackCells"]:
        problems.append("the page text contains 'Traceback (most recent call last)'")
    for text in seen["stderrExceptions"]:
        problems.append(f"a stderr output ends in an exception:\n{text}")
    if seen["equations"] and not seen["mathjaxLoaded"]:
        problems.append(f"MathJax did not load; {seen['equations']} equations show as raw LaTeX")
    elif seen["untypesetEquations"]:
        problems.append(f"equations not typeset: {seen['untypesetEquations'][:5]}")
    for error in seen["texErrors"]:
        problems.append(f"an equation has a LaTeX error: {error}")
    for role in seen["unrenderedRoles"]:
        problems.append(f"an unrendered MyST role is shown as text: {role}")
    for image in seen["images"]:
        if image["width"] <= 0:
            problems.append(f"image did not load: {image['src']}")
    if from_notebook and not any(image["figure"] for image in seen["images"]):
        problems.append("a chapter notebook page shows no figure (no image in any cell output)")
    local = url.split("/", 3)[:3]
    local_prefix = "/".join(local) + "/"
    for failure in load["failed_requests"]:
        # The browser asks for /favicon.ico by itself when a page names no icon.
        if failure.startswith(local_prefix) and not failure.startswith(local_prefix + "favicon.ico"):
            problems.append(f"local resource failed to load: {failure}")
    for exception in load["exceptions"]:
        if local_prefix in exception:
            problems.append(f"a script of the book threw: {exception}")
    return problems, seen


PAGES = discover_pages()
PAGE_PARAMS = [pytest.param(path, from_nb, id=path) for path, from_nb in PAGES] or [
    pytest.param(None, False, id="no-built-book",
                 marks=pytest.mark.skip(reason=f"no built book at {HTML_DIR}: run `make book` first"))]


@pytest.mark.parametrize(("path", "from_notebook"), PAGE_PARAMS)
def test_page_renders_cleanly(tab, book_url, path, from_notebook):
    problems, seen = problems_on(tab, book_url + path, from_notebook)
    name = path.removesuffix(".html").replace("/", "__")
    tab.screenshot(SCREENSHOT_DIR / f"{name}.png")
    assert not problems, f"{path} ({seen['title']!r}):\n- " + "\n- ".join(problems)


def test_intro_is_the_landing_page(tab, book_url, html_dir):
    assert (html_dir / INTRO).is_file(), f"{INTRO} was not built; _toc.yml's root must be book/intro"
    tab.load(book_url + "index.html")
    # index.html forwards with a meta refresh, which happens after its load event.
    deadline = time.monotonic() + 10
    location = ""
    while time.monotonic() < deadline and not location.endswith("/" + INTRO):
        time.sleep(0.1)
        with contextlib.suppress(RuntimeError):  # the page may be between documents
            location = tab.evaluate("document.readyState === 'complete' ? location.pathname : ''")
    assert location.endswith("/" + INTRO), f"index.html leads to {location!r}, not to {INTRO}"
    title = tab.evaluate("document.title")
    assert "Speculative Decoding from Scratch" in title, title


def test_every_chapter_notebook_has_a_page(html_dir):
    notebooks = sorted((REPO / "book").glob("[0-9][0-9]_*.ipynb"))  # chapters: NN_name.ipynb
    missing = [nb.name for nb in notebooks
               if not (html_dir / "book" / f"{nb.stem}.html").is_file()]
    assert not missing, f"chapter notebooks with no page in the built book (add them to _toc.yml): {missing}"


def test_the_check_catches_a_broken_page(tab, tmp_path):
    """Negative control: a page with each fault the check looks for must fail it, fault by fault,
    while a traceback in a cell tagged ``raises-exception`` is accepted as deliberate."""
    (tmp_path / "ok.png").write_bytes(_tiny_png())
    (tmp_path / "mathjax").symlink_to(_installed_mathjax(), target_is_directory=True)
    (tmp_path / "broken.html").write_text("""<!doctype html><html><head><title>Broken</title>
      <script src="missing.js"></script></head><body><main><article class="bd-article">
      <h1>A broken chapter</h1>
      <p>Prose with a {glue:text}`speedup:.2f` role that did not render,
         and an equation <span class="math">\\(x^2\\)</span> with no MathJax to typeset it.</p>
      <div class="cell_output"><img src="ok.png"></div>
      <img src="no-such-figure.png">
      <div class="cell_output"><div class="output traceback"><pre>Traceback (most recent call last)
ZeroDivisionError: division by zero</pre></div></div>
      <div class="cell tag_raises-exception"><div class="cell_output"><div class="output traceback">
        <pre>Traceback (most recent call last)
ValueError: shown on purpose</pre></div></div></div>
      <div class="cell_output"><div class="output stderr"><pre>RuntimeError: in stderr</pre></div></div>
      </article></main></body></html>""")
    (tmp_path / "figureless.html").write_text("""<!doctype html><html><head>
      <title>No figure</title></head><body><article class="bd-article"><h1>Prose only</h1>
      <div class="cell tag_raises-exception"><div class="cell_output"><div class="output traceback">
        <pre>Traceback (most recent call last)
ValueError: shown on purpose</pre></div></div></div></article></body></html>""")
    (tmp_path / "math.html").write_text("""<!doctype html><html><head><title>Math</title>
      <script>window.MathJax = {options: {processHtmlClass: "math"}}</script>
      <script defer src="mathjax/tex-mml-chtml.js"></script></head>
      <body class="tex2jax_ignore"><article class="bd-article"><h1>Equations</h1>
      <p>Good: <span class="math">\\(\\min\\bigl(1, p(x)/q(x)\\bigr)\\)</span>.
         Bad: <span class="math">\\(x^2^3\\)</span>.</p></article></body></html>""")
    with serve(tmp_path) as url:
        broken, _ = problems_on(tab, url + "broken.html", from_notebook=True)
        figureless, _ = problems_on(tab, url + "figureless.html", from_notebook=True)
        prose, _ = problems_on(tab, url + "figureless.html", from_notebook=False)
        math, seen_math = problems_on(tab, url + "math.html", from_notebook=False)
    found = "\n".join(broken)
    assert "ZeroDivisionError" in found
    assert "shown on purpose" not in found
    assert "RuntimeError: in stderr" in found
    assert "image did not load: no-such-figure.png" in found
    assert "missing.js -> HTTP 404" in found
    assert "{glue:text}`" in found
    assert "MathJax did not load; 1 equations show as raw LaTeX" in found
    assert not any("no figure" in problem for problem in broken)
    assert figureless == ["a chapter notebook page shows no figure (no image in any cell output)"]
    assert prose == []
    assert seen_math["equations"] == 2 and seen_math["mathjaxLoaded"]
    assert len(math) == 1 and math[0].startswith("an equation has a LaTeX error"), math


def _installed_mathjax():
    """The MathJax bundle the book serves (see _ext/offline_mathjax.py)."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    assert spec is not None and spec.submodule_search_locations, (
        "django-static-mathjax (MathJax for the offline book) is not installed: `make setup`")
    return Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"


def _tiny_png() -> bytes:
    """A valid 1x1 PNG, made here so the control needs no file from anywhere."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x30\x60\x90")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
