"""The training state: everything a run needs to continue exactly where it stopped.

    state = TrainingState(config, model, optimizer, scheduler, ema, loader.generator, world)
    state.restore(run.last_checkpoint)      # resume: weights, optimiser, RNG, loader position
    ...
    state.save(run)                         # last.pt (and best.pt), written atomically

A checkpoint holds the model, optimiser, scheduler, EMA, every random-number state, the data
loader's generator state at the start of the epoch, the step reached within the epoch and the
metrics so far (``Progress``). Resuming rebuilds the epoch's batch order from that generator
state and starts at the step reached, so an interrupted run ends with the same weights as an
uninterrupted one (bit for bit with ``train.deterministic = true`` on the CPU).

The file layout is the one checkpoints have had since version 1 (``"state"`` is ``Progress`` as
a plain dict), so older checkpoints resume too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyvision import distributed
from tinyvision.config import Config
from tinyvision.distributed import World
from tinyvision.errors import TinyVisionError
from tinyvision.runs import RunFolder

CHECKPOINT_VERSION = 1


@dataclass
class Progress:
    """Where the run is and what it measured so far: plain values, saved as they are."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch already taken
    global_step: int = 0
    elapsed: float = 0.0  # training seconds before this session
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    steps: list[tuple[int, float, float]] = field(default_factory=list)  # the loss curve
    best: float | None = None  # the best selection score so far (see engine.selection_score)
    partial: dict[str, Any] | None = None  # the current epoch's sums, mid-epoch only
    world_size: int = 1


class TrainingState:
    """The model, optimiser, schedule, EMA, loader position, RNG streams and ``Progress``."""

    def __init__(
        self,
        config: Config,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: torch.optim.swa_utils.AveragedModel | None,
        loader_generator: torch.Generator,
        world: World,
    ) -> None:
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema = ema
        self.loader_generator = loader_generator
        self.world = world
        self.device = next(model.parameters()).device
        self.progress = Progress(world_size=world.size)
        # The generator's state when the current epoch began: it rebuilds the epoch's batches.
        self.loader_epoch_start = loader_generator.get_state()
        self.saved_step: int | None = None  # step of the newest checkpoint on disk, if any

    def start_next_epoch(self) -> None:
        """Called after an epoch's last step: the next epoch draws from the generator as now."""
        self.loader_epoch_start = self.loader_generator.get_state()

    def restore(self, path: Path) -> None:
        """Load a checkpoint into every piece of the state (this process's RNG streams)."""
        checkpoint = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        progress = Progress(**checkpoint["state"])
        if progress.world_size != self.world.size:
            raise TinyVisionError(
                f"{path.parent.parent} was trained by {progress.world_size} processes: "
                "resume it with the same number"
            )
        self.progress = progress
        mine = checkpoint["processes"][self.world.rank]  # this process's random-number streams
        self.loader_epoch_start = mine["loader_epoch_start"].cpu()
        self.loader_generator.set_state(self.loader_epoch_start)
        torch.set_rng_state(mine["torch_rng"].cpu())
        if self.device.type == "cuda" and mine["cuda_rng"] is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"].cpu(), self.device)
        self.saved_step = progress.global_step

    def save(self, run: RunFolder | None, *, best: bool = False) -> None:
        """last.pt (and best.pt), each written atomically. Collective under torchrun: every
        process hands over its random-number streams, process 0 (``run`` not None) writes."""
        device = self.device
        processes = distributed.gather(
            {
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "loader_epoch_start": self.loader_epoch_start,
            },
            self.world,
        )
        if run is not None:
            checkpoint = {
                "version": CHECKPOINT_VERSION,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "processes": processes,
                "state": asdict(self.progress),
                "config": self.config.model_dump(mode="json"),
            }
            run.save_checkpoint(checkpoint, run.last_checkpoint)
            if best:
                run.save_checkpoint(checkpoint, run.best_checkpoint)
        self.saved_step = self.progress.global_step
