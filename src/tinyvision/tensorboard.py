"""TensorBoard event files in the run folder (``train.tensorboard = true``, ``--tensorboard``).

    RUN/tensorboard/events.out.tfevents.*

    metrics/<key>     every number of each metrics.jsonl row (train/val/test loss and accuracy,
                      lr, epoch, seconds), at the row's global step
    step/train_loss   the training loss of steps.csv: each point the mean over the steps since
                      the last (every LOG_EVERY steps, and at each epoch's end)
    step/lr           the learning rate at those steps
    confusion_matrix  the final model's confusion matrix on the test split, as an image

Every scalar is logged against the global step, so the epoch rows and the step loss share one
x axis, and a resumed run purges what the interrupted one logged after its checkpoint (the same
steps are trained, and logged, again). TensorBoard is an optional extra: ``require()`` turns its
absence into one line saying what to install, before any data is read.

    tensorboard --logdir runs/
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyvision import distributed
from tinyvision.distributed import World
from tinyvision.errors import TinyVisionError
from tinyvision.plots import plot_confusion

SUBFOLDER = "tensorboard"
INSTALL_HINT = "pip install 'tinyvision[tensorboard]' (or pip install tensorboard)"


def require() -> None:
    """Fail at once, in one line, when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise TinyVisionError(
            f"train.tensorboard needs the tensorboard package: {INSTALL_HINT}"
        ) from None


class TensorBoardLog:
    """The run's event writer; only the process that writes the run folder holds one."""

    def __init__(self, run_path: Path, *, resumed_at: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A run resumed from the checkpoint of step S trains step S + 1 next: what the
        # interrupted process logged after S is hidden (TensorBoard's purge_step), so each step
        # appears once. S is 0 for a run started again in its folder before its first
        # checkpoint; None for a new run, with nothing to hide.
        purge_step = resumed_at + 1 if resumed_at is not None else None
        self.writer = SummaryWriter(str(run_path / SUBFOLDER), purge_step=purge_step)

    def log_step(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Every number of one metrics.jsonl row, at its global step."""
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"metrics/{key}", value, row["step"])
        self.writer.flush()  # one flush per epoch: the files follow the run as it goes

    def log_confusion(self, confusion: np.ndarray, classes: list[str], step: int) -> None:
        self.writer.add_image(
            "confusion_matrix", confusion_image(confusion, classes), step, dataformats="HWC"
        )

    def close(self) -> None:
        self.writer.close()


@torch.inference_mode()
def confusion_matrix(
    model: nn.Module,
    loader: Any,
    num_classes: int,
    autocast: contextlib.AbstractContextManager,
    world: World,
) -> np.ndarray:
    """[true class, predicted class] counts over the loader's split, summed over processes
    (under torchrun each one holds a shard); collective, so every process calls it."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_classes * num_classes, device=loader.device, dtype=torch.float64)
    for images, labels in loader:
        with autocast:
            predicted = model(images).argmax(1)
        counts += torch.bincount(labels * num_classes + predicted, minlength=counts.numel())
    model.train(was_training)
    total = distributed.all_reduce_sum(counts, world)
    return total.view(num_classes, num_classes).round().long().cpu().numpy()


def confusion_image(confusion: np.ndarray, classes: list[str]) -> np.ndarray:
    """The report's confusion-matrix figure (``plots.plot_confusion``) as an RGB image
    (H x W x 3, uint8), for TensorBoard."""
    from PIL import Image

    png = plot_confusion(confusion, classes)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
