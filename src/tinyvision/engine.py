"""The training engine, one straight path: config -> data -> model -> optimiser -> loop -> save.

Speed comes from keeping the whole data set on the training device (augmentation runs batched
there), bf16 autocast on CUDA, and not synchronising with the host inside the step: the loss and
accuracy are summed on the device and read once per epoch (and every ``LOG_EVERY`` steps for the
progress bar and the loss curve).

The engine writes the run folder (``runs.py``): config, metrics, the loss curve and
``curves.png`` after every epoch (``plots.py``), checkpoints, and at the end ``model.pt`` and
``summary.json``, and TensorBoard event files with ``train.tensorboard`` (``tensorboard.py``).
It never writes the report: that is read from the finished run folder afterwards
(``report.py``, called by the CLI and ``tinyvision.train``), so a problem there cannot lose a
trained model.
What a checkpoint holds, and how a run resumes exactly, is ``state.py``; devices and precision
are ``device.py``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tinyvision import distributed
from tinyvision import tensorboard as tb_log
from tinyvision.config import Config
from tinyvision.data import Augment, DeviceLoader, ImageDataset, load_dataset_for, split_validation
from tinyvision.device import (
    configure_torch,
    convs_to_channels_last,
    cpu_has_native_bf16,
    resolve_device,
)
from tinyvision.distributed import World
from tinyvision.errors import TinyVisionError, WriteError
from tinyvision.lock import holding_locks, lock_run
from tinyvision.loop import TRAIN_ACC_MEANING, Loop, evaluate
from tinyvision.models import create_model
from tinyvision.models.dynconv import DynamicConv2d
from tinyvision.optim import build_optimizer, build_scheduler
from tinyvision.resume import plural, prepare_resume, write_failure
from tinyvision.runs import RunFolder, environment
from tinyvision.state import TrainingState

__all__ = ["RunResult", "evaluate", "resolve_device", "train"]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    # False in the other processes under torchrun: process 0 alone writes the run folder.
    main: bool = True
    # False when there was nothing to train (a finished run resumed): the folder is unchanged.
    trained: bool = True


# --- set-up -------------------------------------------------------------------------------


def build_model(
    config: Config, dataset: ImageDataset, device: torch.device
) -> tuple[nn.Module, bool]:
    """The model on ``device``, and whether it (and so its batches) is channels-last."""
    model = create_model(
        config.model_name,
        in_chans=dataset.in_chans,
        num_classes=dataset.num_classes,
        image_size=dataset.image_size,
        **config.model_params,
    ).to(device)
    channels_last = channels_last_for(config, device, model)
    if channels_last:
        model = convs_to_channels_last(model)
    return model, channels_last


def channels_last_for(config: Config, device: torch.device, model: nn.Module) -> bool:
    """Whether ``model`` trains and evaluates in channels-last (NHWC) memory on ``device``.

    NHWC is the layout both cuDNN and oneDNN (x86 CPUs) convolve fastest; on the project's
    2-core CPU it made the DenseNet recipe's epochs about 1.37x faster (docs/benchmarks.md,
    "Channels-last on the CPU"); brief B's dynamic convolutions compute channels-last on the
    CPU (ops/dynamic_conv.py, method "nhwc"). Models without convolutions stay as they are.
    """
    setting = config.train.channels_last
    return (setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu"))) and any(
        isinstance(m, (nn.Conv2d, DynamicConv2d)) for m in model.modules()
    )


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


# --- training -----------------------------------------------------------------------------


def train(
    config: Config | None = None,
    *,
    resume: str | Path | None = None,
    epochs: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train ``config``, or resume the run in folder ``resume`` with its saved config.

    With ``resume``, ``epochs`` extends (or shortens) the run to that many epochs: see
    ``resume.py`` for what the schedule does then, and for finished, damaged and
    never-checkpointed runs. The run folder is locked for the whole training (``lock.py``).
    ``on_epoch(row)`` is called with each epoch's metrics once they are saved; an exception it
    raises (a sweep pruning a trial, say) stops training with the run folder consistent.
    """
    if resume is None and config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    if epochs is not None and resume is None:
        raise ValueError("train(epochs=...) extends a resumed run; set train.epochs otherwise")
    run: RunFolder | None = None
    if resume is not None:
        run = RunFolder.open(resume)
        config = run.load_config()
    world, device_name = distributed.init(config.train.device)  # torchrun: one process per device
    try:
        with holding_locks():  # released however training ends
            if run is not None:
                if world.is_main:
                    lock_run(run.path)  # before anything in the folder is touched
                    run.remove_temporaries()  # left by a process killed mid-write
                plan = prepare_resume(run, config, epochs, main=world.is_main)
                distributed.gather(None, world)  # the others wait for process 0's repairs
                if plan.finished:
                    summary = run.read_json("summary.json")
                    return RunResult(run.path, summary, world.is_main, trained=False)
                config = plan.config
            return _train(config, run, world, resolve_device(device_name), on_epoch)
    except WriteError as err:  # disk full, folder read-only: say what is safe on disk
        raise write_failure(err) from None
    finally:
        distributed.shutdown(world, finished=sys.exc_info()[0] is None)


def _train(
    config: Config,
    run: RunFolder | None,
    world: World,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> RunResult:
    configure_torch(config)
    main = world.is_main  # only process 0 prints and writes files
    if main:
        warn_about_settings(config, device)
    if config.train.tensorboard:
        tb_log.require()  # a missing optional extra: one line, before anything is read
    # Data and model come first: bad input fails here, before a run folder exists.
    progress = config.train.progress
    # pooch's download bar ignores whether stderr is a terminal: "auto" decides here.
    download_bar = main and (progress == "on" or (progress == "auto" and sys.stderr.isatty()))
    dataset = load_dataset_for(config.data, progress=download_bar)
    torch.manual_seed(config.train.seed)  # the same initial weights in every process
    model, channels_last = build_model(config, dataset, device)
    train_loader, eval_loaders = build_loaders(config, dataset, device, world, channels_last)
    optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, config.schedule, len(train_loader), config.train.epochs)
    ema = make_ema(model, config.train.ema_decay)
    if _fast_path(config.train.compile, device):
        model.compile()  # in place: state_dict keys are unchanged
        if ema is not None:
            ema.module.compile()
    # DDP averages gradients across processes during backward.
    step_model = DistributedDataParallel(model) if world.distributed else model
    state = TrainingState(config, model, optimizer, scheduler, ema, train_loader.generator, world)

    # Where the run starts: fresh, or from the last checkpoint of an existing run folder.
    resuming = run is not None
    if run is None:
        run = RunFolder.create(config) if main else None
    elif run.last_checkpoint.exists():  # (none: stopped before it, started again in its folder)
        state.restore(run.last_checkpoint)
        if main:
            p = state.progress
            print(f"resuming {run.path} at epoch {p.epoch + 1}, step {p.global_step}")
    writer = run if main else None  # the run folder, where this process writes it
    run_path = Path(distributed.gather(run.path if run is not None else None, world)[0])
    num_params = sum(p.numel() for p in model.parameters())
    if writer is not None:
        write_environment(writer, device, dataset, num_params, world)
        print(
            f"training {config.model_name} ({num_params:,} parameters) on {config.data.dataset} "
            f"[{dataset.source.get('integrity', '')}] for {plural(config.train.epochs, 'epoch')} "
            f"on {device}"
            + (f" x {world.size} processes" if world.distributed else "")
            + f"; run folder: {run_path}"
        )
        print(data_source_line(dataset.source), flush=True)
    # TensorBoard event files beside the metrics (process 0 only, like every file); a resumed
    # run's writer hides what the earlier session logged after the step it starts from.
    tb = None
    if writer is not None and config.train.tensorboard:
        resumed_at = state.progress.global_step if resuming else None
        tb = tb_log.TensorBoardLog(run_path, resumed_at=resumed_at)
    loop = Loop(state, step_model, train_loader, eval_loaders, writer, run_path, on_epoch, tb)
    loop.run()
    if config.train.tensorboard:  # collective: every process counts its shard of the test split
        loop.log_confusion(dataset.classes)
    eval_model = ema.module if ema is not None else model  # evaluated and saved at the end
    summary = finish_run(writer, config, eval_model, dataset, num_params) if main else {}
    return RunResult(run_path, summary, main)


def _fast_path(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def warn_about_settings(config: Config, device: torch.device) -> None:
    """Settings that run, but not as their user most likely expects."""
    if config.schedule.warmup_epochs >= config.train.epochs:
        warnings.warn(
            f"schedule.warmup_epochs ({config.schedule.warmup_epochs:g}) is not shorter than "
            f"train.epochs ({config.train.epochs}): the learning rate never reaches optim.lr "
            "and the schedule's decay never starts; shorten the warm-up",
            UserWarning,
            stacklevel=3,
        )
    if config.train.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "train.precision is bf16, but this CPU has no bf16 instructions (AVX512-BF16 or "
            "AMX): torch emulates bf16 here, which is usually slower than fp32; set "
            'train.precision="fp32" for speed',
            UserWarning,
            stacklevel=3,
        )


def write_environment(
    run: RunFolder, device: torch.device, dataset: ImageDataset, num_params: int, world: World
) -> None:
    env = {**environment(device, dataset.source), "parameters": num_params}
    env["processes"] = world.size
    if (run.path / "environment.json").exists():  # only a resumed run has one
        # The run's first session keeps its command and hardware; each resumption (which
        # may be on another machine) is listed after it.
        first = run.read_json("environment.json")
        first["resumed"] = [*first.get("resumed", []), env]
        env = first
    run.write_json("environment.json", env)


def data_source_line(source: dict[str, str]) -> str:
    """Where the data came from, printed at the start of every training."""
    return (
        f"data: {source.get('location', '?')} (found by: {source.get('found_by', '?')}; "
        f"{source.get('integrity', '')})"
    )


def finish_run(
    run: RunFolder, config: Config, model: nn.Module, dataset: ImageDataset, num_params: int
) -> dict[str, Any]:
    """The final model file (with what rebuilds it) and the summary."""
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
        "final_train_acc_is": TRAIN_ACC_MEANING,
        "final_val_acc": last.get("val_acc"),
        "best_val_acc": max((m["val_acc"] for m in metrics if "val_acc" in m), default=None),
        "eval_tta": config.train.eval_tta,
        "final_test_acc_tta": last.get("test_acc_tta"),
        "final_val_acc_tta": last.get("val_acc_tta"),
        "train_seconds": last["elapsed_seconds"],
        "seed": config.train.seed,
        "run_dir": str(run.path),
    }
    run.write_json("summary.json", summary)
    tta = ""
    if summary["final_test_acc_tta"] is not None:
        tta = f" ({summary['final_test_acc_tta']:.2%} with {summary['eval_tta']} test-time views)"
    print(
        f"final test accuracy: {summary['final_test_acc']:.2%}{tta} after "
        f"{plural(summary['epochs'], 'epoch')}, {summary['train_seconds']:.0f}s (train accuracy "
        f"{summary['final_train_acc']:.2%}: {TRAIN_ACC_MEANING})\nrun folder: {run.path}"
    )
    return summary
