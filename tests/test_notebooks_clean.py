"""Every notebook follows the course's shape and ships without stray outputs."""

from pathlib import Path

import nbformat
import pytest

from nbtools import CHECK, is_checked

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ is empty"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "arxiv" in first.source.lower(), "the opening cites its papers"
    assert "laptop CPU" in first.source, "the opening says how long it takes on a laptop CPU"
    assert nb.cells[-1].cell_type == "markdown" and "Exercises" in nb.cells[-1].source
    assert any('os.environ.get("SORA_EDU_SMOKE") == "1"' in c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stripped_except_checked_cells(path):
    nb = nbformat.read(path, as_version=4)
    checked = [c for c in nb.cells if is_checked(c)]
    assert checked, f"{path.name} has no {CHECK} cell"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            # Without stored output and an execution count nbval silently skips the check.
            assert cell.outputs and cell.execution_count is not None, cell.source[:80]
        else:
            assert not cell.outputs and cell.execution_count is None, cell.source[:80]
