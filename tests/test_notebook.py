"""The example notebooks run top to bottom (with small settings), so they never rot."""

from __future__ import annotations

import json
from pathlib import Path

import nbclient
import nbformat
import pytest
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
    figures = png_outputs(notebook)
    assert len(figures) >= 2  # sample images and the curves

    (final,) = [c for c in notebook.cells if "final-accuracy" in c.metadata.get("tags", [])]
    (output,) = final.outputs
    line = output["text"].strip()
    assert line.startswith("Final test accuracy: ")
    accuracy = float(line.removeprefix("Final test accuracy: ").split("%")[0])
    assert 10.0 < accuracy <= 100.0  # one quick epoch already beats chance


def tiny_cifar_dir(folder: Path) -> Path:
    """A tiny CIFAR-10 in the official python-pickle format (5 training batches, 1 test batch),
    whose classes a model learns in a few steps: a bright square at a class-specific place."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        labels = np.arange(64) % 10
        images = rng.integers(0, 60, size=(64, 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            images[i, :, 4 + 12 * row : 12 + 12 * row, 2 + 6 * col : 6 + 6 * col] = 230
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": images.reshape(64, 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(64)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def png_outputs(notebook) -> list:
    """Every figure the notebook's cells displayed."""
    return [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]


def outputs_text(notebook) -> str:
    return "\n".join(
        out.get("text", "") + out.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        for out in cell.get("outputs", [])
    )


def tagged_output(notebook, tag: str) -> str:
    (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return "".join(out.get("text", "") for out in cell.outputs).strip()


@pytest.mark.parametrize(
    ("name", "dataset", "model", "tried"),
    [
        ("mixer_brief.ipynb", "fashion-mnist", "mixer_brief", True),
        ("resmlp_brief.ipynb", "fashion-mnist", "resmlp_brief", True),
        ("dynconv_brief.ipynb", "cifar10", "dynconv_brief", False),
    ],
)
def test_brief_notebook_runs_and_hands_in_what_its_brief_asks(
    name, dataset, model, tried, tiny_fashion_dir, tmp_path, monkeypatch
):
    if dataset == "cifar10":
        (tmp_path / "cifar").mkdir()
        data_dir = tiny_cifar_dir(tmp_path / "cifar")
    else:
        data_dir = tiny_fashion_dir  # always the tiny set: these notebooks train on all of it
    env = {
        "TINYVISION_NOTEBOOK_QUICK": "1",
        "OMP_NUM_THREADS": "1",
        "TINYVISION_NOTEBOOK_DATA_DIR": str(data_dir),
        "TINYVISION_NOTEBOOK_VERIFY": "0",
        "TINYVISION_NOTEBOOK_OUT": str(tmp_path / "runs"),
    }
    notebook = run_notebook(EXAMPLES / name, env, monkeypatch)

    assert sum(c.cell_type == "markdown" for c in notebook.cells) >= 8  # explained in prose
    figures = png_outputs(notebook)
    assert len(figures) >= 2  # sample images and the curves
    text = outputs_text(notebook)
    assert "model.name" in text and "optim.lr" in text  # every hyperparameter in a table
    runs = sorted((tmp_path / "runs").iterdir())
    main_runs = [r for r in runs if "-try-" not in r.name]
    assert main_runs and all(model in (r / "config.toml").read_text() for r in main_runs)

    line = tagged_output(notebook, "final-accuracy")
    assert line.startswith("Final test accuracy: ")
    accuracy = float(line.removeprefix("Final test accuracy: ").split("%")[0])
    assert 0.0 <= accuracy <= 100.0 and "(train " in line
    summary = json.loads((main_runs[0] / "summary.json").read_text())
    assert f"{summary['final_test_acc']:.2%}" in line  # the run's own number
    if tried:
        table = tagged_output(notebook, "tried-settings")
        assert "best val acc" in table and len(table.splitlines()) >= 4
