"""A pytest plugin that records the faults injected and bad inputs tried, with their outcomes.

Tests that exercise reliability take the ``reliability`` fixture and call
``reliability.record(area, case, outcome)`` with what they *observed* (the error message
they got, where a kill landed, whether the weights matched). When the test finishes, every
record it made is stamped with the test's own result (passed/failed), so a record never
claims an outcome that the test's assertions did not confirm.

At the end of the session the records are merged into ``test-artifacts/reliability.json``:
records of the tests that ran replace the earlier records of those tests, so running one test
file updates only its part. ``benchmarks/reliability_report.py`` renders that file as
``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

ARTIFACT = Path(__file__).resolve().parent.parent / "test-artifacts" / "reliability.json"


@dataclass
class Record:
    area: str  # "interruption", "data", "config", "numerics", "resources", "predict", ...
    case: str  # what was injected or tried, in words
    outcome: str  # what happened, as observed by the test
    test: str = ""  # the pytest node id that made the record
    result: str = "unknown"  # the test's own result: passed / failed / skipped
    details: dict[str, Any] = field(default_factory=dict)


class ReliabilityLog:
    """The session's records, and the nodes whose records are to be replaced."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.ran: set[str] = set()  # node ids that asked for the fixture in this session
        # Every test that ran (recording or not) -> result and seconds (all phases); those of
        # the files with recording tests are kept, for the document's table of times.
        self.tests: dict[str, dict[str, Any]] = {}
        self.started = datetime.now().astimezone()

    def recorder(self, nodeid: str) -> Recorder:
        self.ran.add(nodeid)
        return Recorder(self, nodeid)

    def stamp(self, nodeid: str, result: str, seconds: float) -> None:
        """Add one phase's time; ``result`` is "unknown" for phases that decide nothing."""
        test = self.tests.setdefault(nodeid, {"result": "unknown", "seconds": 0.0})
        test["seconds"] = round(test["seconds"] + seconds, 2)
        if result == "unknown" or test["result"] == "failed":
            return
        test["result"] = result
        for record in self.records:
            if record.test == nodeid and record.result != "failed":
                record.result = result


class Recorder:
    """What a test sees: ``record(area, case, outcome, **details)``."""

    def __init__(self, log: ReliabilityLog, nodeid: str) -> None:
        self._log = log
        self._nodeid = nodeid

    def record(self, area: str, case: str, outcome: str, **details: Any) -> None:
        self._log.records.append(Record(area, case, outcome, self._nodeid, details=details))


_LOG_KEY = pytest.StashKey[ReliabilityLog]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LOG_KEY] = ReliabilityLog()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Recorder:
    return request.config.stash[_LOG_KEY].recorder(request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    log = item.config.stash.get(_LOG_KEY, None)
    if log is not None:
        # A failure in set-up, the call or tear-down fails the records; "passed" needs the call.
        result = report.outcome if report.failed or report.when == "call" else "unknown"
        log.stamp(item.nodeid, result, report.duration)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    log = session.config.stash.get(_LOG_KEY, None)
    if log is None or not log.ran or hasattr(session.config, "workerinput"):
        return  # nothing recorded (or an xdist worker: the controller has no records either)
    previous: dict[str, Any] = {"records": [], "sessions": []}
    if ARTIFACT.is_file():
        with contextlib.suppress(json.JSONDecodeError):  # a damaged file is rebuilt
            previous = json.loads(ARTIFACT.read_text())
    session_id = log.started.isoformat(timespec="seconds")
    kept = [r for r in previous.get("records", []) if r.get("test") not in log.ran]
    records = kept + [{**asdict(r), "session": session_id} for r in log.records]
    files = {nodeid.split("::")[0] for nodeid in log.ran}
    ran = {k: v for k, v in log.tests.items() if k.split("::")[0] in files}
    tests = {k: v for k, v in previous.get("tests", {}).items() if k not in ran}
    tests.update({k: {**v, "session": session_id} for k, v in ran.items()})
    # A partial re-run keeps the older tests' records, each naming the session that made it.
    sessions = {s["id"]: s for s in previous.get("sessions", [])}
    sessions[session_id] = {
        "id": session_id,
        "command": " ".join(["python -m pytest", *sys.argv[1:]]),
        "machine": machine(),
        "commit": commit(),
        # Others' processes slow a shared machine: the times below are only as good as this.
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "seconds": round((datetime.now().astimezone() - log.started).total_seconds(), 1),
    }
    used = {t.get("session") for t in tests.values()}
    data = {
        "sessions": [s for k, s in sessions.items() if k in used],
        "tests": dict(sorted(tests.items())),
        "records": records,
    }
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    tmp = ARTIFACT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, ARTIFACT)


def commit() -> str:
    """The checked-out commit, "+ changes" when the tree differs from it."""
    root = ARTIFACT.parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + changes" if dirty.strip() else head or "unknown"


def machine() -> str:
    import torch

    from tinyvision.runs import cpu_name

    return (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )
