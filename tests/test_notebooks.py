"""The notebooks as committed: listed in the table of contents, no stray outputs, and the cells
that nbval checks really carry the outputs it compares against."""

from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
TAG = "nbval-check-output"
# The widest code line the rendered page shows without a scroll bar (sphinx-book-theme at a
# 1280-pixel window): longer lines run off the right edge.
MAX_CODE_LINE = 76


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return {c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])}


def test_every_chapter_is_in_the_table_of_contents():
    assert NOTEBOOKS, "no chapter notebooks found"
    missing = {f"book/{nb.stem}" for nb in NOTEBOOKS} - toc_files()
    assert not missing, f"chapters missing from _toc.yml: {sorted(missing)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_only_where_nbval_checks_them(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    checked = [c for c in code if TAG in c.metadata.get("tags", [])]
    assert checked, f"{path.name}: no cell tagged {TAG}; nbval would check nothing"
    for cell in code:
        if cell in checked:
            assert cell.outputs, f"{path.name}: a {TAG} cell has no stored output to compare:\n{cell.source[:200]}"
        else:
            assert not cell.outputs, f"{path.name}: an unchecked cell carries outputs:\n{cell.source[:200]}"
        assert all(o.output_type != "error" for o in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_opens_with_its_label_and_title(path):
    first = nbformat.read(path, as_version=4).cells[0]
    lines = first.source.splitlines()
    assert first.cell_type == "markdown" and lines[0].startswith("(ch-") and lines[0].endswith(")=")
    assert lines[1].startswith("# "), f"{path.name}: no chapter title after the label"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_fits_the_page(path):
    nb = nbformat.read(path, as_version=4)
    long = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
            if len(line) > MAX_CODE_LINE]
    assert not long, f"{path.name}: {len(long)} code line(s) wider than {MAX_CODE_LINE} characters: {long[:3]}"
