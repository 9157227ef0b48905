"""Train recipes seed by seed within a time budget, resuming what an earlier call left unfinished.

The GPU machine runs one command for at most 10 minutes, and a CPU user may have an afternoon:
either way a recipe x seeds queue outlives one sitting. This script walks the queue in order
(every seed of the first recipe, then the next recipe), and for each (recipe, seed):

- a finished run (its ``summary.json`` exists) is skipped;
- an unfinished run with a checkpoint is continued with ``tinyvision train --resume``;
- otherwise a new run starts, named ``<recipe>-seed<S>`` inside ``--runs-dir``.

When the budget runs out it sends the training process SIGINT, the Ctrl-C the engine turns into
"finish this step, save, exit 130", so the next call resumes exactly there; nothing is lost. A
run folder that an interrupt left without any checkpoint (stopped while reading the data or
compiling) is removed, as nothing in it can be resumed. ``--copy-to`` copies each run's small
files (config, metrics, summary, environment, curves, report) after every run, so that the
device's returned ``$OUT`` holds every figure even when the call is cut short.

    python benchmarks/run_recipes.py configs/fmnist-resmlp.toml --seeds 0 1 2 --runs-dir runs/r
    python benchmarks/run_recipes.py configs/fmnist-mixer.toml --seeds 0 1 2 --budget 540 \
        --runs-dir /tmp/recipes --copy-to $OUT/runs -- --data-dir .bench-data/fashion-mnist

Arguments after ``--`` go to every ``tinyvision train`` call that starts a run.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SMALL_FILES = (
    "config.toml",
    "environment.json",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
    "evaluation.json",
    "curves.png",
    "report.md",
    "per_class.json",
)
GRACE_SECONDS = 120  # after SIGINT: the step in flight, the checkpoint save, the exit


def find_run(runs_dir: Path, name: str) -> Path | None:
    """The newest run folder of ``name`` (run folders are ``<name>-<timestamp>``)."""
    found = sorted(runs_dir.glob(f"{name}-2*"))
    return found[-1] if found else None


def copy_small_files(run: Path, target: Path) -> None:
    destination = target / run.name
    destination.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (run / name).exists():
            shutil.copy2(run / name, destination / name)


def run_until(command: list[str], deadline: float) -> int:
    """Run ``command``; at ``deadline`` interrupt it as Ctrl-C does and wait for it to save."""
    print("+ " + " ".join(command), flush=True)
    process = subprocess.Popen(command)
    try:
        return process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        print("time budget spent: interrupting (the run saves and can be resumed)", flush=True)
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def report(name: str, code: int) -> None:
    if code in (130, -signal.SIGINT):  # -SIGINT: interrupted while Python was still starting
        print(f"{name}: interrupted and saved; the next call resumes it", flush=True)
    elif code != 0:
        print(f"{name}: tinyvision train exited with {code}; see its message above", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="+", type=Path, help="recipe files, trained in order")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/recipes"))
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for this call (default: no limit)"
    )
    parser.add_argument("--copy-to", type=Path, help="copy each run's small files here")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, train_args = parser.parse_args(argv[:split]), argv[split + 1 :]
    for config in args.configs:
        if not config.is_file():
            parser.error(f"{config} does not exist")

    deadline = time.monotonic() + (args.budget if args.budget else float("inf"))
    tinyvision = [sys.executable, "-m", "tinyvision", "train"]
    for config in args.configs:
        for seed in args.seeds:
            if time.monotonic() >= deadline:
                print("time budget spent; run this command again to go on", flush=True)
                return 0
            name = f"{config.stem}-seed{seed}"
            run = find_run(args.runs_dir, name)
            if run is not None and (run / "summary.json").exists():
                print(f"{name}: finished in {run}", flush=True)
            elif run is not None and (run / "checkpoints" / "last.pt").exists():
                report(name, run_until([*tinyvision, "--resume", str(run)], deadline))
            else:
                if run is not None:  # interrupted before its first checkpoint: nothing to resume
                    shutil.rmtree(run)
                code = run_until(
                    [
                        *tinyvision,
                        str(config),
                        "--seed",
                        str(seed),
                        "--out",
                        str(args.runs_dir),
                        f'train.name="{name}"',
                        *train_args,
                    ],
                    deadline,
                )
                report(name, code)
            run = find_run(args.runs_dir, name)
            if args.copy_to and run is not None:
                copy_small_files(run, args.copy_to)
    print("every recipe and seed has finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
