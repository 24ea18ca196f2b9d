"""Keep notebooks clean in git: outputs stripped except where CI checks them.

    python tests/nbtools.py refresh notebooks/00_the_road_to_sora.ipynb [...]

``refresh`` runs a notebook in smoke mode, then strips every output except those of cells
marked ``# NBVAL_CHECK_OUTPUT``: nbval compares exactly those against a fresh run, so they
must ship (nbval skips the comparison for a cell stored without an execution count).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat

CHECK = "# NBVAL_CHECK_OUTPUT"


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK)


def strip(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata = {}
        if is_checked(cell):
            cell.outputs = [o for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"]
            cell.execution_count = 1
        else:
            cell.outputs, cell.execution_count = [], None
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}


def refresh(path: Path) -> None:
    from nbclient import NotebookClient

    os.environ["SORA_EDU_SMOKE"] = "1"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    strip(nb)
    nbformat.write(nb, path)
    print(f"refreshed {path}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "refresh":
        sys.exit(__doc__)
    for name in sys.argv[2:]:
        refresh(Path(name))
