"""One writer per run folder: an advisory lock that a training holds from start to end.

Two processes training one folder (a ``--resume`` while the run is still going, say) would
write each other's checkpoints and metrics. The lock is ``fcntl.flock`` on ``RUN/train.lock``:
the kernel drops it when its process ends however it ends (SIGKILL included), so a killed
run never leaves a stale lock, and the file itself may stay. The file names the holder (PID,
host, start time) for the message a second writer gets.

Locks taken inside ``holding_locks()`` are released when it exits: ``train()`` wraps each
training in one, so a process can train, then resume the same folder, many times over.
Where ``fcntl`` does not exist (Windows) runs are not locked.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from tinyvision.errors import RunInUse, WriteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = "train.lock"


class RunLock:
    """The lock of one run folder, held by this process until ``release()``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:  # a read-only run folder cannot be trained in
            raise WriteError(self.path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 400).decode(errors="replace").strip()
            os.close(fd)
            pid, _, rest = holder.partition(" ")
            who = f"process {pid} ({rest})" if pid else "another process"
            raise RunInUse(
                f"{self.path.parent} is in use: {who} is training in it. Wait for it to "
                f"finish or stop it (kill {pid or 'PID'}), then run this again"
            ) from None
        # The holder's name, for whoever is refused; the flock, not this text, is the lock.
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


_held: list[RunLock] = []
_depth = 0  # how many holding_locks() blocks are open


def lock_if_training(run_dir: Path) -> None:
    """Lock ``run_dir`` when inside ``holding_locks()`` (a training); a folder made outside
    one (by a tool or a test) is left unlocked, as nothing would release its lock."""
    if _depth:
        lock_run(run_dir)


def lock_run(run_dir: Path) -> RunLock:
    """Lock ``run_dir`` for this process (``RunInUse`` if another holds it)."""
    lock = RunLock(run_dir)
    lock.acquire()
    _held.append(lock)
    return lock


@contextlib.contextmanager
def holding_locks() -> Iterator[None]:
    """Release every lock taken inside the block when it ends, by return or by exception."""
    global _depth
    start = len(_held)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        while len(_held) > start:
            _held.pop().release()
