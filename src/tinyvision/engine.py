"""The training engine, one straight path: config -> data -> model -> optimiser -> loop -> report.

Speed comes from keeping the whole data set on the training device (augmentation runs batched
there), bf16 autocast on CUDA, and not synchronising with the host inside the step: the loss and
accuracy are summed on the device and read once per epoch (and every ``LOG_EVERY`` steps for the
progress bar and the loss curve).

Exact resume: a checkpoint holds the model, optimiser, scheduler, EMA, every random-number
state, the data loader's generator state at the start of the epoch, the step reached within the
epoch and the metrics so far. Resuming rebuilds the epoch's batch order from that generator
state and skips the batches already done, so an interrupted run ends with the same weights as an
uninterrupted one (bit for bit with ``train.deterministic = true`` on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tinyvision.config import Config
from tinyvision.data import Augment, DeviceLoader, ImageDataset, load_dataset, split_validation
from tinyvision.errors import TinyVisionError, TrainingError, TrainingInterrupted
from tinyvision.models import create_model
from tinyvision.optim import build_optimizer, build_scheduler
from tinyvision.runs import RunFolder, environment

LOG_EVERY = 20  # steps between points of the loss curve (and progress-bar refreshes)
CHECKPOINT_VERSION = 1


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


# --- set-up -------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; anything else must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TinyVisionError(
            f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinyVisionError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TinyVisionError(f"device {name!r} asked for, but Apple MPS is not available here")
    return device


def autocast_for(config: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (``precision = auto`` or ``bf16``); full fp32 elsewhere by default."""
    use_bf16 = config.train.precision == "bf16" or (
        config.train.precision == "auto" and device.type == "cuda"
    )
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def configure_torch(config: Config) -> None:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def build_loaders(
    config: Config, dataset: ImageDataset, device: torch.device
) -> tuple[DeviceLoader, dict[str, DeviceLoader]]:
    """The training loader, and the evaluation loaders by split name (``val`` and ``test``)."""
    train_images, train_labels = dataset.train_images, dataset.train_labels
    eval_splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if config.data.val_size:
        train_idx, val_idx = split_validation(train_labels, config.data.val_size, config.train.seed)
        eval_splits["val"] = (train_images[val_idx], train_labels[val_idx])
        train_images, train_labels = train_images[train_idx], train_labels[train_idx]
    eval_splits["test"] = (dataset.test_images, dataset.test_labels)

    aug = config.augment
    common = {
        "mean": dataset.mean,
        "std": dataset.std,
        "device": device,
        "num_classes": dataset.num_classes,
    }
    train_loader = DeviceLoader(
        train_images,
        train_labels,
        batch_size=config.data.batch_size,
        shuffle=True,
        drop_last=True,
        augment=Augment(
            crop_padding=aug.crop_padding,
            flip=aug.flip,
            erasing=aug.erasing,
            mixup_alpha=aug.mixup_alpha,
            cutmix_alpha=aug.cutmix_alpha,
        ),
        generator=torch.Generator(device=device).manual_seed(config.train.seed),
        **common,
    )
    eval_loaders = {
        split: DeviceLoader(
            images,
            labels,
            batch_size=config.data.eval_batch_size,
            shuffle=False,
            drop_last=False,
            **common,
        )
        for split, (images, labels) in eval_splits.items()
    }
    if len(train_loader) == 0:
        raise TinyVisionError(
            f"data.batch_size {config.data.batch_size} is larger than the {len(train_labels)} "
            "training images: lower it"
        )
    return train_loader, eval_loaders


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    if decay == 0.0:
        return None
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


# --- evaluation ---------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DeviceLoader, autocast: contextlib.AbstractContextManager
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    count = 0
    for images, labels in loader:
        with autocast:
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += labels.shape[0]
    model.train(was_training)
    return loss_sum.item() / count, correct.item() / count


# --- training -----------------------------------------------------------------------------


def train(config: Config | None = None, *, resume: str | Path | None = None) -> RunResult:
    """Train ``config``, or resume the run in folder ``resume`` with its saved config."""
    if resume is None and config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    if resume is not None:
        run = RunFolder.open(resume)
        config = run.load_config()
        if not run.last_checkpoint.exists():
            raise TinyVisionError(f"{run.path} has no checkpoint to resume from")
    configure_torch(config)
    device = resolve_device(config.train.device)
    progress = {"auto": None, "on": False, "off": True}[config.train.progress]  # tqdm's disable

    # Data and model come first: bad input fails here, before a run folder exists.
    dataset = load_dataset(
        config.data.dataset,
        config.data.data_dir,
        download=config.data.download,
        verify=config.data.verify,
        progress=progress is not True,
    )
    torch.manual_seed(config.train.seed)
    model = create_model(
        config.model_name,
        in_chans=dataset.in_chans,
        num_classes=dataset.num_classes,
        image_size=dataset.image_size,
        **config.model_params,
    ).to(device)
    train_loader, eval_loaders = build_loaders(config, dataset, device)
    steps_per_epoch = len(train_loader)
    optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch, config.train.epochs)
    ema = make_ema(model, config.train.ema_decay)
    autocast = autocast_for(config, device)
    num_params = sum(p.numel() for p in model.parameters())

    # Where the run starts: fresh, or from the last checkpoint of an existing run folder.
    state: dict[str, Any] = {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "elapsed": 0.0,
        "metrics": [],
        "steps": [],
        "best": None,
        "partial": None,
        "loader_generator": train_loader.generator.get_state(),
    }
    if resume is None:
        run = RunFolder.create(config)
    else:
        checkpoint = torch.load(run.last_checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        state = checkpoint["state"]
        train_loader.generator.set_state(state["loader_generator"].cpu())
        torch.set_rng_state(checkpoint["torch_rng"].cpu())
        if device.type == "cuda" and checkpoint.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)
        print(f"resuming {run.path} at epoch {state['epoch'] + 1}, step {state['global_step']}")
    run.write_json(
        "environment.json", {**environment(device, dataset.source), "parameters": num_params}
    )

    def checkpoint_state() -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "state": state,
            "config": config.model_dump(mode="json"),
        }

    print(
        f"training {config.model_name} ({num_params:,} parameters) on {config.data.dataset} "
        f"[{dataset.source.get('integrity', '')}] for {config.train.epochs} epochs on {device}; "
        f"run folder: {run.path}"
    )
    model.train()
    started = time.perf_counter() - state["elapsed"]
    stop = StopRequest()
    try:
        for epoch in range(state["epoch"], config.train.epochs):
            epoch_started = time.perf_counter()
            skip = state["step_in_epoch"]
            totals = EpochTotals.resume(state["partial"], device)
            bar = tqdm(
                total=steps_per_epoch,
                initial=skip,
                disable=progress,
                leave=False,
                desc=f"epoch {epoch + 1}/{config.train.epochs}",
                unit="step",
            )
            for step_in_epoch, (images, targets) in enumerate(train_loader):
                if step_in_epoch < skip:
                    continue  # replayed only to bring the loader's generator to where it was
                with autocast:
                    logits = model(images)
                loss = F.cross_entropy(
                    logits.float(), targets, label_smoothing=config.train.label_smoothing
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.optim.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)

                # Accumulated on the device: no host synchronisation inside the step.
                detached = loss.detach()
                totals.add(detached, logits, targets)
                state["global_step"] += 1
                state["step_in_epoch"] = step_in_epoch + 1
                bar.update()
                if device.type != "cuda" or state["global_step"] % LOG_EVERY == 0:
                    check_finite(detached, state, epoch, config)
                if state["global_step"] % LOG_EVERY == 0:
                    mean_loss = totals.take_window() / LOG_EVERY
                    epoch_float = epoch + (step_in_epoch + 1) / steps_per_epoch
                    state["steps"].append((state["global_step"], epoch_float, mean_loss))
                    bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                every = config.train.checkpoint_every_steps
                if every and state["global_step"] % every == 0:
                    state["partial"] = totals.state()
                    state["elapsed"] = time.perf_counter() - started
                    run.save_checkpoint(checkpoint_state(), run.last_checkpoint)
                if stop.requested:  # Ctrl-C: stop between two steps, where the state is whole
                    bar.close()
                    state["partial"] = totals.state()
                    state["elapsed"] = time.perf_counter() - started
                    run.save_checkpoint(checkpoint_state(), run.last_checkpoint)
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1}, step {state['global_step']}; the "
                        f"training state is saved.\nResume with:  tinyvision train --resume "
                        f"{run.path}"
                    )
            bar.close()

            # End of epoch: metrics, evaluation, checkpoints, curves.
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": state["global_step"],
                "lr": scheduler.get_last_lr()[0],
                "train_loss": totals.loss_sum.item() / totals.seen,
                "train_acc": totals.correct.item() / totals.seen,
            }
            check_finite(torch.tensor(row["train_loss"]), state, epoch, config)
            last_epoch = epoch + 1 == config.train.epochs
            if (epoch + 1) % config.train.eval_every == 0 or last_epoch:
                eval_model = ema.module if ema is not None else model
                for split, loader in eval_loaders.items():
                    row[f"{split}_loss"], row[f"{split}_acc"] = evaluate(
                        eval_model, loader, autocast
                    )
            row["epoch_seconds"] = time.perf_counter() - epoch_started
            row["elapsed_seconds"] = time.perf_counter() - started
            print(format_row(row, config.train.epochs), flush=True)

            state["metrics"].append(row)
            state.update(
                epoch=epoch + 1,
                step_in_epoch=0,
                partial=None,
                elapsed=row["elapsed_seconds"],
                loader_generator=train_loader.generator.get_state(),
            )
            score = selection_score(row)
            is_best = state["best"] is None or score > state["best"]
            if is_best:
                state["best"] = score
            checkpoint = checkpoint_state()
            run.save_checkpoint(checkpoint, run.last_checkpoint)
            if is_best:
                run.save_checkpoint(checkpoint, run.best_checkpoint)
            run.write_metrics(state["metrics"])
            run.write_steps(state["steps"])
            from tinyvision.report import plot_curves

            plot_curves(run)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(
            f"out of GPU memory with data.batch_size = {config.data.batch_size}: try a smaller "
            "batch (e.g. data.batch_size="
            f"{max(1, config.data.batch_size // 2)}) or a smaller "
            "model; the last checkpoint is kept in "
            f"{run.path}"
        ) from None
    finally:
        stop.restore()

    final_model = ema.module if ema is not None else model
    summary = finish_run(run, config, final_model, dataset, num_params)
    return RunResult(run.path, summary)


class EpochTotals:
    """Sums over one epoch's steps, kept on the device and read once per epoch."""

    def __init__(
        self, loss_sum: float, correct: int, seen: int, window: float, device: torch.device
    ) -> None:
        self.loss_sum = torch.tensor(loss_sum, device=device)
        self.correct = torch.tensor(correct, device=device)
        self.seen = seen
        self.window = torch.tensor(window, device=device)  # loss summed since the last log

    @classmethod
    def resume(cls, saved: dict[str, Any] | None, device: torch.device) -> EpochTotals:
        return cls(
            **(saved or {"loss_sum": 0.0, "correct": 0, "seen": 0, "window": 0.0}), device=device
        )

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        labels = targets if targets.ndim == 1 else targets.argmax(1)  # mixup: soft targets
        self.loss_sum += loss * labels.shape[0]
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += labels.shape[0]
        self.window += loss

    def take_window(self) -> float:
        value = self.window.item()
        self.window.zero_()
        return value

    def state(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum.item(),
            "correct": self.correct.item(),
            "seen": self.seen,
            "window": self.window.item(),
        }


class StopRequest:
    """Turns the first Ctrl-C into a request that the loop honours between two steps (so the
    saved state is whole); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstopping after this step and saving (Ctrl-C again to abort at once)...", flush=True
        )

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def check_finite(loss: torch.Tensor, state: dict[str, Any], epoch: int, config: Config) -> None:
    if math.isfinite(loss.item()):
        return
    raise TrainingError(
        f"the training loss became {loss.item()} at step {state['global_step']} "
        f"(epoch {epoch + 1}). Likely cause: the learning rate (optim.lr = {config.optim.lr:g}) "
        "is too high for this model; lower it, add warm-up (schedule.warmup_epochs) or "
        "gradient clipping (optim.grad_clip). The last good checkpoint is kept."
    )


def selection_score(row: dict[str, Any]) -> float:
    """What "best" means: validation accuracy if there is a validation split, else the lowest
    training loss. Never the test accuracy: choosing a checkpoint on it would leak the test set
    into the result."""
    if "val_acc" in row:
        return row["val_acc"]
    return -row["train_loss"]


def format_row(row: dict[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {row['epoch']:>3}/{epochs}",
        f"train loss {row['train_loss']:.4f}",
        f"acc {row['train_acc']:.2%}",
    ]
    for split in ("val", "test"):
        if f"{split}_acc" in row:
            parts.append(f"{split} loss {row[f'{split}_loss']:.4f} acc {row[f'{split}_acc']:.2%}")
    parts.append(f"{row['epoch_seconds']:.1f}s")
    return " | ".join(parts)


def finish_run(
    run: RunFolder, config: Config, model: nn.Module, dataset: ImageDataset, num_params: int
) -> dict[str, Any]:
    """The final model file, the summary and the report."""
    run.save_checkpoint(
        {
            "model": model.state_dict(),
            "model_name": config.model_name,
            "model_params": config.model_params,
            "in_chans": dataset.in_chans,
            "image_size": dataset.image_size,
            "num_classes": dataset.num_classes,
            "classes": dataset.classes,
            "mean": dataset.mean,
            "std": dataset.std,
        },
        run.model_path,
    )
    metrics = run.read_metrics()
    last = metrics[-1]
    summary = {
        "model": config.model_name,
        "dataset": config.data.dataset,
        "epochs": last["epoch"],
        "parameters": num_params,
        "final_test_acc": last["test_acc"],
        "final_test_loss": last["test_loss"],
        "final_train_acc": last["train_acc"],
        "final_val_acc": last.get("val_acc"),
        "best_val_acc": max((m["val_acc"] for m in metrics if "val_acc" in m), default=None),
        "train_seconds": last["elapsed_seconds"],
        "seed": config.train.seed,
        "run_dir": str(run.path),
    }
    run.write_json("summary.json", summary)
    print(
        f"final test accuracy: {summary['final_test_acc']:.2%} "
        f"(train {summary['final_train_acc']:.2%}) after {summary['epochs']} epochs, "
        f"{summary['train_seconds']:.0f}s\nrun folder: {run.path}"
    )
    return summary
