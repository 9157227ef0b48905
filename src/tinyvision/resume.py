"""What ``--resume RUN`` does with the folder it is given, decided before training starts.

- A finished run (every epoch done and ``summary.json`` written) is left as it is, unless
  ``epochs`` extends it.
- ``epochs`` (CLI ``--resume RUN --epochs N``) sets the run's total to N epochs, which may not
  be fewer than the epochs done. The learning-rate schedule is rebuilt for the new total and
  the steps done are kept: from the next step on, the rate is what an N-epoch schedule gives
  at that step (for cosine, a run extended after its end goes back up to the rate an N-epoch
  cosine has there, then decays to the floor at epoch N). The new total is written into the
  run's ``config.toml``, so a later ``--resume`` keeps it.
- A damaged ``checkpoints/last.pt`` (cut short, emptied) is kept as ``last.pt.damaged`` and the
  newest intact checkpoint (``best.pt``) takes its place, the steps after it trained again.
- A run stopped before its first checkpoint starts again from the beginning in its folder,
  with its saved config.

Also here: the message for a write that failed during training (disk full), which says what
is safe on disk and how to go on.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyvision.config import Config, load_config
from tinyvision.errors import TinyVisionError, WriteError
from tinyvision.lock import LOCK_NAME
from tinyvision.runs import RunFolder, atomic_write, atomic_write_text


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any] | None  # the training position; None when the file is damaged
    problem: str = ""  # why it cannot be read

    @property
    def position(self) -> str:
        """``epoch 1 of 2 done, step 40`` or ``epoch 2, step 45``: where the file stands."""
        state = self.state or {}
        if state.get("step_in_epoch"):
            return (
                f"epoch {state['epoch'] + 1}, step {state['global_step']} "
                f"({state['step_in_epoch']} steps into the epoch)"
            )
        return f"{plural(state.get('epoch', 0), 'epoch')} done, step {state.get('global_step', 0)}"


def read_checkpoint(path: Path) -> Checkpoint:
    """Load ``path`` on the CPU to see whether it is whole; never raises for a damaged file."""
    if not path.is_file():
        return Checkpoint(path, None, "missing")
    size = path.stat().st_size
    if size == 0:
        return Checkpoint(path, None, "damaged: it is empty (0 bytes)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        return Checkpoint(path, checkpoint["state"])
    except Exception as err:  # any unreadable file: torch raises many kinds
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return Checkpoint(
            path,
            None,
            f"damaged: cut short or overwritten, it cannot be read ({size:,} bytes; torch.load "
            f"says: {reason})",
        )


def checkpoints_of(run: RunFolder) -> list[Checkpoint]:
    """The run's checkpoint files that exist, newest first (by training step)."""
    found = [read_checkpoint(p) for p in (run.last_checkpoint, run.best_checkpoint)]
    found = [c for c in found if c.problem != "missing"]
    return sorted(found, key=lambda c: -(c.state or {}).get("global_step", -1))


def is_finished(run: RunFolder, state: dict[str, Any], config: Config) -> bool:
    return state["epoch"] >= config.train.epochs and (run.path / "summary.json").is_file()


@dataclass
class ResumePlan:
    config: Config
    finished: bool = False  # nothing to do: the caller returns the run's summary


def prepare_resume(
    run: RunFolder, config: Config, epochs: int | None, *, main: bool = True
) -> ResumePlan:
    """Check ``run`` and make its folder ready to resume (only ``main`` changes files).

    Raises ``TinyVisionError`` with what is left on disk when it cannot be resumed.
    """
    say = print if main else (lambda *args: None)
    found = checkpoints_of(run)
    intact = [c for c in found if c.state is not None]
    damaged = [c for c in found if c.state is None]
    for bad in damaged:
        say(f"warning: {_rel(run, bad.path)} is {bad.problem}")

    if not intact:
        left = _what_is_left(run)
        if damaged:
            raise TinyVisionError(
                f"{run.path} has no intact checkpoint to resume from "
                f"({'; '.join(f'{_rel(run, c.path)}: {c.problem}' for c in damaged)}). "
                f"What is left: {left}. Train it again from the start in a new folder with  "
                f"tinyvision train {run.config_path}"
            )
        if (run.path / "metrics.jsonl").is_file():  # trained epochs, but no checkpoint: keep them
            raise TinyVisionError(
                f"{run.path} has no checkpoint (checkpoints/ holds no last.pt or best.pt) but "
                f"holds results: {left}. Train it again in a new folder with  "
                f"tinyvision train {run.config_path}"
            )
        config = _with_epochs(run, config, epochs, done=0, main=main)
        say(
            f"{run.path} was stopped before its first checkpoint: starting it again from the "
            f"beginning, in the same folder with its saved config ({config.model_name} on "
            f"{config.data.dataset}, {plural(config.train.epochs, 'epoch')})"
        )
        return ResumePlan(config)

    newest = intact[0]
    state = newest.state
    if newest.path != run.last_checkpoint:  # last.pt is damaged or older: best.pt takes over
        if main:
            kept = _free_name(run.last_checkpoint.with_name("last.pt.damaged"))
            if run.last_checkpoint.exists():
                os.replace(run.last_checkpoint, kept)
            atomic_write(run.last_checkpoint, lambda file: _copy(newest.path, file))
        else:
            kept = run.last_checkpoint.with_name("last.pt.damaged")
        say(
            f"resuming from the newest intact checkpoint, {_rel(run, newest.path)} "
            f"({newest.position}); the damaged last.pt is kept as {_rel(run, kept)} and the "
            "steps after that checkpoint are trained again"
        )
    if epochs is None and is_finished(run, state, config):
        summary = run.read_json("summary.json")
        acc = summary.get("final_test_acc")
        say(
            f"{run.path} is finished: {plural(state['epoch'], 'epoch')} of "
            f"{config.train.epochs} done"
            + (f", final test accuracy {acc:.2%}" if isinstance(acc, float) else "")
            + ". Nothing to do; to train it further, give the new total: "
            f"tinyvision train --resume {run.path} --epochs N"
        )
        return ResumePlan(config, finished=True)
    if epochs is not None and epochs == config.train.epochs and is_finished(run, state, config):
        say(f"{run.path} is finished: it has its {plural(epochs, 'epoch')}. Nothing to do.")
        return ResumePlan(config, finished=True)
    config = _with_epochs(run, config, epochs, done=state["epoch"], main=main)
    return ResumePlan(config)


def _with_epochs(
    run: RunFolder, config: Config, epochs: int | None, *, done: int, main: bool
) -> Config:
    """``config`` with ``train.epochs = epochs`` (written to the run's config.toml)."""
    if epochs is None or epochs == config.train.epochs:
        return config
    if epochs < done:
        raise TinyVisionError(
            f"--epochs {epochs} is fewer than the {plural(done, 'epoch')} {run.path} has already "
            f"trained: give at least {done} (a run is never cut back)"
        )
    old = config.train.epochs
    config = load_config(run.config_path, [f"train.epochs={epochs}"])
    if main:
        atomic_write_text(run.config_path, config.to_toml())
        print(
            f"{'extending' if epochs > old else 'shortening'} {run.path} from {old} to "
            f"{plural(epochs, 'epoch')} ({done} done): the learning-rate schedule is rebuilt for "
            f"{plural(epochs, 'epoch')}, the steps done kept (from the next step on the rate is "
            f"what a {epochs}-epoch schedule gives there)"
        )
    return config


def _copy(source: Path, file: Any) -> None:
    with source.open("rb") as src:
        shutil.copyfileobj(src, file)


def _free_name(path: Path) -> Path:
    """``path``, or ``path-1``, ``path-2``... if taken: an earlier damaged file is kept too."""
    n = 0
    while (candidate := path.with_name(path.name + (f"-{n}" if n else ""))).exists():
        n += 1
    return candidate


def _rel(run: RunFolder, path: Path) -> str:
    return str(path.relative_to(run.path))


def _what_is_left(run: RunFolder) -> str:
    names = sorted(
        str(p.relative_to(run.path))
        for p in run.path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name != LOCK_NAME
    )
    metrics = run.read_metrics() if (run.path / "metrics.jsonl").is_file() else []
    note = f" (metrics of epochs {metrics[0]['epoch']}-{metrics[-1]['epoch']})" if metrics else ""
    return ", ".join(names) + note


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def write_failure(err: WriteError) -> TinyVisionError:
    """The message for a write that failed during training: what failed, what is safe, what next.

    Files are written atomically, so a failed write never damages the file it replaces: the
    checkpoints on disk are those of the last successful save.
    """
    run_path = next((p for p in err.path.parents if (p / "config.toml").is_file()), None)
    if run_path is None:
        return err
    run = RunFolder(run_path)
    what = (
        f"the disk holding {run.path} is full (writing {_rel(run, err.path)})"
        if err.errno in (errno.ENOSPC, errno.EDQUOT)
        else f"cannot write {err.path} ({err.strerror})"
    )
    intact = [c for c in checkpoints_of(run) if c.state is not None]
    if intact:
        safe = (
            f"the checkpoint on disk is intact ({_rel(run, intact[0].path)}: "
            f"{intact[0].position}; the failed write did not touch it)"
        )
        fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        then = f"{fix}, then continue the run with:  tinyvision train --resume {run.path}"
    else:
        safe = "no checkpoint had been written yet"
        then = f"once that is fixed,  tinyvision train --resume {run.path}  starts it again"
    return TinyVisionError(f"{what}: {safe}.\n{then}")
