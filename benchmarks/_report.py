"""What every benchmark script prints around its table: the context a figure needs to be read.

A benchmark figure without its hardware, versions, date, command line and (on a shared CPU) the
load from other processes cannot be compared with anything, so each script builds one
:class:`Report`, measures inside :class:`LoadMeter` and prints ``report.markdown()``; with
``--out FILE.md`` the same text is appended to a results file.
"""

from __future__ import annotations

import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from tinyvision.runs import cpu_name

# Others' average use of the CPU (in cores) above which a CPU figure is flagged as measured
# under load: a quarter of a core already slows a 2-thread run measurably.
LOADED_CORES = 0.25


def _cpu_busy_seconds() -> float | None:
    """CPU seconds spent busy on all cores since boot (from /proc/stat), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(value) for value in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children (compile workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class LoadMeter:
    """The machine's load around a measurement.

    The load average alone cannot tell others' work from ours (the 1-minute average after a
    2-thread run includes those 2 threads), so the meter also takes the CPU time spent by the
    whole machine (/proc/stat) minus this process's own: what is left is what other processes
    used while we measured, in cores on average.
    """

    before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    others_cores: float | None = None
    _start: tuple[float, float | None, float] = field(default=(0.0, None, 0.0), repr=False)

    def __enter__(self) -> LoadMeter:
        self.before = os.getloadavg()
        self._start = (time.perf_counter(), _cpu_busy_seconds(), _own_cpu_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, own0 = self._start
        wall, busy, own = time.perf_counter() - wall0, _cpu_busy_seconds(), _own_cpu_seconds()
        self.after = os.getloadavg()
        if busy0 is not None and busy is not None and wall > 0:
            self.others_cores = max(0.0, ((busy - busy0) - (own - own0)) / wall)

    @property
    def under_load(self) -> bool:
        return self.others_cores is None or self.others_cores > LOADED_CORES

    def describe(self) -> str:
        def fmt(load: tuple[float, float, float]) -> str:
            return " / ".join(f"{value:.2f}" for value in load)

        text = f"load average (1/5/15 min) before {fmt(self.before)}, after {fmt(self.after)}"
        if self.others_cores is None:
            return text + "; other processes' CPU use unknown (no /proc/stat)"
        text += (
            f"; other processes used {self.others_cores:.2f} of {os.cpu_count()} cores on "
            "average during the measurement"
        )
        if self.under_load:
            text += " -> **measured under load** (shared machine): CPU figures are pessimistic"
        return text


def git_commit() -> str:
    """The commit measured, with "+local changes" when the tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" +local changes" if dirty else "")


def hardware(device: torch.device) -> str:
    text = f"CPU {cpu_name()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    if device.type == "cuda":
        text = f"GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); " + text
    return text


@dataclass
class Report:
    """A titled results section: context lines, then Markdown tables and notes."""

    title: str
    device: torch.device
    versions: dict[str, str] = field(default_factory=dict)
    context: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    # Taken when the report is made, before measuring: the tree may change while a run lasts.
    date: str = field(default_factory=lambda: datetime.now().astimezone().isoformat("T", "seconds"))
    commit: str = field(default_factory=lambda: git_commit())

    def header_lines(self) -> list[str]:
        versions = {"python": platform.python_version(), "torch": torch.__version__}
        versions.update(self.versions)
        return [
            f"- hardware: {hardware(self.device)}",
            "- versions: " + ", ".join(f"{name} {value}" for name, value in versions.items()),
            f"- date: {self.date} (start)",
            f"- commit: {self.commit}",
            # orig_argv: the interpreter and its options too, exactly as typed.
            f"- command: `{shlex.join(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))}`",
            *(f"- {line}" for line in self.context),
        ]

    def add_table(self, columns: list[str], rows: list[list[str]]) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        self.body.append("\n".join(lines))

    def add_note(self, text: str) -> None:
        self.body.append(text)

    def markdown(self) -> str:
        parts = [f"### {self.title}", "\n".join(self.header_lines()), *self.body]
        return "\n\n".join(parts) + "\n"

    def emit(self, out: Path | None) -> None:
        """Print the section, and append it to ``out`` (a Markdown results file) if given."""
        text = self.markdown()
        print("\n" + text, flush=True)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as file:
                file.write("\n" + text)
            print(f"appended to {out}")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
