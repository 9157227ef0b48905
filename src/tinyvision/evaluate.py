"""A run's saved model, evaluated again: ``model.pt`` rebuilt alone, its test predictions, TTA.

    load_saved_model(run)      the final model, rebuilt from model.pt's record of its architecture
    evaluate_test_split(...)   predictions, confidences and the confusion matrix of the test split
    evaluate_run(run, tta=)    test accuracy plain and with test-time augmentation
                               (``tinyvision evaluate``), kept in evaluation.json

Everything here reads the run folder and nothing the training held in memory, so it works on a
run folder copied to another machine. The report (``report.py``), ``tinyvision predict`` and
``tinyvision export`` load the model through :func:`load_saved_model`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyvision.config import Config
from tinyvision.data import DeviceLoader, ImageDataset, load_dataset_for, tta_views
from tinyvision.device import autocast_for, resolve_device
from tinyvision.errors import TinyVisionError, WriteError
from tinyvision.models import create_model
from tinyvision.runs import RunFolder


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
    predictions, confidence = [], []
    for images, _ in loader:
        with autocast or contextlib.nullcontext():
            # loader.shift is normalised black: what the training crops padded with
            views = tta_views(images, tta, loader.shift.to(images.dtype))
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


def evaluation_device(config: Config, device: torch.device | str | None) -> torch.device:
    """The run's own device if this machine has it (bf16 there matches the training's metrics),
    else the CPU: a report of a GPU run can still be written on a laptop."""
    if device is not None:
        return torch.device(device)
    try:
        return resolve_device(config.train.device)
    except TinyVisionError:
        return torch.device("cpu")


def evaluate_saved_model(
    model: nn.Module,
    saved: dict[str, Any],
    dataset: ImageDataset,
    config: Config,
    device: torch.device | str | None,
    tta: str = "none",
) -> SplitEvaluation:
    """``evaluate_test_split`` with the run's own normalisation, precision and device."""
    target = evaluation_device(config, device)
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
    dataset = load_dataset_for(config.data)
    accuracy = {}
    for mode in ("none", tta):
        evaluation = evaluate_saved_model(model, saved, dataset, config, device, tta=mode)
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
