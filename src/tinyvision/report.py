"""What a run hands back to a person: the curves the briefs ask for."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in CI and over SSH
import matplotlib.pyplot as plt  # noqa: E402

from tinyvision.runs import RunFolder, atomic_write  # noqa: E402


def plot_curves(run: RunFolder) -> None:
    """``curves.png``: the loss over training, and training and test accuracy per epoch."""
    metrics = run.read_metrics()
    steps = run.read_steps()
    if not metrics:
        return
    epochs = [m["epoch"] for m in metrics]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)

    if steps:
        loss_ax.plot([s[1] for s in steps], [s[2] for s in steps], color="tab:blue", alpha=0.35,
                     linewidth=0.8, label="train (every few steps)")
    loss_ax.plot(epochs, [m["train_loss"] for m in metrics], "o-", color="tab:blue",
                 label="train (epoch mean)")
    for split, color in (("val", "tab:green"), ("test", "tab:orange")):
        points = [(m["epoch"], m[f"{split}_loss"]) for m in metrics if f"{split}_loss" in m]
        if points:
            loss_ax.plot(*zip(*points, strict=True), "o-", color=color, label=split)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()

    acc_ax.plot(epochs, [100 * m["train_acc"] for m in metrics], "o-", color="tab:blue",
                label="train")
    for split, color in (("val", "tab:green"), ("test", "tab:orange")):
        points = [(m["epoch"], 100 * m[f"{split}_acc"]) for m in metrics if f"{split}_acc" in m]
        if points:
            acc_ax.plot(*zip(*points, strict=True), "o-", color=color, label=split)
    last = metrics[-1]
    if "test_acc" in last:
        acc_ax.annotate(f"{100 * last['test_acc']:.2f}%", (last["epoch"], 100 * last["test_acc"]),
                        textcoords="offset points", xytext=(-10, -15), color="tab:orange")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend()

    config = run.load_config()
    fig.suptitle(f"{config.model_name} on {config.data.dataset} ({run.path.name})")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(run.path / "curves.png", lambda file: file.write(buffer.getvalue()))
