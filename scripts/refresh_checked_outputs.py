"""Execute notebooks and keep only the outputs that nbval must check.

The book's notebooks carry no outputs, except in cells tagged ``nbval-check-output``: those
hold the expected output of a seeded computation, which ``pytest --nbval-lax`` compares on
every run. This script re-executes each notebook (``SPECDEC_PROFILE=ci``, as CI runs it),
stores the outputs of the tagged cells and clears all others.

    .venv/bin/python scripts/refresh_checked_outputs.py book/03_rejection_sampling.ipynb ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TAG = "nbval-check-output"


def is_checked(cell) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", []) or "# NBVAL_CHECK_OUTPUT" in cell.source


def refresh(path: Path, timeout: int = 900) -> int:
    nb = nbformat.read(path, as_version=4)
    os.environ["SPECDEC_PROFILE"] = "ci"
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    kept = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            kept += 1
            errors = [o for o in cell.outputs if o.output_type == "error"]
            if errors:
                raise RuntimeError(f"{path}: a checked cell raised {errors[0].ename}")
            cell.outputs = [o for o in cell.outputs if o.output_type != "stream" or o.name == "stdout"]
        else:
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)  # progress-bar widget state: noise, not content
    nbformat.write(nb, path)
    return kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for path in args.notebooks:
        print(f"{path}: {refresh(path)} checked cells", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
