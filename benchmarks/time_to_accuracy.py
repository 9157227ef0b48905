"""Time to accuracy on one GPU: tinyvision's recipes side by side with the fastest peers.

CIFAR-10 (``--tasks cifar``): the dynamic-convolution recipe (``configs/cifar10-dynconv.toml``,
trained by ``tinyvision.train``) against airbench's ``train94`` and ``train96`` (pip package
``airbench`` 0.1.8), all on the same data, in one run of this script, each ``--runs`` times,
round-robin so that drift in the GPU's clocks hits every contender alike. The data is a
``cifar-10-batches-py`` folder in the official python layout (``--cifar-dir``); it is read with
tinyvision's own reader and written once more as airbench's cache files ``cifar10/train.pt`` and
``cifar10/test.pt`` under ``--work-dir`` (airbench reads them from ``./cifar10``). A copy whose
checksums differ from the official files (the JPEG-75 copy) is accepted as a trusted local copy
(tinyvision's ``data.verify = false``) and every figure is labelled with what the copy says it
is, e.g. "CIFAR-10 (JPEG-75 copy)".

Reported per contender: mean test accuracy, mean time to finish, and for tinyvision the time at
which its run first reached airbench94's mean accuracy (from ``metrics.jsonl``: test accuracy is
evaluated after every epoch). Target: airbench94's accuracy in at most 1.5x airbench94's time.

Fashion-MNIST (``--tasks fmnist``): the Mixer recipe (``configs/fmnist-mixer.toml``): its time to
94.0% test accuracy, read from ``metrics.jsonl``. Target: at most 60 s.

What the times include:
- airbench: ``train94``/``train96`` called on a loader built beforehand (as airbench's own timing
  excludes loading), including its whitening initialisation, training and its final evaluation
  with test-time augmentation (the accuracy airbench reports); wall clock, CUDA synchronised.
- tinyvision: ``elapsed_seconds`` of its run: every epoch's training and test evaluation and the
  bookkeeping between epochs (checkpoint, metrics, curves), compilation included; loading the
  data from disk and the final report are not included.
- both after one untimed warm-up (``--no-warmup`` to skip): airbench's own ``warmup94/96`` (one
  step), and a 1-epoch tinyvision run of the same recipe (compilation caches are then warm).

    python benchmarks/time_to_accuracy.py --cifar-dir DIR --runs 3 --out results.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from _report import Report, mean_std

from tinyvision.config import load_config
from tinyvision.data import ImageDataset, load_dataset, sources
from tinyvision.data.formats import _ArrayUnpickler
from tinyvision.engine import train
from tinyvision.errors import TinyVisionError
from tinyvision.runs import RunFolder

ROOT = Path(__file__).resolve().parent.parent
AIRBENCH_VERSION = "0.1.8"  # the version whose API (train94/96, CifarLoader, hyp) this uses
CONTENDERS = ("airbench94", "airbench96", "tinyvision")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See docs/benchmarks.md for the one-command recipe on a GPU machine.",
    )
    add = parser.add_argument
    add("--tasks", default="cifar,fmnist", help="comma-separated: cifar, fmnist [%(default)s]")
    add("--runs", type=int, default=3, help="timed runs of each contender [%(default)s]")
    add("--cifar-dir", type=Path, help="cifar-10-batches-py folder, or the folder holding it")
    add(
        "--cifar-config",
        type=Path,
        default=ROOT / "configs/cifar10-dynconv.toml",
        help="tinyvision's CIFAR-10 recipe [%(default)s]",
    )
    add(
        "--contenders",
        default=",".join(CONTENDERS),
        help="comma-separated CIFAR-10 contenders [%(default)s]",
    )
    add("--time-factor", type=float, default=1.5, help="CIFAR target: at most this x airbench94")
    add(
        "--fmnist-config",
        type=Path,
        default=ROOT / "configs/fmnist-mixer.toml",
        help="tinyvision's Fashion-MNIST recipe [%(default)s]",
    )
    add("--fmnist-dir", type=Path, help="Fashion-MNIST folder [tinyvision's lookup order]")
    add("--fmnist-target", type=float, default=0.94, help="test accuracy to reach [%(default)s]")
    add("--fmnist-seconds", type=float, default=60.0, help="target time [%(default)s]")
    add("--fmnist-runs", type=int, help="timed runs of the Fashion-MNIST recipe [--runs]")
    add(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="tinyvision config override for both recipes (repeatable), e.g. train.epochs=1",
    )
    add("--seed", type=int, default=0, help="tinyvision seeds are seed + run index [%(default)s]")
    add("--no-warmup", action="store_true", help="skip the untimed warm-up runs")
    add(
        "--work-dir",
        type=Path,
        default=ROOT / "runs/bench-time-to-accuracy",
        help="airbench's data cache and tinyvision's run folders go here [%(default)s]",
    )
    add("--prepare-only", action="store_true", help="write airbench's cache files, then stop")
    add("--log", type=Path, help="append every finished run as a JSON line to FILE.jsonl")
    add("--out", type=Path, help="append the results to FILE.md")
    args = parser.parse_args()
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown or not set(args.tasks) <= {"cifar", "fmnist"}:
        parser.error(f"unknown contenders {unknown} or tasks {args.tasks}")
    if "cifar" in args.tasks and args.cifar_dir is None:
        parser.error("--tasks cifar needs --cifar-dir (a cifar-10-batches-py folder)")
    return args


# --- small helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """airbench reads ``./cifar10``: run it from the folder that holds the cache."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release_memory() -> None:
    """Between runs: free the GPU, and forget compiled graphs. Every run compiles its own model
    afresh (from inductor's on-disk cache once warm), so no run inherits another's graphs and
    many runs in one process never reach dynamo's recompile limit (past it, it runs eagerly)."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def toml_string(value: object) -> str:
    """A config override value as a TOML string (JSON's escaping is valid TOML here)."""
    return json.dumps(str(value))


def log_run(path: Path | None, record: dict[str, Any]) -> None:
    """One finished run per line, written at once: a run cut short still leaves these."""
    print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def first_reached(curve: list[tuple[float, float | None]], target: float) -> float | None:
    """Elapsed seconds at the first evaluation whose test accuracy is >= ``target``."""
    return next((t for t, acc in curve if acc is not None and acc >= target), None)


def fmt_mean(values: list[float], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    if not values:
        return "—"
    """``mean ± sd`` of ``values`` (times ``scale``), or the value alone for a single run."""
    mean, std = mean_std([v * scale for v in values])
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")
    return text + unit


# --- the data ---------------------------------------------------------------------------------


def official_copy(located: sources.Located) -> bool:
    """True if every file matches the published checksums of the original CIFAR-10."""
    info = sources.dataset_info("cifar10")
    if located.layout == "cifar-archive":
        expected = {sources.CIFAR_ARCHIVE: info.downloads[0].known_hash}
    else:
        expected = info.checksums
    for name, known in expected.items():
        algorithm, _, digest = known.partition(":")
        if hashlib.new(algorithm, located.files[name].read_bytes()).hexdigest() != digest:
            return False
    return True


def copy_label(located: sources.Located, official: bool) -> str:
    """What to call the data in every figure: the copy's own description when not official.

    The python layout's ``batch_label`` field says what a batch is ("training batch 1 of 5" in
    the original); a re-encoded copy notes itself there in parentheses, e.g. "(JPEG-75 copy)".
    """
    if official:
        return "CIFAR-10"
    note = ""
    if located.layout == "cifar-folder":
        raw = located.files[sources.CIFAR_TRAIN_BATCHES[0]].read_bytes()
        with contextlib.suppress(Exception):  # a label is a nicety: never fail the run on it
            batch = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
            label = batch.get("batch_label", batch.get(b"batch_label", ""))
            match = re.search(r"\(([^)]*)\)", str(label))
            note = match.group(1) if match else ""
    return f"CIFAR-10 ({note or 'unverified local copy'})"


def load_cifar(cifar_dir: Path) -> tuple[ImageDataset, str, bool]:
    """Read the folder with tinyvision's reader; say what the copy is."""
    info = sources.dataset_info("cifar10")
    located, why_not = sources.find_in(info, cifar_dir)
    if located is None:
        raise SystemExit(f"--cifar-dir {cifar_dir}: no CIFAR-10 there ({why_not})")
    official = official_copy(located)
    with warnings.catch_warnings():  # the figures carry the copy's label instead of a warning
        warnings.simplefilter("ignore", UserWarning)
        dataset = load_dataset(
            "cifar10", cifar_dir, download=False, verify=official, progress=False
        )
    return dataset, copy_label(located, official), official


def write_airbench_cache(dataset: ImageDataset, work_dir: Path) -> Path:
    """airbench's own cache format: dicts of uint8 [N, 32, 32, 3] images, int64 labels, classes.

    It is what airbench itself writes after reading torchvision's CIFAR10 (HWC uint8, as in the
    python batches), so airbench trains on exactly the pixels tinyvision trains on.
    """
    folder = work_dir / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        "train.pt": (dataset.train_images, dataset.train_labels),
        "test.pt": (dataset.test_images, dataset.test_labels),
    }
    for name, (images, labels) in splits.items():
        torch.save(
            {
                "images": images.permute(0, 2, 3, 1).contiguous(),  # [N, C, H, W] -> [N, H, W, C]
                "labels": labels.long(),
                "classes": list(dataset.classes),
            },
            folder / name,
        )
    return folder


# --- the contenders ---------------------------------------------------------------------------


def import_airbench() -> Any:
    try:
        import airbench
    except Exception as err:  # ImportError, or torchvision failing to load beside this torch
        raise SystemExit(
            f"airbench {AIRBENCH_VERSION} is needed for the CIFAR-10 comparison "
            f"({type(err).__name__}: {err}). Install it without touching torch: "
            f"pip install --no-deps airbench=={AIRBENCH_VERSION} (it needs torchvision too); "
            "offline, from the wheel: see docs/benchmarks.md"
        ) from err
    return airbench


def airbench_runner(name: str, work_dir: Path) -> tuple[Callable[[], dict], Callable[[], None]]:
    """(one timed run, the warm-up) of airbench's train94 or train96."""
    airbench = import_airbench()
    level = name.removeprefix("airbench")  # "94" or "96"
    lib = getattr(airbench, f"lib_airbench{level}")
    train_fn = getattr(lib, f"train{level}")
    hyp = lib.hyp

    def run_once() -> dict:
        with working_directory(work_dir):
            # The loader as train94/96 build it by default; built outside the timed region
            # because airbench's own timing excludes loading the data onto the GPU.
            loader = airbench.CifarLoader(
                "cifar10",
                train=True,
                batch_size=hyp["opt"]["batch_size"],
                aug=hyp["aug"],
                altflip=True,
            )
            test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
            synchronize()
            start = time.perf_counter()
            model = train_fn(loader, verbose=False)
            accuracy = airbench.evaluate(model, test_loader, tta_level=hyp["net"]["tta_level"])
            synchronize()
            seconds = time.perf_counter() - start
            plain = airbench.evaluate(model, test_loader, tta_level=0)  # untimed, for reference
        del model, loader, test_loader
        return {"test_acc": accuracy, "test_acc_no_tta": plain, "seconds": seconds}

    def warm_up() -> None:
        with working_directory(work_dir):
            train_fn(run=-1)  # airbench's warm-up: one step, prints one line

    return run_once, warm_up


def tinyvision_runner(
    config_path: Path, overrides: list[str], work_dir: Path
) -> tuple[Callable[[int], dict], Callable[[], None]]:
    """(one timed run with a seed, the warm-up) of a tinyvision recipe."""
    if not config_path.is_file():
        raise SystemExit(
            f"{config_path}: no such recipe yet. Pass the recipe with --cifar-config / "
            "--fmnist-config, or leave tinyvision out with --contenders"
        )
    base = [
        "train.progress=off",
        "train.eval_every=1",  # test accuracy after every epoch: the time-to-accuracy curve
        "train.report=false",  # the per-run report is not timed; skipping it saves GPU time
        f"train.out_dir={toml_string(work_dir / 'runs')}",
        *overrides,
    ]
    load_config(config_path, base)  # a bad override fails now, before any GPU time is spent

    def run_once(seed: int) -> dict:
        config = load_config(config_path, [*base, f"train.seed={seed}"])
        result = train(config)
        run = RunFolder(result.run_dir)
        rows = run.read_metrics()
        data = run.read_json("environment.json").get("data", {})
        curve = [(row["elapsed_seconds"], row.get("test_acc")) for row in rows]
        return {
            "test_acc": rows[-1]["test_acc"],
            "seconds": rows[-1]["elapsed_seconds"],
            "epochs": rows[-1]["epoch"],
            "seed": seed,
            "curve": curve,
            "run_dir": str(result.run_dir),
            "data_source": f"{data.get('location', '?')} ({data.get('integrity', '?')})",
            "config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest()[:12],
        }

    def warm_up() -> None:
        config = load_config(config_path, [*base, "train.epochs=1", "train.name=warmup"])
        train(config)

    return run_once, warm_up


# --- the two tasks ----------------------------------------------------------------------------


def cifar_task(args: argparse.Namespace, report: Report) -> None:
    dataset, label, official = load_cifar(args.cifar_dir)
    cache = write_airbench_cache(dataset, args.work_dir)
    print(f"{label}: {len(dataset.train_labels)} train / {len(dataset.test_labels)} test images")
    print(f"airbench cache written: {cache}/train.pt, test.pt")
    if args.prepare_only:
        return
    if not torch.cuda.is_available() and any(c.startswith("airbench") for c in args.contenders):
        raise SystemExit("airbench runs on CUDA only: run this on a GPU machine")
    integrity = dataset.source["integrity"]
    del dataset

    tinyvision_overrides = [
        f"data.data_dir={toml_string(args.cifar_dir.resolve())}",
        "data.download=false",
        f"data.verify={'true' if official else 'false'}",
        *args.overrides,
    ]
    runners: dict[str, tuple[Callable, Callable]] = {}
    for name in args.contenders:
        if name == "tinyvision":
            runners[name] = tinyvision_runner(
                args.cifar_config, tinyvision_overrides, args.work_dir / "cifar"
            )
        else:
            runners[name] = airbench_runner(name, args.work_dir)

    if not args.no_warmup:
        for name, (_, warm_up) in runners.items():
            print(f"warm-up: {name}", flush=True)
            warm_up()
            release_memory()
    results: dict[str, list[dict]] = {name: [] for name in runners}
    for run in range(args.runs):  # round-robin: run k of every contender, then run k + 1
        for name, (run_once, _) in runners.items():
            print(f"{label}: {name} run {run + 1}/{args.runs}", flush=True)
            record = run_once(args.seed + run) if name == "tinyvision" else run_once()
            record.update(task="cifar", contender=name, run=run + 1, data=label)
            log_run(args.log, record)
            results[name].append(record)
            release_memory()

    target_acc = target_time = None
    if results.get("airbench94"):
        target_acc = mean_std([r["test_acc"] for r in results["airbench94"]])[0]
        target_time = mean_std([r["seconds"] for r in results["airbench94"]])[0]
    rows = []
    for name, records in results.items():
        reach = "—"
        if name == "tinyvision" and target_acc is not None:
            times = [first_reached(r["curve"], target_acc) for r in records]
            reached = [t for t in times if t is not None]
            reach = f"{fmt_mean(reached)} ({len(reached)} of {len(records)} runs reached it)"
        accuracy = fmt_mean([r["test_acc"] for r in records], scale=100, digits=2, unit="%")
        if name.startswith("airbench"):
            no_tta = fmt_mean([r["test_acc_no_tta"] for r in records], 100, 2, "%")
            accuracy += f" (no TTA: {no_tta})"
        what = str(display(args.cifar_config)) if name == "tinyvision" else f"{name} (airbench)"
        rows.append(
            [what, str(len(records)), accuracy, fmt_mean([r["seconds"] for r in records]), reach]
        )

    report.context += [
        f"data: **{label}** from {args.cifar_dir} ({integrity}); airbench reads the same pixels "
        "from its cache files written by this script",
        f"tinyvision recipe {display(args.cifar_config)} (sha256 "
        f"{results.get('tinyvision', [{}])[0].get('config_sha256', '—')}), seeds "
        f"{args.seed}..{args.seed + args.runs - 1}; airbench unseeded (its "
        f"default); runs round-robin; warm-up {'skipped' if args.no_warmup else 'first'}",
    ]
    report.add_table(
        [
            f"contender ({label})",
            "runs",
            "test accuracy (mean ± sd)",
            "time to finish (s)",
            "time to airbench94's accuracy (s)",
        ],
        rows,
    )
    if target_acc is not None and "tinyvision" in results:
        limit = args.time_factor * target_time
        times = [first_reached(r["curve"], target_acc) for r in results["tinyvision"]]
        met = all(t is not None and t <= limit for t in times)
        report.add_note(
            f"Target: tinyvision reaches airbench94's accuracy ({target_acc:.2%}) in at most "
            f"{args.time_factor}x airbench94's time ({target_time:.1f} s), i.e. {limit:.1f} s, "
            f"in every run: **{'met' if met else 'not met'}**. airbench accuracies are with its "
            "test-time augmentation (as airbench reports them); tinyvision's time includes a "
            "test evaluation after every epoch, which airbench does not do."
        )


def fmnist_task(args: argparse.Namespace, report: Report) -> None:
    overrides = list(args.overrides)
    if args.fmnist_dir is not None:
        overrides.insert(0, f"data.data_dir={toml_string(args.fmnist_dir.resolve())}")
    run_once, warm_up = tinyvision_runner(args.fmnist_config, overrides, args.work_dir / "fmnist")
    if not args.no_warmup:
        print("warm-up: Fashion-MNIST recipe", flush=True)
        warm_up()
        release_memory()
    runs = args.fmnist_runs or args.runs
    records = []
    for run in range(runs):
        print(f"Fashion-MNIST: {display(args.fmnist_config)} run {run + 1}/{runs}", flush=True)
        record = run_once(args.seed + run)
        record.update(task="fmnist", contender="tinyvision", run=run + 1, data="Fashion-MNIST")
        log_run(args.log, record)
        records.append(record)
        release_memory()
    times = [first_reached(r["curve"], args.fmnist_target) for r in records]
    reached = [t for t in times if t is not None]
    met = len(reached) == len(records) and max(reached) <= args.fmnist_seconds
    report.add_table(
        [
            "recipe (Fashion-MNIST)",
            "runs",
            "final test accuracy",
            "time to finish (s)",
            f"time to {args.fmnist_target:.1%} (s)",
            f"target ≤ {args.fmnist_seconds:g} s",
        ],
        [
            [
                str(display(args.fmnist_config)),
                str(runs),
                fmt_mean([r["test_acc"] for r in records], scale=100, digits=2, unit="%"),
                fmt_mean([r["seconds"] for r in records]),
                f"{fmt_mean(reached)} ({len(reached)} of {runs} runs reached it)",
                "**met**" if met else "**not met**",
            ]
        ],
    )
    report.context.append(
        f"Fashion-MNIST from {records[0]['data_source']}; recipe {display(args.fmnist_config)} "
        f"(sha256 {records[0]['config_sha256']}), seeds {args.seed}..{args.seed + runs - 1}"
    )


def display(path: Path) -> Path:
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.work_dir = args.work_dir.resolve() / datetime.now().strftime("%Y%m%d-%H%M%S")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    versions = {}
    if "cifar" in args.tasks and any(c.startswith("airbench") for c in args.contenders):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions["airbench"] = version("airbench")
    report = Report("Time to accuracy", device, versions=versions)
    report.context.append(
        "time to finish: airbench = train + its final TTA evaluation (wall clock, loader built "
        "beforehand); tinyvision = metrics.jsonl elapsed_seconds of the last epoch (training, "
        "per-epoch test evaluation and bookkeeping, compilation included)"
    )
    try:
        if "cifar" in args.tasks:
            cifar_task(args, report)
        if "fmnist" in args.tasks and not args.prepare_only:
            fmnist_task(args, report)
    except TinyVisionError as err:
        raise SystemExit(f"tinyvision: {err}") from err
    if not args.prepare_only:
        report.emit(args.out)


if __name__ == "__main__":
    main()
