"""The example notebooks run top to bottom (with small settings), so they never rot."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
from conftest import REAL_FASHION

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_notebook(path: Path, env: dict[str, str], monkeypatch) -> object:
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute()
    return notebook


def test_committed_notebooks_carry_no_outputs():
    notebooks = sorted(EXAMPLES.glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


def test_densenet_notebook_runs_and_reports_the_final_accuracy(tiny_fashion_dir, monkeypatch):
    # One thread: on a small shared CI machine more threads only wait on each other.
    env = {"TINYVISION_NOTEBOOK_QUICK": "1", "OMP_NUM_THREADS": "1"}
    if not REAL_FASHION.is_dir():  # the real data when it is installed, else the tiny set
        env |= {"TINYVISION_NOTEBOOK_DATA_DIR": str(tiny_fashion_dir)}
        env |= {"TINYVISION_NOTEBOOK_VERIFY": "0"}
    notebook = run_notebook(EXAMPLES / "densenet_brief.ipynb", env, monkeypatch)

    markdown = [c for c in notebook.cells if c.cell_type == "markdown"]
    assert len(markdown) >= 8  # the steps are explained in prose
    text = "\n".join(
        out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
    )
    assert "Dense block 1 runs at 14x14" in text  # the brief's shape questions, answered
    assert "final fully connected layer takes 40 input features" in text  # 4 + 3 x 12
    figures = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(figures) >= 2  # sample images and the curves

    (final,) = [c for c in notebook.cells if "final-accuracy" in c.metadata.get("tags", [])]
    (output,) = final.outputs
    line = output["text"].strip()
    assert line.startswith("Final test accuracy: ")
    accuracy = float(line.removeprefix("Final test accuracy: ").split("%")[0])
    assert 10.0 < accuracy <= 100.0  # one quick epoch already beats chance
