"""The quick recipe on this CPU: wall time to its final accuracy, and to a first milestone.

Trains the quick Fashion-MNIST recipe once on the CPU (``train.device = "cpu"``; everything
else as the recipe says) and reads its ``metrics.jsonl``:

- time to finish: ``elapsed_seconds`` of the last epoch (training, the test evaluations the
  recipe asks for, and the bookkeeping between epochs; loading the data from disk and writing
  the final report are not included; the whole call's wall clock is given beside it);
- time to first reach ``--milestone`` test accuracy (default 89%): ``elapsed_seconds`` of the
  first epoch whose test accuracy reaches it (only epochs where the recipe evaluates count);
- every epoch's seconds, and the bookkeeping between epochs (checkpoint, metrics, curves):
  ``elapsed_seconds`` minus the epochs' own seconds.

The machine is shared: the load average before and after, and the CPU time other processes
used during the run, are recorded with the figures; a figure measured under load says so.

    python benchmarks/cpu_quick_recipe.py --out results.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
from _report import LoadMeter, Report

from tinyvision.config import load_config
from tinyvision.engine import train
from tinyvision.runs import RunFolder

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "configs/fmnist-mixer-quick.toml",
        help="the recipe to time [%(default)s]",
    )
    parser.add_argument(
        "--milestone", type=float, default=0.89, help="test accuracy milestone [%(default)s]"
    )
    parser.add_argument("--seed", type=int, default=0, help="train.seed [%(default)s]")
    parser.add_argument(
        "--threads", type=int, default=0, help="train.threads; 0 = torch's default [%(default)s]"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override (repeatable), e.g. data.data_dir=DIR",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "runs/bench-cpu-quick",
        help="the run folder goes here [%(default)s]",
    )
    parser.add_argument("--out", type=Path, default=None, help="append the results to FILE.md")
    return parser.parse_args()


def display(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def file_digest(path: Path) -> str:
    """Short SHA-256 of the recipe file: pins which version of a changing recipe was timed."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main() -> None:
    args = parse_args()
    if not args.config.is_file():
        raise SystemExit(f"{args.config}: no such recipe; pass one with --config")
    overrides = [
        'train.device="cpu"',
        'train.progress="off"',
        f"train.seed={args.seed}",
        f"train.threads={args.threads}",
        f"train.out_dir={json.dumps(str(args.work_dir.resolve()))}",
        *args.overrides,
    ]
    config = load_config(args.config, overrides)
    digest = file_digest(args.config)  # now: the recipe may be edited while it trains
    report = Report(f"Quick recipe on the CPU: {display(args.config)}", torch.device("cpu"))

    with LoadMeter() as load:
        started = time.perf_counter()
        result = train(config)
        call_seconds = time.perf_counter() - started
    rows = RunFolder(result.run_dir).read_metrics()
    last = rows[-1]
    reached = next(
        (r for r in rows if r.get("test_acc") is not None and r["test_acc"] >= args.milestone),
        None,
    )
    epoch_seconds = [r["epoch_seconds"] for r in rows]
    bookkeeping = last["elapsed_seconds"] - sum(epoch_seconds)
    evaluated = [r["epoch"] for r in rows if r.get("test_acc") is not None]

    report.context += [
        load.describe(),
        f"recipe: {display(args.config)} (sha256 {digest}): "
        f"{config.model_name}, {config.train.epochs} epochs, batch "
        f"{config.data.batch_size}, seed {args.seed}; test accuracy evaluated after epochs "
        f"{', '.join(map(str, evaluated))}; run folder {result.run_dir}",
    ]
    milestone = (
        f"{reached['elapsed_seconds']:.1f} (epoch {reached['epoch']})"
        if reached
        else f"not reached (best {max(r.get('test_acc') or 0 for r in rows):.2%})"
    )
    report.add_table(
        [
            "final test accuracy",
            "time to finish (s)",
            f"time to {args.milestone:.0%} (s)",
            "seconds per epoch (min / median / max)",
            "bookkeeping between epochs (s, total)",
            "whole call (s)",
        ],
        [
            [
                f"{last['test_acc']:.2%}",
                f"{last['elapsed_seconds']:.1f}",
                milestone,
                " / ".join(
                    f"{v:.1f}"
                    for v in (
                        min(epoch_seconds),
                        sorted(epoch_seconds)[len(epoch_seconds) // 2],
                        max(epoch_seconds),
                    )
                ),
                f"{bookkeeping:.1f}",
                f"{call_seconds:.1f}",
            ]
        ],
    )
    report.add_note(
        "Per-epoch seconds: " + ", ".join(f"{s:.1f}" for s in epoch_seconds) + ". The whole call "
        "adds finding and reading the data and writing model.pt and the report."
    )
    report.emit(args.out)


if __name__ == "__main__":
    main()
