"""notebooks/channels.ipynb runs on small samples without errors and draws its figures."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Jupyter kernel (notebooks run in the slow tier)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "channels.ipynb"


def test_channels_notebook_executes(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("N = 2000"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
