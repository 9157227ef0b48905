"""The run folder: everything a run produces, one folder per run, never overwritten.

    runs/<name>-<timestamp>/
        config.toml          the resolved config: every hyperparameter, defaults included
        environment.json     versions, hardware, device, data source and integrity check
        metrics.jsonl/.csv   one row per epoch: train/val/test loss and accuracy, lr, time
                             (train_loss is the objective, train_ce its plain cross-entropy)
        steps.csv            the training loss every few steps (the fine-grained loss curve)
        curves.png           loss curve and training/test accuracy curves
        checkpoints/         last.pt and best.pt (full training state, for --resume)
        model.pt             the final weights with what is needed to rebuild the model
        summary.json         final accuracies, parameters, wall time
        train.lock           the lock a training holds on the folder (see lock.py)

Files are written atomically (temporary file, flush, fsync, rename): a crash leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from tinyvision.config import Config, load_config
from tinyvision.errors import TinyVisionError, WriteError
from tinyvision.lock import lock_if_training

METRIC_COLUMNS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_ce",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "epoch_seconds",
    "elapsed_seconds",
]


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it in place.

    A failure of the file system (disk full, read-only folder) raises ``WriteError`` naming
    ``path``, with the previous version of ``path`` untouched and no temporary file left.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(path, err) from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; keep the user's usual mode
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = os_error_in(err)
        if cause is not None:
            raise WriteError(path, cause) from None
        raise


def os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch.save wraps a failed write in a RuntimeError ("enforce
    fail at inline_container.cc") whose chain holds the real cause."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode()))


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, config: Config) -> RunFolder:
        """A new, unique folder under ``train.out_dir`` holding the resolved config."""
        name = config.train.name or f"{config.data.dataset}-{config.model_name}"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        root = config.train.out_dir
        for attempt in range(1000):
            path = root / (f"{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
            try:
                root.mkdir(parents=True, exist_ok=True)
                path.mkdir()  # fails if it exists: a run never overwrites another
                break
            except FileExistsError:
                continue
            except OSError as err:
                raise WriteError(path, err) from None
        # Locked before config.toml exists: no --resume can take the folder from under us.
        lock_if_training(path)
        run = cls(path)
        atomic_write_text(run.config_path, config.to_toml())
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise TinyVisionError(f"{path} is not a tinyvision run folder (no config.toml in it)")
        return cls(path)

    # --- paths -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    def load_config(self) -> Config:
        return load_config(self.config_path)

    # --- metrics -----------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite both metrics files from ``rows`` (the checkpoint's copy is the truth).

        Rewriting, rather than appending, is what keeps the files free of duplicated or missing
        epochs when a run is killed between a checkpoint and the next append and then resumed.
        """
        atomic_write_text(
            self.path / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows)
        )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def write_steps(self, steps: list[tuple[int, float, float]]) -> None:
        lines = ["step,epoch,train_loss"] + [f"{s},{e:.4f},{loss:.6g}" for s, e, loss in steps]
        atomic_write_text(self.path / "steps.csv", "\n".join(lines) + "\n")

    def read_steps(self) -> list[tuple[int, float, float]]:
        path = self.path / "steps.csv"
        if not path.exists():
            return []
        rows = list(csv.DictReader(path.read_text().splitlines()))
        return [(int(r["step"]), float(r["epoch"]), float(r["train_loss"])) for r in rows]

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        atomic_write_text(self.path / name, json.dumps(data, indent=2, default=str) + "\n")

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads((self.path / name).read_text())

    # --- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        atomic_write(path, lambda file: torch.save(state, file))

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files of writes cut short by a kill (see ``atomic_write``).

        Only for a run no process is writing to, such as one about to be resumed: the files
        themselves are never half-written, but a SIGKILL during a write leaves its temporary.
        """
        stale = [path for path in self.path.rglob(".*.tmp") if path.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale


def environment(device: torch.device, data_source: dict[str, str]) -> dict[str, Any]:
    """What produced a run: versions, hardware, device, data."""
    import numpy

    info: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "data": data_source,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def command_line() -> str:
    """This process's command as a user would type it again: ``tinyvision ...`` for the console
    script, ``python -m tinyvision ...`` for the module, quoted for a POSIX shell."""
    program = Path(sys.argv[0])
    if program.name == "__main__.py" and program.parent.name == "tinyvision":
        words = ["python", "-m", "tinyvision"]
    elif program.name == "tinyvision":
        words = ["tinyvision"]
    else:
        words = [sys.argv[0]]
    return shlex.join([*words, *sys.argv[1:]])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_duration(seconds: float, *, compact: bool = False) -> str:
    """A duration for people: ``42.0 s``, ``1 min 05 s``, ``2 h 03 min``; ``compact`` writes
    ``42.0s``, ``1m05s``, ``2h03m`` for narrow table columns."""
    units = ("s", "m", "h") if compact else (" s", " min ", " h ")
    if seconds < 60:
        return f"{seconds:.1f}{units[0]}"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}{units[1]}{secs:02d}{units[0]}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}{units[2]}{minutes:02d}{units[1].rstrip()}"
