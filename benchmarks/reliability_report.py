"""Render docs/reliability.md from the records the reliability tests wrote.

The tests (tests/test_kill_resume.py, test_run_safety.py, test_bad_input.py, test_data.py,
test_config_fuzz.py, test_predict.py, test_export.py, test_compare.py) record every fault they
inject and every bad input they try, with the outcome they observed and their own pass/fail
result, into test-artifacts/reliability.json (see tests/reliability_log.py). This script only
formats that file; it adds no outcome of its own.

    .venv/bin/python -m pytest tests/test_kill_resume.py tests/test_run_safety.py \\
        tests/test_bad_input.py tests/test_data.py tests/test_config_fuzz.py \\
        tests/test_predict.py tests/test_export.py tests/test_compare.py
    .venv/bin/python benchmarks/reliability_report.py [--json FILE] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Areas in the order of the issue; an area not listed here is appended after them.
AREAS = {
    "interruption": "Interruptions: SIGKILL at random moments, Ctrl-C",
    "resume": "`--resume`: damaged checkpoints, finished, extended and never-checkpointed runs",
    "locking": "Two processes on one run folder",
    "disk": "Full disks and read-only folders",
    "data": "Data: missing, damaged, wrong-format files, checksums, downloads",
    "config": "Configs: unknown keys, wrong types, impossible values, models that do not fit",
    "config (property-based)": "Configs, property-based (Hypothesis)",
    "config file": "What is given as the config file",
    "data folder": "`--data-dir`, and where the data came from",
    "numerics": "Numerics: NaN and infinite losses, broken weights",
    "resources": "Resources: out of GPU memory",
    "predict": "`tinyvision predict`: image files of every kind",
    "cli": "What the command line says while it works",
    "export": "`tinyvision export`: ONNX against PyTorch",
}
HOW = {
    "interruption": "A real `python -m tinyvision train` process (tiny Mixer, augmentation, "
    "dropout and EMA on, `train.deterministic=true train.threads=1`, a checkpoint every 5 "
    "steps) is sent SIGKILL after a seeded random delay, counted from the start of its "
    "training loop (lands anywhere: mid-epoch, between epochs, while files are written) or "
    "from the process's first checkpoint (lands mid-epoch on a machine of any speed); it is "
    "resumed with `--resume`, possibly killed again, and finished; its `model.pt`, "
    "metrics and loss curve are compared with an uninterrupted run of the same seed. Where a "
    "kill landed is read from the checkpoint it left.",
    "resume": "A tiny 2-epoch run (10 steps an epoch, a checkpoint every 4 steps), finished or "
    "stopped after its first epoch, is copied, damaged (checkpoints truncated or emptied) and "
    "resumed through the CLI (`tinyvision.cli.main`).",
    "locking": "Two real `python -m tinyvision` processes: the first trains, the second is "
    "started with `--resume` on the same folder; then the first is sent SIGKILL and the folder "
    "is locked again. The lock is `fcntl.flock` on `RUN/train.lock` (see `lock.py`).",
    "disk": "The failing write is injected where every run file is written "
    "(`runs.atomic_write`): its `os` and `tempfile` are replaced by ones that raise the "
    "operating system's own error (ENOSPC, EROFS) at the chosen file, so `torch.save` and "
    "matplotlib meet it as on a real full disk. The run is then resumed with the fault gone.",
    "config file": "Through the CLI (`tinyvision.cli.main`); for the defaults, training itself "
    "is replaced by a stand-in that records the config it was given.",
    "data folder": "The named folder is missing or empty while a complete copy sits in a "
    "system folder that must not be used instead; through `load_dataset` and the CLI.",
    "cli": "Through `tinyvision.cli.main` or a training in the test's process, its output "
    "captured (not a terminal).",
    "data": "Copies of the tiny data set are damaged and trained on through `train()`; the "
    "run folder must not exist afterwards. Downloads come from a local HTTP server that cuts "
    "the connection half-way through the first file.",
    "config": "Each config goes through `train()`; the run folder must not exist afterwards.",
    "config (property-based)": "Hypothesis builds configs from the real schema (every section "
    "and every model family's `Config`): half keep to values a careful user might write, half "
    "also use zeros, negatives, NaN, infinities, unknown choices, wrong types, misspelt keys "
    "and non-table sections. Each must train one epoch of a 96-image set or raise a "
    "`TinyVisionError` (before a run folder exists, unless it is a numerical blow-up); any "
    "other exception fails the test. Derandomized, so every run tries the same configs.",
    "numerics": "The fault is injected in-process at a chosen step (a forward hook replacing "
    "the logits, or an optimizer step hook writing NaN into a weight), with a checkpoint every "
    "3 steps.",
    "resources": "The model's forward pass raises `torch.cuda.OutOfMemoryError` (no GPU is "
    "needed to check the handling).",
    "predict": "Image files are written with Pillow and read back as the model's input; the "
    "bad ones go through the CLI (`tinyvision.cli.main`).",
    "export": "Each family trains one epoch on the tiny data set, is exported, and onnxruntime "
    "runs the file on batches of 1 and 7 test images (the export traced a batch of 2).",
}


def short_paths(text: str) -> str:
    """pytest's temporary folders are noise in a document: keep the last part of each path."""
    text = re.sub(r"/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s']+", "…", text)
    return re.sub(r"(…/)?(runs/)?fashion-mnist-[\w-]+?-\d{8}-\d{6}(-\d+)?", "RUN", text)


def cell(text: Any) -> str:
    return short_paths(str(text)).replace("|", "\\|").replace("\n", " ")


def render(data: dict[str, Any]) -> str:
    records = data["records"]
    tests = data.get("tests", {})
    sessions = {s["id"]: s for s in data.get("sessions", [])}
    by_area: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_area[record["area"]].append(record)
    areas = [a for a in AREAS if a in by_area] + sorted(set(by_area) - set(AREAS))

    out = ["# Reliability: faults injected and bad inputs tried", ""]
    out += [
        "Generated by `benchmarks/reliability_report.py` from `test-artifacts/reliability.json`, "
        "which the tests write as they run (`tests/reliability_log.py`): every row is a case a "
        "test tried, the outcome it observed, and that test's own result. Do not edit by hand; "
        "regenerate with the commands in the script's docstring.",
        "",
        "## Where and when",
        "",
    ]
    for session in sessions.values():
        out += [
            f"- **{session['id']}** on {session['machine']}; commit {session.get('commit', '?')}; "
            f"{session.get('seconds', '?')} s; 1-minute load average at the end "
            f"{session.get('load_average_1min_at_end', '?')}",
            f"  command: `{session['command']}`",
        ]
    failed = [r for r in records if r["result"] != "passed"]
    out += ["", "## Summary", ""]
    out += ["| area | cases | passed | not passed |", "|---|--:|--:|--:|"]
    for area in areas:
        rows = by_area[area]
        ok = sum(r["result"] == "passed" for r in rows)
        out.append(f"| {AREAS.get(area, area)} | {len(rows)} | {ok} | {len(rows) - ok} |")
    out.append(
        f"| **all** | **{len(records)}** | **{len(records) - len(failed)}** | **{len(failed)}** |"
    )
    out += [
        "",
        "A case counts as passed when the test that tried it passed: the outcome "
        "column is then what its assertions confirmed.",
    ]

    for area in areas:
        out += ["", f"## {AREAS.get(area, area)}", ""]
        if area in HOW:
            out += [HOW[area], ""]
        out += ["| # | case | outcome | result |", "|--:|---|---|---|"]
        for i, record in enumerate(by_area[area], 1):
            out.append(
                f"| {i} | {cell(record['case'])} | {cell(record['outcome'])} | {record['result']} |"
            )
        messages = Counter()
        for record in by_area[area]:
            messages.update(record.get("details", {}).get("messages", {}))
        if messages:
            out += ["", "Errors the generated configs met (first problem line, count):", ""]
            out += [f"- {n} x {cell(m)}" for m, n in messages.most_common()]

    out += ["", "## Tests and times", ""]
    out += ["| test file | tests | passed | seconds |", "|---|--:|--:|--:|"]
    files: dict[str, list[dict]] = defaultdict(list)
    for nodeid, test in tests.items():
        files[nodeid.split("::")[0]].append(test)
    for name, rows in sorted(files.items()):
        seconds = sum(t["seconds"] for t in rows)
        passed = sum(t["result"] == "passed" for t in rows)
        out.append(f"| `{name}` | {len(rows)} | {passed} | {seconds:.1f} |")
    out += [
        "",
        "Seconds include set-up (training the tiny runs the tests share); on a shared "
        "machine they grow with the load shown above.",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "test-artifacts" / "reliability.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args()
    if not args.json.is_file():
        raise SystemExit(
            f"{args.json} does not exist: run the reliability tests first "
            "(see this script's docstring)"
        )
    args.out.write_text(render(json.loads(args.json.read_text())))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
