"""What a run hands back to a person: its curves, and a report of everything a brief asks for.

    plot_curves(run)     curves.png: the loss over training, training and test accuracy per epoch
    write_report(run)    report.html and report.md, with beside them
                             confusion.png      confusion matrix of the test split
                             misclassified.png  the most confidently wrong test images
                             per_class.json     the numbers behind both (for scripts and tests)

The report re-evaluates the test split with the saved ``model.pt`` (rebuilt from its own
record of the architecture), so it checks that the file a user keeps really is the model whose
accuracy the metrics claim. ``report.html`` is one self-contained file (figures embedded as
data URIs, CSS inline, no scripts, nothing fetched): it opens offline and can be mailed.
``report.md`` references the figures as files next to it.

``tinyvision report RUN`` writes it again on demand; training writes it at the end of a run.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in CI and over SSH
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from torch import nn

import tinyvision
from tinyvision.errors import TinyVisionError, WriteError
from tinyvision.runs import RunFolder, atomic_write, atomic_write_text, format_duration

FIGURE_DPI = 110
MAX_MISCLASSIFIED = 40  # images in the grid: enough to see a pattern, small enough to scan


# --- curves (written after every epoch by the engine) -----------------------------------------


def plot_curves(run: RunFolder) -> None:
    """``curves.png``: the loss over training, and training and test accuracy per epoch."""
    metrics = run.read_metrics()
    steps = run.read_steps()
    if not metrics:
        return
    epochs = [m["epoch"] for m in metrics]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)

    if steps:
        loss_ax.plot(
            [s[1] for s in steps],
            [s[2] for s in steps],
            color="tab:blue",
            alpha=0.35,
            linewidth=0.8,
            label="train (every few steps)",
        )
    loss_ax.plot(
        epochs,
        [m["train_loss"] for m in metrics],
        "o-",
        color="tab:blue",
        label="train (epoch mean)",
    )
    for split, color in (("val", "tab:green"), ("test", "tab:orange")):
        points = [(m["epoch"], m[f"{split}_loss"]) for m in metrics if f"{split}_loss" in m]
        if points:
            loss_ax.plot(*zip(*points, strict=True), "o-", color=color, label=split)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()

    acc_ax.plot(
        epochs, [100 * m["train_acc"] for m in metrics], "o-", color="tab:blue", label="train"
    )
    for split, color in (("val", "tab:green"), ("test", "tab:orange")):
        points = [(m["epoch"], 100 * m[f"{split}_acc"]) for m in metrics if f"{split}_acc" in m]
        if points:
            acc_ax.plot(*zip(*points, strict=True), "o-", color=color, label=split)
    last = metrics[-1]
    if "test_acc" in last:
        acc_ax.annotate(
            f"{100 * last['test_acc']:.2f}%",
            (last["epoch"], 100 * last["test_acc"]),
            textcoords="offset points",
            xytext=(-4, -15),
            ha="right",  # inside the axes: the last epoch sits at the right edge
            color="tab:orange",
        )
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers

    config = run.load_config()
    fig.suptitle(f"{config.model_name} on {config.data.dataset} ({run.path.name})")
    _save_figure(fig, run.path / "curves.png")


def _save_figure(fig: plt.Figure, path: Path) -> bytes:
    """Write ``fig`` to ``path`` as PNG (atomically) and return the bytes, for embedding."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    plt.close(fig)
    data = buffer.getvalue()
    atomic_write(path, lambda file: file.write(data))
    return data


# --- which brief a model implements -----------------------------------------------------------


@dataclass(frozen=True)
class Brief:
    letter: str
    title: str
    summary: str  # the specified network in one line


# Keyed by a word in the family class's name (Mixer, DynConv..., ResMLP, DenseNet), so a renamed
# variant still finds its brief; the variants' own one-line descriptions come from the registry.
BRIEFS = {
    "mixer": Brief(
        "A",
        "Patch-MLP (Mixer)",
        "K×K patches → linear or MLP stem → blocks of a patch-mixing MLP and a feature-mixing "
        "MLP → mean over patches → softmax regression.",
    ),
    "dyn": Brief(
        "B",
        "Dynamic-convolution CNN",
        "blocks of K convolutions mixed per image by a = g(SpatialAveragePool(X) W) → spatial "
        "average pooling → softmax regression.",
    ),
    "resmlp": Brief(
        "C",
        "Residual MLP",
        "flatten → linear to width w → residual blocks x + FC₂(act(FC₁(x))) → linear to the "
        "logits.",
    ),
    "dense": Brief(
        "D",
        "DenseNet",
        "3×3 conv to 4 channels → average pool → dense block (3 layers, growth k) → transition "
        "back to 4 channels → dense block (3 layers) → global average pool → FC.",
    ),
}


def brief_for(family_name: str) -> Brief | None:
    """The brief a model family implements, from its class name; ``None`` if it is none of them."""
    name = family_name.lower()
    for word, brief in BRIEFS.items():
        if word in name:
            return brief
    return None


# --- evaluation of the saved model --------------------------------------------------------------


@dataclass
class SplitEvaluation:
    """Predictions of the saved model on the whole test split."""

    classes: list[str]
    labels: torch.Tensor  # int64 [N]
    predictions: torch.Tensor  # int64 [N]
    confidence: torch.Tensor  # float32 [N]: softmax probability of the predicted class
    device: str
    seconds: float

    @property
    def confusion(self) -> np.ndarray:
        """[true class, predicted class] counts; the rows sum to the class sizes."""
        n = len(self.classes)
        flat = torch.bincount(self.labels * n + self.predictions, minlength=n * n)
        return flat.view(n, n).numpy()

    def per_class(self) -> list[dict[str, Any]]:
        """One row per class: size, correct, accuracy, and the class it is most mistaken for."""
        confusion = self.confusion
        rows = []
        for i, name in enumerate(self.classes):
            count, correct = int(confusion[i].sum()), int(confusion[i, i])
            wrong = confusion[i].copy()
            wrong[i] = -1
            j = int(wrong.argmax())
            rows.append(
                {
                    "index": i,
                    "class": name,
                    "count": count,
                    "correct": correct,
                    "accuracy": correct / count if count else None,
                    "most_confused_with": self.classes[j] if wrong[j] > 0 else None,
                    "most_confused_count": int(max(wrong[j], 0)),
                }
            )
        return rows

    def most_confident_mistakes(self, limit: int) -> list[int]:
        """Indices of misclassified test images, the most confidently wrong first."""
        wrong = torch.nonzero(self.labels != self.predictions).flatten()
        order = torch.argsort(self.confidence[wrong], descending=True, stable=True)
        return wrong[order][:limit].tolist()


def load_saved_model(run: RunFolder) -> tuple[nn.Module, dict[str, Any]]:
    """The final model of ``run``, rebuilt from ``model.pt`` alone, in eval mode on the CPU."""
    from tinyvision.models import create_model

    if not run.model_path.exists():
        raise TinyVisionError(
            f"{run.path} has no model.pt: the run did not finish. Resume it with "
            f"`tinyvision train --resume {run.path}`, then write the report."
        )
    # weights_only: loading a report must never run code from a file someone handed over.
    saved = torch.load(run.model_path, map_location="cpu", weights_only=True)
    model = create_model(
        saved["model_name"],
        in_chans=saved["in_chans"],
        num_classes=saved["num_classes"],
        image_size=tuple(saved["image_size"]),
        **saved["model_params"],
    )
    model.load_state_dict(saved["model"])
    return model.eval(), saved


# Test-time augmentation: the views of an image whose predictions are averaged. Each mode undoes
# an augmentation the model was trained with: "flip" suits training with augment.flip, "shift"
# views (translations by one pixel, black fill) suit training with augment.crop_padding.
TTA_MODES = ("none", "flip", "flip-shift")


def tta_views(images: torch.Tensor, mode: str, fill: torch.Tensor) -> list[torch.Tensor]:
    """``images`` [B, C, H, W] (normalised) and its test-time views: the mirror image for
    "flip"; for "flip-shift" also both of them moved one pixel down-right and up-left, the
    uncovered border filled with ``fill`` [1, C, 1, 1] (normalised black)."""
    if mode not in TTA_MODES:
        raise TinyVisionError(f"unknown test-time augmentation {mode!r}; choose one of {TTA_MODES}")
    views = [images]
    if mode in ("flip", "flip-shift"):
        views.append(images.flip(-1))
    if mode == "flip-shift":
        h, w = images.shape[-2:]
        for view in views[:2]:
            padded = torch.nn.functional.pad(view - fill, (1, 1, 1, 1)) + fill
            views.append(padded[..., :h, :w])  # content moved down-right by one pixel
            views.append(padded[..., 2:, 2:])  # content moved up-left by one pixel
    return views


@torch.inference_mode()
def evaluate_test_split(
    model: nn.Module,
    dataset: Any,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    device: torch.device,
    autocast: Any = None,
    tta: str = "none",
) -> SplitEvaluation:
    """Predict every test image, batched on ``device``, normalised exactly as in training;
    ``tta`` (see ``TTA_MODES``) averages the softmax over transformed copies of each image."""
    import contextlib

    from tinyvision.data import DeviceLoader

    started = time.perf_counter()
    model = model.to(device).eval()
    loader = DeviceLoader(
        dataset.test_images,
        dataset.test_labels,
        batch_size=batch_size,
        mean=mean,
        std=std,
        shuffle=False,
        drop_last=False,
        device=device,
        num_classes=len(dataset.classes),
    )
    # Normalised black: the value the training crops padded with (black pixels, then normalised).
    black = -torch.tensor(mean, device=device) / torch.tensor(std, device=device)
    predictions, confidence = [], []
    for images, _ in loader:
        with autocast or contextlib.nullcontext():
            views = tta_views(images, tta, black.view(1, -1, 1, 1).to(images.dtype))
            probs = torch.stack([torch.softmax(model(v).float(), dim=1) for v in views]).mean(0)
        probs, predicted = probs.max(dim=1)
        predictions.append(predicted)
        confidence.append(probs)
    return SplitEvaluation(
        classes=list(dataset.classes),
        labels=dataset.test_labels.long().cpu(),
        predictions=torch.cat(predictions).cpu(),
        confidence=torch.cat(confidence).cpu(),
        device=str(device),
        seconds=time.perf_counter() - started,
    )


def _report_device(config: Any, device: torch.device | str | None) -> torch.device:
    """The run's own device if this machine has it (bf16 there matches the training's metrics),
    else the CPU: a report of a GPU run can still be written on a laptop."""
    from tinyvision.engine import resolve_device

    if device is not None:
        return torch.device(device)
    try:
        return resolve_device(config.train.device)
    except TinyVisionError:
        return torch.device("cpu")


# --- figures ----------------------------------------------------------------------------------


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> bytes:
    """The confusion matrix: colour = share of the true class, text = image count."""
    n = len(classes)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    # Fixed margins sized to the longest class name: constrained layout would measure the 100
    # count labels too, which takes longer than drawing them.
    label = 0.4 + 0.065 * max(map(len, classes))  # inches taken by a rotated/straight name
    side = 0.42 * n  # the matrix itself, square cells
    left, bottom, right, top = label + 0.1, 0.5 * label + 0.35, 1.3, 0.35  # margins, inches
    width, height = left + side + right, bottom + side + top
    fig, ax = plt.subplots(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
    )
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            count = int(confusion[i, j])
            color = "white" if rates[i, j] > 0.55 else ("#222" if count else "#bbb")
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7.5, color=color)
    ax.set_xticks(range(n), classes, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix: {int(confusion.sum()):,} test images", fontsize=10)
    cax = fig.add_axes(
        (1 - 1.05 / width, ax.get_position().y0, 0.15 / width, ax.get_position().height)
    )
    fig.colorbar(image, cax=cax, label="share of the true class")
    return _save_figure(fig, path)


def plot_misclassified(
    images: torch.Tensor,
    true: list[str],
    predicted: list[str],
    confidence: list[float],
    path: Path,
    columns: int = 8,
) -> bytes:
    """A grid of test images, each captioned with its true and predicted label.

    One axes holding a mosaic (rather than an axes per image) keeps this fast for any count.
    """
    count = len(images)
    if count == 0:
        fig, ax = plt.subplots(figsize=(6, 1), constrained_layout=True)
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        return _save_figure(fig, path)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    _, channels, height, width = images.shape
    gap, caption = max(2, width // 10), round(height * 0.42)  # pixels between tiles, under them
    cell_h, cell_w = height + caption + gap, width + gap
    canvas = np.ones((rows * cell_h + gap, columns * cell_w + gap, 3), dtype=np.float32)
    tiles = images.float().div(255).permute(0, 2, 3, 1).numpy()
    if channels == 1:
        tiles = np.repeat(tiles, 3, axis=3)
    fig_w = columns * 1.35
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * canvas.shape[0] / canvas.shape[1]))
    fig.subplots_adjust(0, 0, 1, 1)
    for k in range(count):
        r, c = divmod(k, columns)
        top, left = gap + r * cell_h, gap + c * cell_w
        canvas[top : top + height, left : left + width] = tiles[k]
        centre = left + width / 2
        ax.text(
            centre,
            top + height + caption * 0.28,
            true[k],
            ha="center",
            va="center",
            fontsize=7.5,
            color="#1a7f37",
        )
        ax.text(
            centre,
            top + height + caption * 0.8,
            f"{predicted[k]} {confidence[k]:.0%}",
            ha="center",
            va="center",
            fontsize=7.5,
            color="#cf222e",
        )
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    return _save_figure(fig, path)


# --- the report ---------------------------------------------------------------------------------


def write_report(
    run: RunFolder | str | Path,
    *,
    dataset: Any = None,
    device: torch.device | str | None = None,
    max_misclassified: int = MAX_MISCLASSIFIED,
) -> Path:
    """Write ``report.html``, ``report.md`` and their figures and data into the run folder.

    ``dataset`` (an ``ImageDataset``) saves reading the data again when the caller has it in
    memory (the engine does); otherwise it is loaded as the run's ``[data]`` section says.
    Returns the path of ``report.html``.
    """
    from tinyvision.models.densenet import DenseBlock
    from tinyvision.summary import dense_block_answers, summarize

    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    config = run.load_config()
    model, saved = load_saved_model(run)
    image_shape = (saved["in_chans"], *saved["image_size"])
    shape_summary = summarize(model, image_shape, depth=2)
    shape_summary.title = f"{config.model_name} ({type(model).__name__})"
    answers = None  # brief D's shape questions, for any model built of dense blocks
    if any(isinstance(module, DenseBlock) for module in model.modules()):
        answers = dense_block_answers(model, image_shape).to_text()

    if dataset is None:
        dataset = _load_run_dataset(config)
    evaluation = _evaluate_saved_model(model, saved, dataset, config, device)
    del model  # the figures below need only the predictions

    if not (run.path / "curves.png").exists():
        plot_curves(run)
    figures = {"curves": (run.path / "curves.png").read_bytes()}
    confusion = evaluation.confusion
    figures["confusion"] = plot_confusion(confusion, evaluation.classes, run.path / "confusion.png")
    shown = evaluation.most_confident_mistakes(max_misclassified)
    names = evaluation.classes
    figures["misclassified"] = plot_misclassified(
        dataset.test_images[shown],
        [names[evaluation.labels[i]] for i in shown],
        [names[evaluation.predictions[i]] for i in shown],
        [evaluation.confidence[i].item() for i in shown],
        run.path / "misclassified.png",
    )

    per_class = {
        "dataset": config.data.dataset,
        "test_size": len(evaluation.labels),
        "correct": int(np.trace(confusion)),
        "accuracy": int(np.trace(confusion)) / len(evaluation.labels),
        "classes": evaluation.classes,
        "confusion": confusion.tolist(),  # rows: true class, columns: predicted class
        "per_class": evaluation.per_class(),
        "misclassified_shown": [
            {
                "index": i,
                "true": names[evaluation.labels[i]],
                "predicted": names[evaluation.predictions[i]],
                "confidence": round(evaluation.confidence[i].item(), 4),
            }
            for i in shown
        ],
        "evaluated_on": evaluation.device,
        "evaluation_seconds": round(evaluation.seconds, 3),
    }
    run.write_json("per_class.json", per_class)

    context = _report_context(run, config, saved, shape_summary, answers, per_class)
    atomic_write_text(run.path / "report.md", render_markdown(context))
    atomic_write_text(run.path / "report.html", render_html(context, figures))
    return run.path / "report.html"


def _load_run_dataset(config: Any) -> Any:
    """The data set a run was trained on, found as its ``[data]`` section says."""
    from tinyvision.data import load_dataset

    return load_dataset(
        config.data.dataset,
        config.data.data_dir,
        download=config.data.download,
        verify=config.data.verify,
        progress=False,
    )


def _evaluate_saved_model(
    model: nn.Module,
    saved: dict[str, Any],
    dataset: Any,
    config: Any,
    device: torch.device | str | None,
    tta: str = "none",
) -> SplitEvaluation:
    """``evaluate_test_split`` with the run's own normalisation, precision and device."""
    from tinyvision.engine import autocast_for

    target = _report_device(config, device)
    batch_size = config.data.eval_batch_size
    if target.type == "cpu":  # batches that stay in cache: 2x faster for small convolutions
        batch_size = min(batch_size, 256)
    return evaluate_test_split(
        model,
        dataset,
        mean=tuple(saved["mean"]),
        std=tuple(saved["std"]),
        batch_size=batch_size,
        device=target,
        autocast=autocast_for(config, target),
        tta=tta,
    )


def evaluate_run(
    run: RunFolder | str | Path, *, tta: str = "flip", device: torch.device | str | None = None
) -> dict[str, Any]:
    """Test accuracy of the run's ``model.pt``, plain and with test-time augmentation ``tta``,
    written to ``evaluation.json`` in the run folder (one entry per mode, kept across calls)."""
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    config = run.load_config()
    model, saved = load_saved_model(run)
    dataset = _load_run_dataset(config)
    accuracy = {}
    for mode in ("none", tta):
        evaluation = _evaluate_saved_model(model, saved, dataset, config, device, tta=mode)
        accuracy[mode] = (evaluation.predictions == evaluation.labels).float().mean().item()
    notes = []
    if tta != "none" and not config.augment.flip:
        notes.append("the model was trained without flips (augment.flip = false)")
    if tta == "flip-shift" and not config.augment.crop_padding:
        notes.append("the model was trained without translations (augment.crop_padding = 0)")
    path = run.path / "evaluation.json"
    record = run.read_json("evaluation.json") if path.exists() else {}
    record.update(
        {
            "test_acc": accuracy["none"],
            f"test_acc_tta_{tta}": accuracy[tta],
            "evaluated_on": evaluation.device,
        }
    )
    save_error = None
    try:
        run.write_json("evaluation.json", record)
    except WriteError as err:  # a read-only run folder: the accuracies are still returned
        path, save_error = None, err
    return {
        "test_acc": accuracy["none"],
        "test_acc_tta": accuracy[tta],
        "notes": notes,
        "path": path,
        "save_error": save_error,
    }


def report_after_training(run: RunFolder, dataset: Any) -> None:
    """The engine's call: write the report, but never lose a finished run to a report problem
    (the run folder is complete by now; the report can be written again later)."""
    try:
        path = write_report(run, dataset=dataset)
    except Exception as err:  # the training result is safe: say so and go on
        print(
            f"warning: the report could not be written ({type(err).__name__}: {err}); "
            f"try again with `tinyvision report {run.path}`"
        )
        return
    print(f"report: {path}")


# --- what the templates show ---------------------------------------------------------------------


def _report_context(
    run: RunFolder,
    config: Any,
    saved: dict[str, Any],
    shape_summary: Any,
    answers: str | None,
    per_class: dict[str, Any],
) -> dict[str, Any]:
    """Everything both report formats show, as plain values (formatting happens here once)."""
    from tinyvision.config import load_config, tomllib
    from tinyvision.models import get_variant

    metrics = run.read_metrics()
    summary_path = run.path / "summary.json"
    summary = run.read_json("summary.json") if summary_path.exists() else {}
    env_path = run.path / "environment.json"
    env = run.read_json("environment.json") if env_path.exists() else {}
    last = metrics[-1] if metrics else {}

    variant = get_variant(saved["model_name"])
    family = variant.family.__name__
    test_acc = summary.get("final_test_acc", last.get("test_acc"))
    headline = [
        ("final test accuracy", _pct(test_acc), "final-test-acc"),
        # Not an evaluation: counted while training, on augmented batches (engine.py).
        (
            "final train accuracy (running mean over the last epoch's augmented training batches)",
            _pct(summary.get("final_train_acc", last.get("train_acc"))),
            "",
        ),
    ]
    best_val = summary.get("best_val_acc")
    if best_val is not None:
        headline.append(("best validation accuracy", _pct(best_val), "best-val-acc"))
    headline += [
        ("epochs", str(summary.get("epochs", last.get("epoch", "—"))), ""),
        ("parameters", f"{shape_summary.total_params:,}", "parameters"),
        ("MACs per image", _macs(shape_summary.total_macs), "macs"),
        ("training time", _duration(summary.get("train_seconds", last.get("elapsed_seconds"))), ""),
    ]

    raw = tomllib.loads(run.config_path.read_text())
    # What the run changed is what a reader looks for: values that differ from the defaults
    # (tinyvision's, and the model variant's own) are marked.
    defaults = tomllib.loads(load_config(None, [f'model.name="{saved["model_name"]}"']).to_toml())
    hyperparameters = [
        (
            section,
            [
                (key, _toml_value(value), value != defaults.get(section, {}).get(key, value))
                for key, value in values.items()
            ],
        )
        for section, values in raw.items()
        if isinstance(values, dict)
    ]
    data = env.get("data", {})
    integrity = data.get("integrity", "unknown")
    environment = [
        ("device", env.get("device", "—") + (f" ({env['gpu']})" if env.get("gpu") else "")),
        ("wall time (training)", _duration(summary.get("train_seconds"))),
        ("date", env.get("date", "—")),
        ("command", env.get("command", "—")),
        ("tinyvision", tinyvision.__version__),
        ("python", env.get("python", "—")),
        ("torch", env.get("torch", "—") + (f", CUDA {env['cuda']}" if env.get("cuda") else "")),
        ("numpy", env.get("numpy", "—")),
        ("platform", env.get("platform", "—")),
        (
            "CPU",
            f"{env.get('cpu', '—')} ({env.get('cpu_count', '?')} cores, "
            f"{env.get('torch_threads', '?')} torch threads)",
        ),
    ]
    for later in env.get("resumed", []):  # each session that continued the run
        environment.append(
            (
                "resumed",
                f"{later.get('date', '—')} on {later.get('device', '—')}"
                + (f" ({later['gpu']})" if later.get("gpu") else "")
                + f": {later.get('command', '—')}",
            )
        )
    epoch_columns = [
        c
        for c in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        if any(c in m for m in metrics)
    ]
    epoch_rows = [
        [str(m["epoch"]), f"{m['lr']:.3g}"]
        + [_pct(m.get(c)) if c.endswith("acc") else _num(m.get(c)) for c in epoch_columns]
        + [_duration(m.get("epoch_seconds"))]
        for m in metrics
    ]
    recomputed = per_class["accuracy"]
    agreement = None
    if test_acc is not None and abs(recomputed - test_acc) > 0.0015:
        agreement = (
            f"The saved model scores {_pct(recomputed)} when evaluated again on "
            f"{per_class['evaluated_on']}, the training's metrics say {_pct(test_acc)}: "
            "precision or device differences, or model.pt is not the evaluated model."
        )
    brief = brief_for(family)
    return {
        "title": run.path.name,
        "model_name": saved["model_name"],
        "family": family,
        "variant_description": variant.description,
        "brief": brief,
        "dataset": config.data.dataset,
        "headline": headline,
        "test_acc": test_acc,
        "hyperparameters": hyperparameters,
        "data_source": [
            ("location", data.get("location", "—")),
            ("found by", data.get("found_by", "—")),
            ("integrity", integrity),
        ],
        "verified": "verified" in integrity and "not" not in integrity.lower(),
        "per_class": [
            {
                **row,
                "accuracy_text": _pct(row["accuracy"]),
                "confused_text": (
                    f"{row['most_confused_with']} ({row['most_confused_count']})"
                    if row["most_confused_with"]
                    else "—"
                ),
            }
            for row in per_class["per_class"]
        ],
        "recomputed": (
            f"{_pct(recomputed)} ({per_class['correct']:,} of {per_class['test_size']:,} test "
            f"images), re-evaluated from model.pt on {per_class['evaluated_on']} in "
            f"{per_class['evaluation_seconds']:.2f} s"
        ),
        "agreement": agreement,
        "misclassified_count": per_class["test_size"] - per_class["correct"],
        "misclassified_shown": len(per_class["misclassified_shown"]),
        "layers": shape_summary.to_text(),
        "answers": answers,
        "environment": environment,
        "epoch_header": ["epoch", "lr", *epoch_columns, "time"],
        "epoch_rows": epoch_rows,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _macs(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def _duration(seconds: float | None) -> str:
    return "—" if seconds is None else format_duration(seconds)


def _toml_value(value: Any) -> str:
    """A config value as it is written in TOML (``true``, ``[3, 3]``, ``"adamw"`` unquoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


# --- HTML ---------------------------------------------------------------------------------------

# Shared with the comparison page (compare.py): one look for everything tinyvision writes.
CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --soft:#f6f8fa; --accent:#0969da;
        --good:#1a7f37; --warn:#9a6700; --bad:#cf222e; }
* { box-sizing: border-box; }
body { margin:0; background:#fff; color:var(--fg); line-height:1.5;
       font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,
       sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 28px 60px; }
header { border-bottom:1px solid var(--line); padding-bottom:14px; margin-bottom:8px; }
h1 { font-size:26px; margin:0 0 4px; word-break:break-all; }
h2 { font-size:19px; margin:34px 0 10px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:18px 0 6px; }
p { margin:6px 0; }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12.5px;
         font-weight:600; border:1px solid var(--line); background:var(--soft); }
.badge.brief { background:#ddf4ff; border-color:#54aeff66; color:#0550ae; }
.badge.good { background:#dafbe1; border-color:#4ac26b66; color:var(--good); }
.badge.warn { background:#fff8c5; border-color:#d4a72c66; color:var(--warn); }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:10px;
         margin:16px 0 6px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 12px;
        background:var(--soft); }
.card .label { font-size:12px; color:var(--muted); text-transform:uppercase;
               letter-spacing:.03em; }
.card .value { font-size:21px; font-weight:600; font-variant-numeric:tabular-nums; }
.card.main { background:#ddf4ff; border-color:#54aeff66; }
table { border-collapse:collapse; font-size:13.5px; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:4px 10px; border-bottom:1px solid var(--line);
         vertical-align:top; }
th { background:var(--soft); font-weight:600; }
td.num, th.num { text-align:right; }
tbody tr:hover { background:#f3f8ff; }
.columns { columns:3 300px; column-gap:28px; }
.columns > div { break-inside:avoid; margin-bottom:16px; }
.columns > div > h3 { margin-top:0; }
.columns table { width:100%; }
tr.changed td { background:#fff8c5; }
tr.changed td:first-child { color:var(--fg); font-weight:600; }
.track { display:inline-block; width:64px; height:8px; border-radius:4px; background:#eaeef2;
         vertical-align:middle; margin-left:8px; overflow:hidden; }
.grid2 { display:grid; grid-template-columns:repeat(auto-fit,minmax(340px,1fr)); gap:14px 28px;
         align-items:start; }
.kv td:first-child { color:var(--muted); white-space:nowrap; }
.kv td { word-break:break-word; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
pre { background:var(--soft); border:1px solid var(--line); border-radius:6px; padding:10px;
      overflow-x:auto; }
pre.wrap { white-space:pre-wrap; }
img.figure { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
details { margin:10px 0; } summary { cursor:pointer; color:var(--accent); }
.note { border-left:3px solid var(--warn); background:#fff8c5; padding:6px 10px; margin:8px 0; }
.bar { display:block; height:100%; background:var(--accent); opacity:.6; }
footer { margin-top:40px; font-size:12.5px; color:var(--muted); }
"""

_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · tinyvision report</title>
<style>{{ css | safe }}</style>
</head>
<body><main>
<header>
  <h1>{{ title }}</h1>
  <p>
    <span class="badge">{{ model_name }}</span>
    {% if brief %}<span class="badge brief">brief {{ brief.letter }} · {{ brief.title }}</span>
    {% endif %}<span class="badge">{{ dataset }}</span>
    <span class="badge {{ 'good' if verified else 'warn' }}">data {{ data_source[2][1] }}</span>
  </p>
  <div class="cards">
  {% for label, value, id in headline %}
    <div class="card{{ ' main' if loop.first }}"><div class="label">{{ label }}</div>
      <div class="value"{% if id %} id="{{ id }}"{% endif %}>{{ value }}</div></div>
  {% endfor %}
  </div>
</header>

<section id="model">
<h2>Model</h2>
<p><b>{{ model_name }}</b> ({{ family }}): {{ variant_description }}</p>
{% if brief %}<p class="muted">Brief {{ brief.letter }}, {{ brief.title }}: {{ brief.summary }}</p>
{% endif %}
{% if answers %}<h3>The brief's shape questions</h3><pre class="wrap">{{ answers }}</pre>{% endif %}
<details><summary>Layers, output shapes, parameters and multiply-accumulates</summary>
<pre>{{ layers }}</pre></details>
</section>

<section id="curves">
<h2>Training curves</h2>
<img class="figure" alt="loss and accuracy curves" src="{{ images.curves }}">
<details><summary>Every epoch's numbers</summary>
<table><thead><tr>{% for h in epoch_header %}<th class="num">{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in epoch_rows %}<tr>{% for cell in row %}<td class="num">{{ cell }}</td>
{% endfor %}</tr>{% endfor %}</tbody></table></details>
</section>

<section id="classes">
<h2>Per-class accuracy and confusion matrix</h2>
<p class="muted">Test accuracy {{ recomputed }}.</p>
{% if agreement %}<p class="note">{{ agreement }}</p>{% endif %}
<div class="grid2">
<table id="per-class">
<thead><tr><th>class</th><th class="num">images</th><th class="num">accuracy</th>
<th>most often taken for</th></tr></thead>
<tbody>
{% for row in per_class %}<tr data-class="{{ row['class'] }}">
<td>{{ row['class'] }}</td><td class="num">{{ row['count'] }}</td>
<td class="num"><span class="acc">{{ row.accuracy_text }}</span><span class="track"><span
 class="bar" style="width:{{ (100 * (row.accuracy or 0)) | round(1) }}%"></span></span></td>
<td>{{ row.confused_text }}</td></tr>
{% endfor %}</tbody></table>
<img class="figure" alt="confusion matrix" src="{{ images.confusion }}">
</div>
</section>

<section id="mistakes">
<h2>Misclassified test images</h2>
<p class="muted">{{ misclassified_shown }} of {{ misclassified_count }} mistakes, the most
confident first: true label in green, predicted label and its probability in red.</p>
<img class="figure" alt="misclassified test images" src="{{ images.misclassified }}">
</section>

<section id="hyperparameters">
<h2>Hyperparameters</h2>
<p class="muted">The resolved configuration (config.toml): every setting, defaults included.
<span class="badge warn">highlighted</span> = changed from the defaults of {{ model_name }}.</p>
<div class="columns">
{% for section, rows in hyperparameters %}<div><h3>[{{ section }}]</h3>
<table class="kv">{% for key, value, changed in rows %}<tr{% if changed %} class="changed"{%
endif %}><td>{{ key }}</td><td><code>{{ value }}</code></td></tr>{% endfor %}</table></div>
{% endfor %}</div>
</section>

<section id="data">
<h2>Data</h2>
<table class="kv">{% for key, value in data_source %}<tr><td>{{ key }}</td><td>{{ value }}</td>
</tr>{% endfor %}</table>
</section>

<section id="environment">
<h2>Time, device and versions</h2>
<table class="kv">{% for key, value in environment %}<tr><td>{{ key }}</td><td>{{ value }}</td>
</tr>{% endfor %}</table>
</section>

<footer>Written by tinyvision {{ version }} on {{ generated }}. Beside this file:
config.toml, metrics.csv, per_class.json, model.pt, report.md.</footer>
</main></body>
</html>
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(context: dict[str, Any], figures: dict[str, bytes]) -> str:
    """The self-contained HTML page; every value from the run is escaped by the template."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    images = {name: _data_uri(png) for name, png in figures.items()}
    return env.from_string(_HTML).render(
        **context, images=images, css=CSS, version=tinyvision.__version__
    )


# --- Markdown -----------------------------------------------------------------------------------


def _md(text: Any) -> str:
    """A table cell: HTML-escaped (Markdown renders raw HTML) and with pipes escaped."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> str:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(map(_md, header)) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(c: dict[str, Any]) -> str:
    """``report.md``: the same sections as the HTML page, figures as files beside it."""
    brief = c["brief"]
    out = [f"# {_md(c['title'])}", ""]
    tags = [f"model `{c['model_name']}`"]
    if brief:
        tags.append(f"brief {brief.letter}: {brief.title}")
    tags += [f"data set {c['dataset']}", f"data {_md(c['data_source'][2][1])}"]
    out += [" · ".join(tags), ""]
    out += [_md_table(["", ""], [[label, value] for label, value, _ in c["headline"]], {1}), ""]

    description = _md(c["variant_description"])
    out += ["## Model", "", f"**{c['model_name']}** ({c['family']}): {description}"]
    if brief:
        out += ["", f"Brief {brief.letter}, {brief.title}: {brief.summary}"]
    if c["answers"]:
        out += ["", "### The brief's shape questions", "", "```", c["answers"], "```"]
    out += ["", "<details><summary>Layers, parameters and MACs</summary>", "", "```"]
    out += [c["layers"], "```", "", "</details>", ""]

    out += ["## Training curves", "", "![loss and accuracy curves](curves.png)", ""]
    out += [_md_table(c["epoch_header"], c["epoch_rows"], set(range(len(c["epoch_header"])))), ""]

    out += ["## Per-class accuracy and confusion matrix", ""]
    out += [f"Test accuracy {c['recomputed']}.", ""]
    if c["agreement"]:
        out += [f"> {c['agreement']}", ""]
    rows = [
        [row["class"], row["count"], row["accuracy_text"], row["confused_text"]]
        for row in c["per_class"]
    ]
    out += [_md_table(["class", "images", "accuracy", "most often taken for"], rows, {1, 2}), ""]
    out += ["![confusion matrix](confusion.png)", ""]

    out += ["## Misclassified test images", ""]
    out += [
        f"{c['misclassified_shown']} of {c['misclassified_count']} mistakes, the most confident "
        "first: true label in green, predicted label and its probability in red.",
        "",
        "![misclassified test images](misclassified.png)",
        "",
    ]

    out += ["## Hyperparameters", ""]
    out += [
        "The resolved configuration (config.toml), defaults included; **bold** = changed from "
        f"the defaults of {c['model_name']}."
    ]
    for section, rows in c["hyperparameters"]:
        cells = [[f"**{k}**", f"**{v}**"] if changed else [k, v] for k, v, changed in rows]
        out += ["", f"### [{section}]", "", _md_table(["key", "value"], cells)]
    out += ["", "## Data", "", _md_table(["", ""], c["data_source"]), ""]
    out += ["## Time, device and versions", "", _md_table(["", ""], c["environment"]), ""]
    out += [f"_Written by tinyvision {tinyvision.__version__} on {c['generated']}._", ""]
    return "\n".join(out)
