"""`tinyvision export`: ONNX files whose logits, run by onnxruntime, equal PyTorch's within
tolerance, for a trained tiny run of every model family, at batch sizes the export never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tinyvision.loop
from tinyvision.cli import main
from tinyvision.config import load_config
from tinyvision.data import load_dataset
from tinyvision.engine import train
from tinyvision.errors import TinyVisionError
from tinyvision.export import ATOL, export_onnx
from tinyvision.models import list_variants
from tinyvision.predict import load_run_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

# One small configuration per family, with its extras on (norms, dropout, BN running statistics)
# so eval-mode behaviour is part of what the export must reproduce.
FAMILIES = {
    "mixer": {
        "name": "mixer",
        "patch_size": 7,
        "dim": 16,
        "depth": 2,
        "token_hidden": 8,
        "channel_hidden": 32,
        "dropout": 0.1,
    },
    "resmlp": {"name": "resmlp", "width": 32, "depth": 2, "hidden": 32},
    "densenet": {
        "name": "densenet",
        "growth_rate": 4,
        "stem_channels": 8,
        "block_layers": [2, 2],
        "transition_channels": 8,
    },
    "dynconv": {
        "name": "dynconv",
        "stem_width": 8,
        "widths": [8, 16],
        "depths": 1,
        "strides": [2, 2],
        "conv_bias": True,
    },
}
PRESENT = {v.family.__module__.rsplit(".", 1)[-1] for v in list_variants()}


def inline_table(values: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "}"


@pytest.fixture(scope="module")
def runs(tiny_fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained tiny run (one epoch) of each family that exists in this tree."""
    out = tmp_path_factory.mktemp("export-runs")
    trained = {}
    with pytest.MonkeyPatch.context() as patch:
        # Curves are not what these tests are about, and cost seconds (train() writes no report).
        patch.setattr(tinyvision.loop, "plot_curves", lambda run: None)
        for family, model in FAMILIES.items():
            if family in PRESENT:
                settings = [
                    f'data.data_dir="{tiny_fashion_dir}"',
                    "data.verify=false",
                    "data.download=false",
                    "data.batch_size=64",
                    f'train.out_dir="{out}"',
                    "train.epochs=1",
                    "train.progress=off",
                    "train.threads=1",
                    f"model={inline_table(model)}",
                ]
                trained[family] = train(load_config(None, settings)).run_dir
    return trained


@pytest.fixture(scope="module")
def test_images(tiny_fashion_dir: Path) -> torch.Tensor:
    dataset = load_dataset("fashion-mnist", tiny_fashion_dir, download=False, verify=False)
    x = dataset.test_images[:7].float() / 255
    return (x - dataset.mean[0]) / dataset.std[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnxruntime_gives_pytorchs_logits(family, runs, test_images, tmp_path, reliability):
    if family not in runs:
        pytest.skip(f"the {family} family is not in this tree")
    path = export_onnx(runs[family], tmp_path / f"{family}.onnx").path
    model, saved = load_run_model(runs[family])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 7):  # the export traced a batch of 2: the batch dimension must be free
        images = test_images[:batch]
        with torch.inference_mode():
            expected = model(images).numpy()
        (got,) = session.run(["logits"], {"images": images.numpy()})
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
        worst = max(worst, float(np.abs(got - expected).max()))
    metadata = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(metadata["classes"]) == list(saved["classes"])
    assert json.loads(metadata["mean"]) == list(saved["mean"])
    assert metadata["model_name"] == FAMILIES[family]["name"]
    reliability.record(
        "export",
        f"ONNX export of a trained tiny {family} run, batches of 1 and 7",
        f"onnxruntime logits within {worst:.1e} of PyTorch's (tolerance {ATOL:g})",
    )


def test_cli_writes_run_model_onnx_and_checks_it(runs, capsys):
    run = next(iter(runs.values()))
    assert main(["export", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"ONNX model: {run / 'model.onnx'}" in out and "checked with onnxruntime" in out
    assert (run / "model.onnx").is_file()
    assert not list(run.glob(".*.tmp"))


def test_bad_export_requests_are_refused(runs, tmp_path, reliability):
    run = next(iter(runs.values()))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.toml").write_text((run / "config.toml").read_text())
    cases = [
        ("not a run folder", tmp_path, None, "is not a tinyvision run folder"),
        ("run without model.pt (unfinished)", unfinished, None, "has no model.pt"),
        ("--out without .onnx", run, tmp_path / "model.txt", "ending in .onnx"),
    ]
    for case, folder, out, expected in cases:
        with pytest.raises(TinyVisionError, match=expected) as err:
            export_onnx(folder, out)
        reliability.record("export", case, f"exit 2, 'error: {err.value}'")
    assert not (tmp_path / "model.txt").exists()
