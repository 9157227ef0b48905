"""Real interruptions of a real training process: SIGKILL at random moments, and Ctrl-C (SIGINT).

Each trial starts ``python -m tinyvision train`` on the tiny data set, kills it with SIGKILL
after a seeded random delay (counted from the start of the training loop, or from the process's
first checkpoint, never from Python's start-up: see KILLS_PER_TRIAL), resumes it with
``--resume``, possibly kills it again, and finally lets it finish. The final
weights and metrics must equal those of an uninterrupted run with the same seed, bit for bit
(deterministic CPU settings, one thread), and the metrics files must list every epoch once.

Augmentation (translation, flips) and dropout are on and EMA is kept, so every random-number
stream and every piece of state has to survive the kill for the weights to match.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinyvision.config import load_config
from tinyvision.engine import train

# Small enough to keep the file well under two minutes on two busy cores, big enough that an
# epoch (40 steps, a checkpoint every 5) takes long enough for kills to land inside it.
SETTINGS = [
    "train.epochs=2",
    "train.deterministic=true",
    "train.threads=1",
    "train.checkpoint_every_steps=5",
    "train.progress=off",
    "train.report=false",  # the HTML report costs seconds a process and is not under test here
    "train.ema_decay=0.9",
    "data.batch_size=16",
    "data.eval_batch_size=320",
    "augment.flip=true",
    "augment.crop_padding=2",
    "model.name=mixer",
    "model.patch_size=7",
    "model.dim=16",
    "model.depth=2",
    "model.token_hidden=8",
    "model.channel_hidden=32",
    "model.dropout=0.1",
    "optim.lr=3e-3",
]
TIMING_KEYS = {"epoch_seconds", "elapsed_seconds"}  # wall-clock: the only columns that may differ
# The kills of each trial, in order. "anywhere": a random delay after the loop starts, up to
# MAX_DELAY (on a busy machine most of the loop's time goes to evaluation and figures between
# epochs, so these mostly land there). "mid-epoch": a random delay of up to a few steps after
# this process's first checkpoint, which is written mid-epoch: these land inside an epoch on a
# machine of any speed. Four kills in all, more where one lands before any checkpoint.
KILLS_PER_TRIAL = [["mid-epoch"], ["anywhere", "mid-epoch"], ["anywhere"]]
MAX_DELAY = 2.0  # seconds; an uninterrupted run's loop takes ~1.5-4 s here
AFTER_CHECKPOINT = 0.05  # seconds, a few steps of this tiny model
SEED = 7


def data_args(data_dir: Path, out: Path) -> list[str]:
    return [
        f'data.data_dir="{data_dir}"',
        "data.verify=false",
        "data.download=false",
        f'train.out_dir="{out}"',
    ]


@pytest.fixture(scope="module")
def reference(tiny_fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (in this process: same settings, so the same arithmetic)."""
    out = tmp_path_factory.mktemp("reference")
    return train(load_config(None, [*SETTINGS, *data_args(tiny_fashion_dir, out)])).run_dir


class Training:
    """One ``tinyvision train`` process, its output going to a log file we can poll."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tinyvision", "train", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
            )

    def wait_for_loop(self, timeout: float = 120.0) -> bool:
        """True once the loop has started ("training ..." printed); False if it exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith("training ") for line in self.log.read_text().splitlines()):
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.02)
        self.process.kill()
        raise AssertionError(f"training did not start within {timeout}s:\n{self.log.read_text()}")

    def finish(self, timeout: float = 300.0) -> int:
        return self.process.wait(timeout)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_same_result(run: Path, reference: Path) -> None:
    """model.pt bit for bit, every metric but wall-clock time, the loss curve, epochs once."""
    got = torch.load(run / "model.pt", weights_only=False)["model"]
    want = torch.load(reference / "model.pt", weights_only=False)["model"]
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    got_rows, want_rows = rows(run / "metrics.jsonl"), rows(reference / "metrics.jsonl")
    assert [r["epoch"] for r in got_rows] == [1, 2]  # no duplicated or missing epochs
    csv_epochs = [int(r["epoch"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert csv_epochs == [1, 2]
    for got_row, want_row in zip(got_rows, want_rows, strict=True):
        assert {k: v for k, v in got_row.items() if k not in TIMING_KEYS} == {
            k: v for k, v in want_row.items() if k not in TIMING_KEYS
        }
    assert (run / "steps.csv").read_text() == (reference / "steps.csv").read_text()
    assert not list(run.rglob("*.tmp")), "a temporary file was left in the run folder"


def checkpoint_version(run: Path | None) -> tuple[int, int] | None:
    """Identifies the file last.pt is now: each atomic write makes a new one."""
    if run is None or not (run / "checkpoints" / "last.pt").exists():
        return None
    stat = (run / "checkpoints" / "last.pt").stat()
    return stat.st_ino, stat.st_mtime_ns


def wait_for_new_checkpoint(run: Path, before: tuple[int, int] | None, training: Training) -> bool:
    """True once last.pt is written anew; False if the process ended first, which a resumed run
    does when its last checkpoint was the final step's (it only has model.pt left to write)."""
    deadline = time.monotonic() + 120
    while checkpoint_version(run) == before:
        if training.process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.002)
    return True


def where_it_stopped(run: Path) -> dict:
    """What the kill left on disk: the last checkpoint's position and the metrics rows."""
    last = run / "checkpoints" / "last.pt"
    if not last.exists():
        return {"checkpoint": None}
    state = torch.load(last, weights_only=False)["state"]  # loads: the write was atomic
    metrics = rows(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
    return {
        "checkpoint": {k: state[k] for k in ("epoch", "step_in_epoch", "global_step")},
        "metrics_epochs": [r["epoch"] for r in metrics],
        "temporaries": sorted(p.name for p in run.rglob("*.tmp")),
    }


def describe(stopped: dict) -> str:
    ckpt = stopped["checkpoint"]
    if ckpt is None:
        return "before the first checkpoint"
    if ckpt["step_in_epoch"]:
        where = f"mid-epoch {ckpt['epoch'] + 1} (step {ckpt['step_in_epoch']} of 40 saved)"
    elif ckpt["epoch"] == 2:
        where = "after the last epoch was saved, while writing model.pt"
    else:
        where = f"between epochs, after epoch {ckpt['epoch']} was saved"
    if len(stopped["metrics_epochs"]) < ckpt["epoch"]:
        where += ", before its metrics files were rewritten"
    return where


@pytest.mark.parametrize("trial", range(len(KILLS_PER_TRIAL)))
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(
    trial: int, reference: Path, tiny_fashion_dir: Path, tmp_path: Path, reliability
) -> None:
    rng = random.Random(SEED * 100 + trial)
    out = tmp_path / "runs"
    args = [*SETTINGS, *data_args(tiny_fashion_dir, out)]
    kills, run, starts = list(KILLS_PER_TRIAL[trial]), None, 0
    restarted_in = None
    while True:
        starts += 1
        assert starts <= 8, "too many restarts"
        before = checkpoint_version(run)
        training = Training(["--resume", str(run)] if run else args, tmp_path / f"log{starts}")
        started = training.wait_for_loop()
        if restarted_in is not None:
            log = training.log.read_text()
            assert "stopped before its first checkpoint: starting it again" in log
            restarted_in = None
        if run is None:
            (run,) = out.iterdir()
        if not started or not kills:
            rc = training.finish()
            assert rc == 0, training.log.read_text()
            break
        if kills[0] == "mid-epoch":
            checkpointed = wait_for_new_checkpoint(run, before, training)
            delay = rng.uniform(0.0, AFTER_CHECKPOINT)
            when = f"{delay:.2f}s after this process's first checkpoint"
            if not checkpointed:  # it finished (checked just below) without one: nothing to kill
                delay, when = 0.0, "after this process's first checkpoint (none: nothing left)"
        else:
            delay = rng.uniform(0.0, MAX_DELAY)
            when = f"{delay:.2f}s into the loop"
        time.sleep(delay)
        if training.process.poll() is not None:  # it finished before the kill: nothing to kill
            assert training.process.returncode == 0, training.log.read_text()
            reliability.record(
                "interruption",
                f"SIGKILL {when}",
                "the run had already finished: no kill",
                trial=trial,
            )
            break
        training.process.send_signal(signal.SIGKILL)
        assert training.finish() == -signal.SIGKILL
        stopped = where_it_stopped(run)
        landed = describe(stopped)
        if stopped["checkpoint"] is None:
            # Nothing to resume from: --resume starts the run again in its folder (the next
            # process, whose log must say so).
            reliability.record(
                "interruption",
                f"SIGKILL {when}",
                f"landed {landed}; --resume started it again from the beginning in the same folder",
                trial=trial,
            )
            restarted_in = run
            continue
        kills.pop(0)
        reliability.record(
            "interruption",
            f"SIGKILL {when}",
            f"landed {landed}; last.pt loadable; resumed with --resume",
            trial=trial,
            **stopped,
        )
    assert_same_result(run, reference)
    reliability.record(
        "interruption",
        f"trial {trial}: {len(KILLS_PER_TRIAL[trial])} SIGKILL(s), then resumed",
        "final model.pt identical bit for bit to the uninterrupted run; metrics equal (but for "
        "wall-clock times); steps.csv equal; metrics.jsonl/.csv list epochs 1 and 2 once each",
        trial=trial,
        processes=starts,
    )


def test_ctrl_c_saves_exits_130_with_the_resume_command_and_resumes_exactly(
    reference: Path, tiny_fashion_dir: Path, tmp_path: Path, reliability
) -> None:
    out = tmp_path / "runs"
    training = Training([*SETTINGS, *data_args(tiny_fashion_dir, out)], tmp_path / "log")
    assert training.wait_for_loop()
    (run,) = out.iterdir()
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 60
    while not last.exists():  # a checkpoint proves the loop (and its SIGINT handler) is running
        assert time.monotonic() < deadline and training.process.poll() is None
        time.sleep(0.01)
    training.process.send_signal(signal.SIGINT)
    assert training.finish() == 130
    log = training.log.read_text()
    assert f"Resume with:  tinyvision train --resume {run}" in log
    assert "Traceback" not in log
    saved = torch.load(last, weights_only=False)["state"]
    assert 0 < saved["global_step"] < 80 and saved["epoch"] == 0
    message = next(line for line in log.splitlines() if line.startswith("error: interrupted"))

    resumed = train(resume=run)  # what the printed command runs, in this process
    assert_same_result(resumed.run_dir, reference)
    reliability.record(
        "interruption",
        "SIGINT (Ctrl-C) once, during epoch 1",
        f"exit code 130, stderr: '{message}' + the resume command; resumed to a result "
        "identical bit for bit to the uninterrupted run",
        step=saved["global_step"],
    )
