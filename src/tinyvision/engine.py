"""The training engine, one straight path: config -> data -> model -> optimiser -> loop -> report.

Speed comes from keeping the whole data set on the training device (augmentation runs batched
there), bf16 autocast on CUDA, and not synchronising with the host inside the step: the loss and
accuracy are summed on the device and read once per epoch (and every ``LOG_EVERY`` steps for the
progress bar and the loss curve).

Exact resume: a checkpoint holds the model, optimiser, scheduler, EMA, every random-number
state, the data loader's generator state at the start of the epoch, the step reached within the
epoch and the metrics so far. Resuming rebuilds the epoch's batch order from that generator
state and starts at the step reached, so an interrupted run ends with the same weights as an
uninterrupted one (bit for bit with ``train.deterministic = true`` on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from tinyvision import distributed
from tinyvision import tensorboard as tb_log
from tinyvision.config import Config
from tinyvision.data import Augment, DeviceLoader, ImageDataset, load_dataset, split_validation
from tinyvision.distributed import World
from tinyvision.errors import TinyVisionError, TrainingError, TrainingInterrupted
from tinyvision.models import create_model
from tinyvision.optim import build_optimizer, build_scheduler
from tinyvision.runs import RunFolder, environment

SINGLE_PROCESS = World()
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
    config: Config, dataset: ImageDataset, device: torch.device, world: World, channels_last: bool
) -> tuple[DeviceLoader, dict[str, DeviceLoader]]:
    """The training loader, and the evaluation loaders by split name (``val`` and ``test``).

    Under torchrun each process gets its shard of every split (see ``distributed.py``).
    """
    train_images, train_labels = dataset.train_images, dataset.train_labels
    eval_splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if config.data.val_size:
        train_idx, val_idx = split_validation(train_labels, config.data.val_size, config.train.seed)
        eval_splits["val"] = (train_images[val_idx], train_labels[val_idx])
        train_images, train_labels = train_images[train_idx], train_labels[train_idx]
    eval_splits["test"] = (dataset.test_images, dataset.test_labels)

    batch_size = distributed.check_batch(config.data.batch_size, world)
    if batch_size > len(train_labels) // world.size:
        raise TinyVisionError(
            f"data.batch_size {config.data.batch_size} is larger than the {len(train_labels)} "
            "training images: lower it"
        )
    common = {
        "mean": dataset.mean,
        "std": dataset.std,
        "device": device,
        "num_classes": dataset.num_classes,
        "channels_last": channels_last,
    }
    aug = config.augment
    train_loader = DeviceLoader(
        *distributed.shard(train_images, train_labels, world, equal=True),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        augment=Augment(
            crop_padding=aug.crop_padding,
            flip=aug.flip,
            erasing=aug.erasing,
            mixup_alpha=aug.mixup_alpha,
            cutmix_alpha=aug.cutmix_alpha,
        ),
        # Each process shuffles and augments its shard with its own stream.
        generator=torch.Generator(device=device).manual_seed(config.train.seed + world.rank),
        **common,
    )
    eval_loaders = {
        split: DeviceLoader(
            *distributed.shard(images, labels, world, equal=False),
            batch_size=config.data.eval_batch_size,
            shuffle=False,
            drop_last=False,
            **common,
        )
        for split, (images, labels) in eval_splits.items()
    }
    return train_loader, eval_loaders


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights whose decay warms up with the step count.

    A fixed decay of 0.999 would still be 37% initial weights after 1,000 steps, so a short run
    scores near chance. As in TensorFlow's ExponentialMovingAverage and timm's ModelEmaV3 the
    decay used at update n is min(decay, (1 + n) / (10 + n)): the average follows the weights
    closely at first and settles to ``decay`` after a few thousand steps.
    """
    if decay == 0.0:
        return None
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=warmup_ema_update(decay), use_buffers=True
    )


def warmup_ema_update(decay: float) -> Callable[..., None]:
    """AveragedModel's ``multi_avg_fn``: called with one device-and-dtype group at a time."""

    @torch.no_grad()
    def update(
        averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor
    ) -> None:
        if not averaged[0].is_floating_point():  # counters such as BatchNorm's: keep the newest
            torch._foreach_copy_(averaged, current)
            return
        # num_averaged stays on the device: the warm-up decay is a tensor, no host sync.
        n = num_averaged.to(torch.float32)
        weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)  # lerp weight = 1 - decay
        for avg, cur in zip(averaged, current, strict=True):
            avg.lerp_(cur, weight.to(avg.dtype))

    return update


# --- evaluation ---------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    autocast: contextlib.AbstractContextManager,
    world: World = SINGLE_PROCESS,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode (summed over all
    processes under torchrun)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=loader.device, dtype=torch.float64)  # loss, correct, count
    for images, labels in loader:
        with autocast:
            logits = model(images)
        sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
        sums[1] += (logits.argmax(1) == labels).sum()
        sums[2] += labels.shape[0]
    model.train(was_training)
    loss_sum, correct, count = distributed.all_reduce_sum(sums, world).tolist()
    return loss_sum / count, correct / count


# --- training -----------------------------------------------------------------------------


def train(
    config: Config | None = None,
    *,
    resume: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train ``config``, or resume the run in folder ``resume`` with its saved config.

    ``on_epoch(row)`` is called with each epoch's metrics once they are saved; an exception it
    raises (a sweep pruning a trial, say) stops training with the run folder consistent.
    """
    if resume is None and config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    run: RunFolder | None = None
    if resume is not None:
        run = RunFolder.open(resume)
        config = run.load_config()
        if not run.last_checkpoint.exists():
            raise TinyVisionError(f"{run.path} has no checkpoint to resume from")
        run.remove_temporaries()  # left by a process killed mid-write; before any process writes
    world, device_name = distributed.init(config.train.device)  # torchrun: one process per device
    try:
        return _train(config, run, world, resolve_device(device_name), on_epoch)
    finally:
        distributed.shutdown(world)


def _train(
    config: Config,
    run: RunFolder | None,
    world: World,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> RunResult:
    configure_torch(config)
    main = world.is_main  # only process 0 prints and writes files
    show_progress = main and config.train.progress != "off"
    bar_disable = None if config.train.progress == "auto" and main else not show_progress
    if main and config.schedule.warmup_epochs >= config.train.epochs:
        warnings.warn(
            f"schedule.warmup_epochs ({config.schedule.warmup_epochs:g}) is not shorter than "
            f"train.epochs ({config.train.epochs}): the learning rate never reaches optim.lr "
            "and the schedule's decay never starts; shorten the warm-up",
            UserWarning,
            stacklevel=2,
        )

    if config.train.tensorboard:
        tb_log.require()  # a missing optional extra: one line, before anything is read

    # Data and model come first: bad input fails here, before a run folder exists.
    dataset = load_dataset(
        config.data.dataset,
        config.data.data_dir,
        download=config.data.download,
        verify=config.data.verify,
        # pooch's download bar ignores whether stderr is a terminal: "auto" decides here.
        progress=show_progress and (config.train.progress == "on" or sys.stderr.isatty()),
    )
    torch.manual_seed(config.train.seed)  # the same initial weights in every process
    model = create_model(
        config.model_name,
        in_chans=dataset.in_chans,
        num_classes=dataset.num_classes,
        image_size=dataset.image_size,
        **config.model_params,
    ).to(device)
    # NHWC is the layout both cuDNN and oneDNN (x86 CPUs) convolve fastest; on the project's
    # 2-core CPU it made the DenseNet recipe's epochs about 1.37x faster (docs/benchmarks.md,
    # "Channels-last on the CPU").
    setting = config.train.channels_last
    channels_last = (
        setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu"))
    ) and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader, eval_loaders = build_loaders(config, dataset, device, world, channels_last)
    steps_per_epoch = len(train_loader)
    optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch, config.train.epochs)
    ema = make_ema(model, config.train.ema_decay)
    eval_model = ema.module if ema is not None else model  # evaluated and saved at the end
    if _fast_path(config.train.compile, device):
        model.compile()  # in place: state_dict keys are unchanged
        if ema is not None:
            ema.module.compile()
    # DDP averages gradients across processes during backward.
    step_model = DistributedDataParallel(model) if world.distributed else model
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
        "world_size": world.size,
    }
    loader_epoch_start = train_loader.generator.get_state()  # rebuilds the epoch's batches
    if run is None:
        run = RunFolder.create(config) if main else None
    else:
        checkpoint = torch.load(run.last_checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        state = checkpoint["state"]
        if state.get("world_size", 1) != world.size:
            raise TinyVisionError(
                f"{run.path} was trained by {state.get('world_size', 1)} processes: "
                "resume it with the same number"
            )
        mine = checkpoint["processes"][world.rank]  # this process's random-number streams
        loader_epoch_start = mine["loader_epoch_start"].cpu()
        train_loader.generator.set_state(loader_epoch_start)
        torch.set_rng_state(mine["torch_rng"].cpu())
        if device.type == "cuda" and mine["cuda_rng"] is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"].cpu(), device)
        if main:
            print(f"resuming {run.path} at epoch {state['epoch'] + 1}, step {state['global_step']}")
    run_path = distributed.gather(run.path if run is not None else None, world)[0]
    # The step of the newest checkpoint on disk (None: none yet), for the error messages.
    saved_step = state["global_step"] if run is not None and run.last_checkpoint.exists() else None
    if main:
        env = {**environment(device, dataset.source), "parameters": num_params}
        env["processes"] = world.size
        if (run.path / "environment.json").exists():  # only a resumed run has one
            # The run's first session keeps its command and hardware; each resumption (which
            # may be on another machine) is listed after it.
            first = run.read_json("environment.json")
            first["resumed"] = [*first.get("resumed", []), env]
            env = first
        run.write_json("environment.json", env)
    # TensorBoard event files beside the metrics (process 0 only, like every file).
    tb = (
        tb_log.TensorBoardLog(run.path, resumed_at=state["global_step"])
        if main and config.train.tensorboard
        else None
    )

    def save_checkpoint(*, best: bool = False) -> None:
        """last.pt (and best.pt). Collective under torchrun: every process hands over its
        random-number streams, process 0 writes."""
        nonlocal saved_step
        check_finite_weights(model, state, config, world)  # never overwrite a good one with NaNs
        processes = distributed.gather(
            {
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "loader_epoch_start": loader_epoch_start,
            },
            world,
        )
        if not main:
            return
        checkpoint = {
            "version": CHECKPOINT_VERSION,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "processes": processes,
            "state": state,
            "config": config.model_dump(mode="json"),
        }
        run.save_checkpoint(checkpoint, run.last_checkpoint)
        if best:
            run.save_checkpoint(checkpoint, run.best_checkpoint)
        saved_step = state["global_step"]

    if main:
        print(
            f"training {config.model_name} ({num_params:,} parameters) on {config.data.dataset} "
            f"[{dataset.source.get('integrity', '')}] for {config.train.epochs} epochs on "
            f"{device}"
            + (f" x {world.size} processes" if world.distributed else "")
            + f"; run folder: {run_path}"
        )
    model.train()
    started = time.perf_counter() - state["elapsed"]
    stop = StopRequest()
    # Checks that need the host are made every step on a CPU (free there) but only every
    # LOG_EVERY steps on a GPU or across processes, where each one is a synchronisation.
    check_every = 1 if device.type != "cuda" and not world.distributed else LOG_EVERY
    try:
        for epoch in range(state["epoch"], config.train.epochs):
            epoch_started = time.perf_counter()
            skip = state["step_in_epoch"]
            totals = EpochTotals.resume(state["partial"], device)
            bar = tqdm(
                total=steps_per_epoch,
                initial=skip,
                disable=bar_disable,
                leave=False,
                desc=f"epoch {epoch + 1}/{config.train.epochs}",
                unit="step",
            )
            # The epoch's batch order is drawn from the loader's generator state at its start;
            # a resumed epoch draws the same and starts at the step it had reached.
            for step_in_epoch, (images, targets) in enumerate(train_loader.epoch(skip), skip):
                with autocast:
                    logits = step_model(images)
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
                if state["global_step"] % check_every == 0:
                    check_finite(detached, state, epoch, config, world)
                    stopping = distributed.any_process(stop.requested, world, device)
                else:
                    stopping = False
                if state["global_step"] % LOG_EVERY == 0:
                    mean_loss = totals.take_window() / LOG_EVERY
                    epoch_float = epoch + (step_in_epoch + 1) / steps_per_epoch
                    state["steps"].append((state["global_step"], epoch_float, mean_loss))
                    if tb is not None:
                        tb.log_step(state["global_step"], mean_loss, scheduler.get_last_lr()[0])
                    bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                every = config.train.checkpoint_every_steps
                if (every and state["global_step"] % every == 0) or stopping:
                    state["partial"] = totals.state()
                    state["elapsed"] = time.perf_counter() - started
                    save_checkpoint()
                if stopping:  # Ctrl-C: stopped between two steps, where the state is whole
                    bar.close()
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1}, step {state['global_step']}; the "
                        f"training state is saved.\nResume with:  tinyvision train --resume "
                        f"{run_path}"
                    )
            bar.close()

            # End of epoch: metrics, evaluation, checkpoints, curves.
            train_sums = distributed.all_reduce_sum(totals.sums(), world).tolist()
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": state["global_step"],
                "lr": scheduler.get_last_lr()[0],
                "train_loss": train_sums[0] / train_sums[2],
                "train_acc": train_sums[1] / train_sums[2],
            }
            check_finite(torch.tensor(row["train_loss"]), state, epoch, config, world)
            if (epoch + 1) % config.train.eval_every == 0 or epoch + 1 == config.train.epochs:
                for split, loader in eval_loaders.items():
                    row[f"{split}_loss"], row[f"{split}_acc"] = evaluate(
                        eval_model, loader, autocast, world
                    )
            row["epoch_seconds"] = time.perf_counter() - epoch_started
            row["elapsed_seconds"] = time.perf_counter() - started
            if main:
                print(format_row(row, config.train.epochs), flush=True)

            state["metrics"].append(row)
            state.update(
                epoch=epoch + 1, step_in_epoch=0, partial=None, elapsed=row["elapsed_seconds"]
            )
            loader_epoch_start = train_loader.generator.get_state()
            score = selection_score(row)
            is_best = state["best"] is None or score > state["best"]
            if is_best:
                state["best"] = score
            save_checkpoint(best=is_best)
            if main:
                run.write_metrics(state["metrics"])
                run.write_steps(state["steps"])
                from tinyvision.report import plot_curves  # report reads runs: import late

                plot_curves(run)
                if tb is not None:
                    tb.log_epoch(row)
            if on_epoch is not None:
                on_epoch(row)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(
            f"out of GPU memory with data.batch_size = {config.data.batch_size}: try a smaller "
            f"batch (e.g. data.batch_size={max(1, config.data.batch_size // 2)}) or a smaller "
            "model"
            + (
                f". {run_path} keeps the checkpoint from step {saved_step}: if the memory was "
                f"taken by something else, continue it with  tinyvision train --resume {run_path}"
                if saved_step is not None
                else ""
            )
        ) from None
    finally:
        stop.restore()
        if tb is not None:
            tb.writer.flush()  # an interrupted run keeps what it logged

    if config.train.tensorboard:  # the final model's confusion matrix (collective)
        confusion = tb_log.confusion_matrix(
            eval_model, eval_loaders["test"], dataset.num_classes, autocast, world
        )
        if tb is not None:
            tb.log_confusion(confusion, dataset.classes, state["global_step"])
            tb.close()
    summary = finish_run(run, config, eval_model, dataset, num_params) if main else {}
    return RunResult(Path(run_path), summary)


def _fast_path(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


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

    def sums(self) -> torch.Tensor:
        """[loss sum, correct, seen] as one tensor, to add up across processes."""
        return torch.stack(
            [
                self.loss_sum.double(),
                self.correct.double(),
                torch.tensor(float(self.seen), device=self.loss_sum.device, dtype=torch.float64),
            ]
        )

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


def check_finite(
    loss: torch.Tensor, state: dict[str, Any], epoch: int, config: Config, world: World
) -> None:
    """Stop on a NaN or infinite loss (in every process, if any one of them sees it)."""
    if not distributed.any_process(not math.isfinite(loss.item()), world, loss.device):
        return
    raise TrainingError(
        f"the training loss became {loss.item()} at step {state['global_step']} "
        f"(epoch {epoch + 1}). Likely cause: the learning rate (optim.lr = {config.optim.lr:g}) "
        "is too high for this model; lower it, add warm-up (schedule.warmup_epochs) or "
        "gradient clipping (optim.grad_clip). The last good checkpoint is kept."
    )


def check_finite_weights(
    model: nn.Module, state: dict[str, Any], config: Config, world: World
) -> None:
    """Stop before a checkpoint would save non-finite weights: a step can break the weights
    while its own loss was still finite, and on a GPU the loss is only read every LOG_EVERY
    steps. One host synchronisation per checkpoint."""
    finite = torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()
    if not distributed.any_process(not finite.item(), world, finite.device):
        return
    epoch = state["epoch"] + 1 if state["step_in_epoch"] else state["epoch"]
    raise TrainingError(
        f"the weights became NaN or infinite at step {state['global_step']} (epoch {epoch}). "
        f"Likely cause: the learning rate (optim.lr = {config.optim.lr:g}) is too high for this "
        "model; lower it, add warm-up (schedule.warmup_epochs) or gradient clipping "
        "(optim.grad_clip). The last good checkpoint is kept."
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
    if config.train.report:
        from tinyvision.report import report_after_training

        report_after_training(run, dataset)  # report.html and report.md, from model.pt
    return summary
