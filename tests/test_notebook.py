"""examples/quickstart.ipynb runs top to bottom in a fresh Jupyter kernel, as a reader runs it."""

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_quickstart_runs_and_learns(tmp_path, monkeypatch):
    # One CPU device as on a laptop (not the 8 simulated ones of conftest), runs in tmp_path.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAXLM_QUICKSTART_DIR", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,  # per cell
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error

    text = "\n".join(_stdout(cell) for cell in notebook.cells if cell.cell_type == "code")
    perplexity = float(re.search(r"eval loss [\d.]+, perplexity ([\d.]+)", text).group(1))
    assert perplexity < 1024 / 2  # well below the untrained model's (the vocabulary size)
    accuracy = float(re.search(r"^accuracy ([\d.]+), macro F1 ([\d.]+)", text, re.M).group(1))
    assert accuracy > 0.7  # balanced classes: chance is 0.5
    images = [
        o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert images, "the loss curve is displayed"
    assert (tmp_path / "gpt" / "checkpoints").is_dir()
    assert (tmp_path / "classifier" / "metrics.jsonl").is_file()
