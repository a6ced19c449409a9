"""Every notebook runs top to bottom headless on the bundled sample (nbclient); any cell error fails."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_data.ipynb", "02_train_and_evaluate.ipynb", "03_compare_baselines.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [
        o for c in nb.cells for o in c.get("outputs", []) if any(k.startswith("image/") for k in o.get("data", {}))
    ]
    assert images, "the notebook should show at least one figure"
