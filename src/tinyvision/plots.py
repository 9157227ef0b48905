"""The figures of a run, drawn from the files in its run folder (matplotlib, PNG, no display).

    plot_curves(run)           curves.png: the loss over training, training and test accuracy
                               per epoch (the engine redraws it after every epoch)
    plot_confusion(...)        confusion.png: the test split's confusion matrix
    plot_misclassified(...)    misclassified.png: a grid of test images with both labels

A low-level module: it reads the run folder and draws, and imports neither the engine nor the
report, so the engine may draw the curves while it trains and the report may draw the rest.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in CI and over SSH
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from tinyvision.runs import RunFolder, atomic_write

FIGURE_DPI = 110


def plot_curves(run: RunFolder) -> None:
    """``curves.png``: the loss over training, and training and test accuracy per epoch."""
    metrics = run.read_metrics()
    if not metrics:
        return
    config = run.load_config()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    _plot_losses(loss_ax, metrics, run.read_steps(), config.train.label_smoothing)
    _plot_accuracies(acc_ax, metrics)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.suptitle(f"{config.model_name} on {config.data.dataset} ({run.path.name})")
    _save_figure(fig, run.path / "curves.png")


def _plot_losses(
    ax: plt.Axes,
    metrics: list[dict[str, Any]],
    steps: list[tuple[int, float, float]],
    smoothing: float,
) -> None:
    # Like with like: the test and validation losses are plain cross-entropy, so the training
    # line beside them is too (train_ce); the objective, which includes label smoothing (and
    # mixup's soft targets), is drawn as its own line and says so.
    epochs = [m["epoch"] for m in metrics]
    objective = "train objective" + (f" (label smoothing {smoothing:g})" if smoothing else "")
    if steps:
        ax.plot(
            [s[1] for s in steps],
            [s[2] for s in steps],
            color="tab:blue",
            alpha=0.35,
            linewidth=0.8,
            label=f"{objective}, every few steps",
        )
    has_ce = all("train_ce" in m for m in metrics)  # runs from before it have the objective only
    if has_ce:
        ce = [m["train_ce"] for m in metrics]
        ax.plot(epochs, ce, "o-", color="tab:blue", label="train cross-entropy (epoch mean)")
    if smoothing or not has_ce:
        ax.plot(
            epochs,
            [m["train_loss"] for m in metrics],
            "x--" if has_ce else "o-",
            color="tab:blue",
            alpha=0.6 if has_ce else 1.0,
            label=f"{objective} (epoch mean)",
        )
    for split, color in (("val", "tab:green"), ("test", "tab:orange")):
        points = [(m["epoch"], m[f"{split}_loss"]) for m in metrics if f"{split}_loss" in m]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", color=color, label=f"{split} cross-entropy")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss")


def _plot_accuracies(ax: plt.Axes, metrics: list[dict[str, Any]]) -> None:
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [100 * m["train_acc"] for m in metrics], "o-", color="tab:blue", label="train")
    for split, color in (("val", "tab:green"), ("test", "tab:orange")):
        points = [(m["epoch"], 100 * m[f"{split}_acc"]) for m in metrics if f"{split}_acc" in m]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", color=color, label=split)
    last = metrics[-1]
    if "test_acc" in last:
        ax.annotate(
            f"{100 * last['test_acc']:.2f}%",
            (last["epoch"], 100 * last["test_acc"]),
            textcoords="offset points",
            xytext=(-4, -15),
            ha="right",  # inside the axes: the last epoch sits at the right edge
            color="tab:orange",
        )
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")


def _save_figure(fig: plt.Figure, path: Path | None) -> bytes:
    """Write ``fig`` to ``path`` as PNG (atomically, unless ``path`` is None) and return the
    bytes, for embedding."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    plt.close(fig)
    data = buffer.getvalue()
    if path is not None:
        atomic_write(path, lambda file: file.write(data))
    return data


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path | None = None) -> bytes:
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
