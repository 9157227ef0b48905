"""The training loop of one session: steps, the loss curve, evaluation, checkpoints.

    loop = Loop(state, step_model, train_loader, eval_loaders, run, run_path, on_epoch, tb)
    loop.run()     # every epoch left, from the step the state has reached
    loop.log_confusion(classes)   # with train.tensorboard: the final model's, in every process

Each step is as plain as nanoGPT's (forward, loss, backward, clip, optimiser, schedule, EMA);
sums stay on the device, so the host synchronises once per epoch, every ``LOG_EVERY`` steps for
the loss curve and progress bar, and at each check on a GPU. After an epoch: metrics, the
evaluation of every split, the checkpoint (``state.py``), the metrics files and ``curves.png``;
with ``train.tensorboard`` the loss-curve points and the metrics go to TensorBoard as well
(``tensorboard.py``).
The engine (``engine.py``) builds what the loop runs on.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tinyvision import distributed
from tinyvision import tensorboard as tb_log
from tinyvision.config import Config
from tinyvision.data import DeviceLoader, tta_views
from tinyvision.device import autocast_for
from tinyvision.distributed import World
from tinyvision.errors import TrainingError, TrainingInterrupted
from tinyvision.plots import plot_curves
from tinyvision.runs import RunFolder
from tinyvision.state import Progress, TrainingState

SINGLE_PROCESS = World()
LOG_EVERY = 20  # steps between points of the loss curve (and progress-bar refreshes)
# Off a terminal there are no progress bars: a line this often within an epoch instead (an
# epoch can take minutes on a CPU, and a log that says nothing looks like a hang).
PROGRESS_SECONDS = 30.0
# What the epoch's "train accuracy" is: counted on the fly, not an evaluation of the model.
TRAIN_ACC_MEANING = "running mean over the last epoch's augmented training batches"


class Loop:
    """The epochs of one training session: steps, the loss curve, evaluation, checkpoints."""

    def __init__(
        self,
        state: TrainingState,
        step_model: nn.Module,
        train_loader: DeviceLoader,
        eval_loaders: dict[str, DeviceLoader],
        run: RunFolder | None,
        run_path: Path,
        on_epoch: Callable[[dict[str, Any]], None] | None,
        tensorboard: tb_log.TensorBoardLog | None = None,
    ) -> None:
        self.state, self.progress, self.config = state, state.progress, state.config
        self.world, self.device = state.world, state.device
        self.step_model = step_model  # the model, or its DDP wrapper under torchrun
        self.train_loader = train_loader
        self.eval_loaders = eval_loaders
        self.folder = run  # the run folder where this process writes it, else None
        self.run_path, self.on_epoch = run_path, on_epoch
        self.tensorboard = tensorboard  # held by the process that writes the folder, if asked
        self.autocast = autocast_for(self.config, self.device)
        self.eval_model = state.ema.module if state.ema is not None else state.model
        # Checks that need the host are made every step on a CPU (free there) but only every
        # LOG_EVERY steps on a GPU or across processes, where each one is a synchronisation.
        on_host = self.device.type != "cuda" and not self.world.distributed
        self.check_every = 1 if on_host else LOG_EVERY
        progress = self.config.train.progress
        shown = self.world.is_main and progress != "off"
        self.bar_disable = None if progress == "auto" and self.world.is_main else not shown
        self.started = time.perf_counter() - self.progress.elapsed

    def run(self) -> None:
        self.state.model.train()
        stop = StopRequest()
        try:
            for epoch in range(self.progress.epoch, self.config.train.epochs):
                epoch_started = time.perf_counter()
                totals = self.train_epoch(epoch, stop)
                self.end_epoch(epoch, totals, epoch_started)
        except torch.cuda.OutOfMemoryError:
            raise self.out_of_memory() from None
        finally:
            stop.restore()
            if self.tensorboard is not None:
                self.tensorboard.writer.flush()  # an interrupted run keeps what it logged

    def train_epoch(self, epoch: int, stop: StopRequest) -> EpochTotals:
        """The epoch's steps from the one reached (a resumed epoch starts mid-way)."""
        p, config = self.progress, self.config
        skip, steps_per_epoch = p.step_in_epoch, len(self.train_loader)
        totals = EpochTotals.resume(p.partial, self.device)
        bar = tqdm(
            total=steps_per_epoch,
            initial=skip,
            disable=self.bar_disable,
            leave=False,
            desc=f"epoch {epoch + 1}/{config.train.epochs}",
            unit="step",
        )
        lines = ProgressLines(
            self.world.is_main and config.train.progress == "auto" and not sys.stderr.isatty(),
            f"epoch {epoch + 1}/{config.train.epochs}",
            steps_per_epoch,
        )
        # The epoch's batch order is drawn from the loader's generator state at its start;
        # a resumed epoch draws the same and starts at the step it had reached.
        for step_in_epoch, (images, targets) in enumerate(self.train_loader.epoch(skip), skip):
            loss, plain_ce, logits = self.step(images, targets)
            totals.add(loss, plain_ce, logits, targets)  # on the device: no host sync
            p.global_step += 1
            p.step_in_epoch = step_in_epoch + 1
            bar.update()
            stopping = False
            if p.global_step % self.check_every == 0:
                check_finite(loss, p, epoch, config, self.world)
                stopping = distributed.any_process(stop.requested, self.world, self.device)
            if p.global_step % LOG_EVERY == 0:
                self.log_loss(totals, epoch, bar, lines)
            lines.step(step_in_epoch + 1)
            every = config.train.checkpoint_every_steps
            if (every and p.global_step % every == 0) or stopping:
                p.partial = totals.state()
                p.elapsed = time.perf_counter() - self.started
                self.checkpoint()
            if stopping:  # Ctrl-C: stopped between two steps, where the state is whole
                bar.close()
                raise TrainingInterrupted(
                    f"interrupted at epoch {epoch + 1}, step {p.global_step}; the training state "
                    f"is saved.\nResume with:  tinyvision train --resume {self.run_path}"
                )
        bar.close()
        if totals.window_steps:  # the epoch's last steps since a point: their own point
            self.log_loss(totals, epoch, bar, lines)
        return totals

    def step(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step; returns the loss, the plain cross-entropy and the logits."""
        state, config = self.state, self.config
        with self.autocast:
            logits = self.step_model(images)
        smoothing = config.train.label_smoothing
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip:
            nn.utils.clip_grad_norm_(state.model.parameters(), config.optim.grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        loss = loss.detach()
        # The objective includes label smoothing, the evaluation's loss does not: keep the
        # plain cross-entropy of the training batches too, so like is compared with like.
        plain_ce = loss
        if smoothing:
            with torch.no_grad():
                plain_ce = F.cross_entropy(logits.detach().float(), targets)
        return loss, plain_ce, logits

    def log_loss(self, totals: EpochTotals, epoch: int, bar: tqdm, lines: ProgressLines) -> None:
        """A point of the loss curve: the mean loss of exactly the steps since the last one."""
        p = self.progress
        mean_loss = totals.take_window()
        epoch_float = epoch + p.step_in_epoch / len(self.train_loader)
        p.steps.append((p.global_step, epoch_float, mean_loss))
        if self.tensorboard is not None:  # the same points as steps.csv
            lr = self.state.scheduler.get_last_lr()[0]
            self.tensorboard.log_step(p.global_step, mean_loss, lr)
        bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        lines.loss = mean_loss

    def end_epoch(self, epoch: int, totals: EpochTotals, epoch_started: float) -> None:
        """Metrics, evaluation, the checkpoint, the metrics files and the curves."""
        p, config, world = self.progress, self.config, self.world
        loss_sum, ce_sum, correct, seen = distributed.all_reduce_sum(totals.sums(), world).tolist()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": p.global_step,
            "lr": self.state.scheduler.get_last_lr()[0],
            "train_loss": loss_sum / seen,  # the objective: with label smoothing, if any
            "train_ce": ce_sum / seen,  # plain cross-entropy, as val_loss and test_loss are
            "train_acc": correct / seen,
        }
        check_finite(torch.tensor(row["train_loss"]), p, epoch, config, world)
        if (epoch + 1) % config.train.eval_every == 0 or epoch + 1 == config.train.epochs:
            for split, loader in self.eval_loaders.items():
                scores = evaluate(
                    self.eval_model, loader, self.autocast, world, tta=config.train.eval_tta
                )
                row.update({f"{split}_{name}": value for name, value in scores.items()})
        row["epoch_seconds"] = time.perf_counter() - epoch_started
        row["elapsed_seconds"] = time.perf_counter() - self.started
        if world.is_main:
            print(format_row(row, config.train.epochs), flush=True)

        p.metrics.append(row)
        p.epoch, p.step_in_epoch, p.partial = epoch + 1, 0, None
        p.elapsed = row["elapsed_seconds"]
        self.state.start_next_epoch()
        score = selection_score(row)
        is_best = p.best is None or score > p.best
        if is_best:
            p.best = score
        self.checkpoint(best=is_best)
        if self.folder is not None:
            self.folder.write_metrics(p.metrics)
            self.folder.write_steps(p.steps)
            plot_curves(self.folder)
            if self.tensorboard is not None:
                self.tensorboard.log_epoch(row)
        if self.on_epoch is not None:
            self.on_epoch(row)

    def log_confusion(self, classes: list[str]) -> None:
        """The final model's confusion matrix on the test split, to TensorBoard, then the event
        files closed. Collective (each process counts its shard): every process calls it."""
        test = self.eval_loaders["test"]
        counts = tb_log.confusion_matrix(
            self.eval_model, test, len(classes), self.autocast, self.world
        )
        if self.tensorboard is not None:
            self.tensorboard.log_confusion(counts, classes, self.progress.global_step)
            self.tensorboard.close()

    def checkpoint(self, *, best: bool = False) -> None:
        # Never overwrite a good checkpoint with NaN weights.
        check_finite_weights(self.state.model, self.progress, self.config, self.world)
        self.state.save(self.folder, best=best)

    def out_of_memory(self) -> TrainingError:
        saved, run_path = self.state.saved_step, self.run_path
        batch = self.config.data.batch_size
        return TrainingError(
            f"out of GPU memory with data.batch_size = {batch}: try a smaller batch (e.g. "
            f"data.batch_size={max(1, batch // 2)}) or a smaller model"
            + (
                f". {run_path} keeps the checkpoint from step {saved}: if the memory was "
                f"taken by something else, continue it with  tinyvision train --resume {run_path}"
                if saved is not None
                else ""
            )
        )


class ProgressLines:
    """A line every ``PROGRESS_SECONDS`` within an epoch, for logs where the bar is off.

    The loss shown is the last loss-curve point already read (``Loop.log_loss``): printing
    adds no host synchronisation.
    """

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled, self.label, self.total = enabled, label, total
        self.loss: float | None = None
        self.started = self.last = time.perf_counter()

    def step(self, done: int) -> None:
        if not self.enabled or done == self.total:  # the epoch's own line follows at its end
            return
        now = time.perf_counter()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        print(
            f"  {self.label}: step {done}/{self.total} ({done / self.total:.0%}){loss}, "
            f"{now - self.started:.0f}s",
            flush=True,
        )


class EpochTotals:
    """Sums over one epoch's steps, kept on the device and read once per epoch; the loss
    window (summed since the last point of the loss curve) is read at each point."""

    def __init__(
        self,
        device: torch.device,
        loss_sum: float = 0.0,
        ce_sum: float | None = None,
        correct: int = 0,
        seen: int = 0,
        window: float = 0.0,
        window_steps: int = 0,
    ) -> None:
        self.loss_sum = torch.tensor(loss_sum, device=device)
        # A checkpoint from before train_ce was recorded has none: the objective stands in.
        self.ce_sum = torch.tensor(loss_sum if ce_sum is None else ce_sum, device=device)
        self.correct = torch.tensor(correct, device=device)
        self.seen = seen
        self.window = torch.tensor(window, device=device)
        self.window_steps = window_steps  # steps in the window (counted on the host)

    @classmethod
    def resume(cls, saved: dict[str, Any] | None, device: torch.device) -> EpochTotals:
        return cls(device, **(saved or {}))

    def add(
        self,
        loss: torch.Tensor,
        plain_ce: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
    ) -> None:
        labels = targets if targets.ndim == 1 else targets.argmax(1)  # mixup: soft targets
        self.loss_sum += loss * labels.shape[0]
        self.ce_sum += plain_ce * labels.shape[0]
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += labels.shape[0]
        self.window += loss
        self.window_steps += 1

    def sums(self) -> torch.Tensor:
        """[loss sum, plain CE sum, correct, seen] as one tensor, to add up across processes."""
        seen = torch.tensor(float(self.seen), device=self.loss_sum.device, dtype=torch.float64)
        return torch.stack(
            [self.loss_sum.double(), self.ce_sum.double(), self.correct.double(), seen]
        )

    def take_window(self) -> float:
        """The mean loss over the steps since the last call (one host synchronisation)."""
        value = self.window.item() / self.window_steps
        self.window.zero_()
        self.window_steps = 0
        return value

    def state(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum.item(),
            "ce_sum": self.ce_sum.item(),
            "correct": self.correct.item(),
            "seen": self.seen,
            "window": self.window.item(),
            "window_steps": self.window_steps,
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
    loss: torch.Tensor, progress: Progress, epoch: int, config: Config, world: World
) -> None:
    """Stop on a NaN or infinite loss (in every process, if any one of them sees it)."""
    if not distributed.any_process(not math.isfinite(loss.item()), world, loss.device):
        return
    raise TrainingError(
        f"the training loss became {loss.item()} at step {progress.global_step} "
        f"(epoch {epoch + 1}). Likely cause: the learning rate (optim.lr = {config.optim.lr:g}) "
        "is too high for this model; lower it, add warm-up (schedule.warmup_epochs) or "
        "gradient clipping (optim.grad_clip). The last good checkpoint is kept."
    )


def check_finite_weights(
    model: nn.Module, progress: Progress, config: Config, world: World
) -> None:
    """Stop before a checkpoint would save non-finite weights: a step can break the weights
    while its own loss was still finite, and on a GPU the loss is only read every LOG_EVERY
    steps. One host synchronisation per checkpoint."""
    finite = torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()
    if not distributed.any_process(not finite.item(), world, finite.device):
        return
    epoch = progress.epoch + 1 if progress.step_in_epoch else progress.epoch
    raise TrainingError(
        f"the weights became NaN or infinite at step {progress.global_step} (epoch {epoch}). "
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
            part = f"{split} loss {row[f'{split}_loss']:.4f} acc {row[f'{split}_acc']:.2%}"
            if f"{split}_acc_tta" in row:
                part += f" (tta {row[f'{split}_acc_tta']:.2%})"
            parts.append(part)
    parts.append(f"{row['epoch_seconds']:.1f}s")
    return " | ".join(parts)


# --- evaluation ---------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    autocast: contextlib.AbstractContextManager,
    world: World = SINGLE_PROCESS,
    tta: str = "none",
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode (summed over all
    processes under torchrun): ``{"loss", "acc"}``; with test-time augmentation ``tta`` (see
    ``TTA_MODES``) also ``{"loss_tta", "acc_tta"}`` of the softmax averaged over the views."""
    was_training = model.training
    model.eval()
    # loss, correct, count, then the same two sums for the averaged views
    sums = torch.zeros(5, device=loader.device, dtype=torch.float64)
    for images, labels in loader:
        views = tta_views(images, tta, loader.shift.to(images.dtype))
        with autocast:
            logits = model(views[0])  # the plain image first: its accuracy comes for free
        sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
        sums[1] += (logits.argmax(1) == labels).sum()
        sums[2] += labels.shape[0]
        if len(views) > 1:
            probs = torch.softmax(logits.float(), dim=1)
            for view in views[1:]:
                with autocast:
                    probs += torch.softmax(model(view).float(), dim=1)
            probs /= len(views)
            sums[3] += F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")
            sums[4] += (probs.argmax(1) == labels).sum()
    model.train(was_training)
    loss_sum, correct, count, loss_sum_tta, correct_tta = distributed.all_reduce_sum(
        sums, world
    ).tolist()
    scores = {"loss": loss_sum / count, "acc": correct / count}
    if tta != "none":
        scores.update(loss_tta=loss_sum_tta / count, acc_tta=correct_tta / count)
    return scores
