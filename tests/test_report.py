"""The per-run report: written at the end of training and by ``tinyvision report RUN``.

One tiny run is trained for the whole module; the report's numbers are checked against the
run's own files and against an independent evaluation of ``model.pt``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import markupsafe
import pytest
import torch

from tinyvision.cli import main
from tinyvision.config import toml_value, tomllib
from tinyvision.engine import train
from tinyvision.errors import TinyVisionError
from tinyvision.models import Variant, create_model, get_variant
from tinyvision.report import write_report
from tinyvision.runs import RunFolder, format_duration

MARKUP = "<img src=x onerror=alert(1)>"  # in a user's path: must never become markup


def tiny_overrides(data_dir: Path, out_dir: Path) -> list[str]:
    """The conftest's tiny_config settings (that fixture is per test; this run is per module)."""
    return [
        f'data.data_dir="{data_dir}"', "data.verify=false", "data.download=false",
        "data.batch_size=64", "data.eval_batch_size=128", f'train.out_dir="{out_dir}"',
        "train.epochs=2", "train.progress=off", "train.threads=1",
        "model.name=mixer", "model.patch_size=7", "model.dim=32", "model.depth=1",
        "model.token_hidden=16", "model.channel_hidden=64", "optim.lr=3e-3",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tiny_fashion_dir, tmp_path_factory) -> Path:
    # The data folder's name carries markup: the report shows it (config, data source).
    data_dir = tmp_path_factory.mktemp("report-data") / f"fashion{MARKUP}"
    shutil.copytree(tiny_fashion_dir, data_dir)
    out = tmp_path_factory.mktemp("report-runs")
    # The CLI trains, then writes the report from the finished run folder.
    assert main(["train", *tiny_overrides(data_dir, out)]) == 0
    (run,) = out.iterdir()
    return run


def test_training_writes_the_report_files(run_dir):
    for name in ("report.html", "report.md", "curves.png", "confusion.png", "misclassified.png"):
        assert (run_dir / name).stat().st_size > 0, name
    per_class = json.loads((run_dir / "per_class.json").read_text())
    assert per_class["test_size"] == 320


def test_report_shows_every_hyperparameter_and_the_final_accuracy(run_dir):
    page = (run_dir / "report.html").read_text()
    markdown = (run_dir / "report.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    accuracy = f"{100 * summary['final_test_acc']:.2f}%"
    assert f'id="final-test-acc">{accuracy}<' in page
    assert f"| final test accuracy | {accuracy} |" in markdown

    config = tomllib.loads((run_dir / "config.toml").read_text())
    for section, values in config.items():
        assert f"<h3>[{section}]</h3>" in page and f"### [{section}]" in markdown
        for key, value in values.items():
            shown = toml_value(value)  # as TOML writes it: "adamw", true, [3, 3]
            assert f"<td>{key}</td><td><code>{markupsafe.escape(shown)}</code>" in page, key
            assert f"| {key} |" in markdown or f"| **{key}** |" in markdown, key

    assert "brief A · Patch-MLP (Mixer)" in page  # the family's brief, from its class name
    assert f"{summary['parameters']:,}" in page  # parameters, from summarize()
    assert "MACs per image" in page and "torch" in page and "wall time" in page
    assert "NOT verified" in page  # the data's integrity check, as the run recorded it
    for figure in ("curves.png", "confusion.png", "misclassified.png"):
        assert f"]({figure})" in markdown  # report.md points at the files beside it
    assert 'src="data:image/png;base64,' in page and 'src="http' not in page


def test_user_text_is_escaped(run_dir):
    page = (run_dir / "report.html").read_text()
    markdown = (run_dir / "report.md").read_text()
    assert MARKUP in (run_dir / "config.toml").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<img src=x" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown


def test_per_class_accuracy_matches_an_independent_evaluation(run_dir, tiny_fashion_dir):
    from tinyvision.data import load_dataset

    per_class = json.loads((run_dir / "per_class.json").read_text())
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    model = create_model(
        saved["model_name"],
        in_chans=saved["in_chans"],
        num_classes=saved["num_classes"],
        image_size=saved["image_size"],
        **saved["model_params"],
    )
    model.load_state_dict(saved["model"])
    data = load_dataset("fashion-mnist", tiny_fashion_dir, download=False, verify=False)
    mean = torch.tensor(saved["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(saved["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model.eval()((data.test_images.float() / 255 - mean) / std)
    predicted = logits.argmax(1)

    confusion = torch.tensor(per_class["confusion"])
    assert confusion.sum().item() == len(data.test_labels)  # every test image, once
    for row in per_class["per_class"]:
        mine = data.test_labels == row["index"]
        assert row["count"] == mine.sum().item()
        assert row["correct"] == (predicted[mine] == row["index"]).sum().item(), row["class"]
        assert row["accuracy"] == pytest.approx(row["correct"] / row["count"])
        assert confusion[row["index"]].sum().item() == row["count"]
    assert per_class["correct"] == (predicted == data.test_labels).sum().item()
    # ...and the re-evaluated model.pt is the model whose accuracy the training logged.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert per_class["accuracy"] == pytest.approx(summary["final_test_acc"], abs=1e-9)


def test_report_command_rewrites_the_report(run_dir, capsys):
    for name in ("report.html", "report.md", "per_class.json", "confusion.png"):
        (run_dir / name).unlink()
    started = time.perf_counter()
    assert main(["report", str(run_dir)]) == 0
    assert time.perf_counter() - started < 20  # evaluation is batched; figures are quick
    assert f"report: {run_dir / 'report.html'}" in capsys.readouterr().out
    for name in ("report.html", "report.md", "per_class.json", "confusion.png"):
        assert (run_dir / name).exists()


def test_report_command_rewrites_the_report_of_a_run_folder_copied_elsewhere(
    run_dir, tmp_path, capsys
):
    # The report reads the run folder alone: nothing the training process held in memory, and
    # no path it recorded (summary.json still names the original folder).
    copy = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(run_dir, copy)
    for name in ("report.html", "report.md", "per_class.json", "confusion.png", "curves.png"):
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out
    page = (copy / "report.html").read_text()
    assert "<h1>copied-run</h1>" in page
    assert (copy / "curves.png").stat().st_size > 0  # redrawn from the copied metrics
    copied = json.loads((copy / "per_class.json").read_text())
    original = json.loads((run_dir / "per_class.json").read_text())
    assert copied["confusion"] == original["confusion"]


def test_report_of_an_unfinished_run_says_how_to_finish_it(tiny_config):
    run = RunFolder.create(tiny_config())
    with pytest.raises(TinyVisionError, match="train --resume"):
        write_report(run.path)
    assert main(["report", str(run.path / "nowhere")]) == 2


@pytest.mark.parametrize(
    ("variant", "letter"),
    [("mixer", "A"), ("dynconv_brief", "B"), ("resmlp", "C"), ("densenet_l", "D")],
)
def test_each_family_declares_its_brief(variant, letter):
    assert get_variant(variant).brief.letter == letter
    # Only DenseNet's brief asks questions about the network.
    assert (get_variant(variant).brief.answers is not None) == (letter == "D")


def test_a_family_without_a_brief_has_none():
    assert Variant("plain", torch.nn.Linear).brief is None


# --- what a person sees in a terminal, and what CI logs ------------------------------------


def cli_train(tiny_fashion_dir: Path, out: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "tinyvision", "train", "--epochs", str(epochs),
        "--data-dir", str(tiny_fashion_dir), "--no-verify", "--no-download", "--out", str(out),
        "train.threads=1", "model.patch_size=7", "model.dim=16", "model.depth=1",
        "data.batch_size=32",
    ]  # fmt: skip


def test_training_log_stays_short_without_a_terminal(tiny_fashion_dir, tmp_path):
    """progress = auto: no bars when output goes to a file or a CI log, one line per epoch."""
    epochs = 3
    result = subprocess.run(
        cli_train(tiny_fashion_dir, tmp_path, epochs),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= epochs + 8, "\n".join(lines)
    assert "\r" not in result.stdout + result.stderr  # no progress-bar redraws
    assert sum(line.startswith("epoch ") for line in lines) == epochs
    (run,) = tmp_path.iterdir()
    assert f"report: {run / 'report.html'}" in result.stdout


def test_training_shows_a_progress_bar_on_a_terminal(tiny_config, monkeypatch):
    """The same setting on a terminal draws the bar (stderr that says it is a terminal)."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(tiny_config("train.progress=auto", "train.epochs=1"))
    assert "epoch 1/1:" in terminal.getvalue()  # tqdm's bar, described per epoch
    assert "step/s" in terminal.getvalue() or "s/step" in terminal.getvalue()


@pytest.mark.parametrize(
    ("seconds", "long", "compact"),
    [
        (4.25, "4.2 s", "4.2s"),
        (65, "1 min 05 s", "1m05s"),
        (3599.6, "1 h 00 min", "1h00m"),  # rounds to whole seconds before splitting
        (7322, "2 h 02 min", "2h02m"),
    ],
)
def test_durations_read_the_same_in_reports_and_compare_tables(seconds, long, compact):
    assert format_duration(seconds) == long
    assert format_duration(seconds, compact=True) == compact


def test_tta_views_are_the_mirror_and_one_pixel_shifts_with_black_fill():
    from tinyvision.data import tta_views

    images = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    fill = torch.full((1, 1, 1, 1), -7.0)
    assert len(tta_views(images, "none", fill)) == 1
    plain, mirror = tta_views(images, "flip", fill)
    assert torch.equal(plain, images)
    assert torch.equal(mirror[..., 0], images[..., -1])
    views = tta_views(images, "flip-shift", fill)
    assert len(views) == 6
    down_right, up_left = views[2], views[3]
    assert torch.equal(down_right[..., 1:, 1:], images[..., :-1, :-1])
    assert (down_right[..., 0, :] == -7).all() and (down_right[..., :, 0] == -7).all()
    assert torch.equal(up_left[..., :-1, :-1], images[..., 1:, 1:])
    assert (up_left[..., -1, :] == -7).all() and (up_left[..., :, -1] == -7).all()
    assert torch.equal(views[4][..., 1:, 1:], mirror[..., :-1, :-1])  # the mirror, shifted
    with pytest.raises(TinyVisionError, match="unknown test-time augmentation 'rotate'"):
        tta_views(images, "rotate", fill)


def test_evaluate_reports_plain_and_tta_accuracy_side_by_side(run_dir):
    result = subprocess.run(
        [sys.executable, "-m", "tinyvision", "evaluate", str(run_dir), "--tta", "flip-shift"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    plain_line, tta_line = result.stdout.splitlines()[:2]
    assert plain_line.endswith("(plain)")
    assert tta_line.endswith("(test-time augmentation: flip-shift)")
    record = json.loads((run_dir / "evaluation.json").read_text())
    # The plain figure is the report's: the same model.pt on the same test split.
    per_class = json.loads((run_dir / "per_class.json").read_text())
    assert record["test_acc"] == pytest.approx(per_class["accuracy"])
    assert f"{100 * record['test_acc']:.2f}%" in plain_line
    assert f"{100 * record['test_acc_tta_flip-shift']:.2f}%" in tta_line
    assert 0.0 <= record["test_acc_tta_flip-shift"] <= 1.0
    # A later mode is added beside the first, not in its place.
    from tinyvision.evaluate import evaluate_run

    evaluate_run(run_dir, tta="flip")
    record = json.loads((run_dir / "evaluation.json").read_text())
    assert {"test_acc_tta_flip", "test_acc_tta_flip-shift"} <= record.keys()
