"""One results row per recipe from finished runs: test accuracy as mean +- std over seeds.

Runs that differ only in their seed (and in where or how they were executed: output folder,
threads, progress bars) are one recipe. For each recipe the script prints the row that
docs/results.md holds: mean +- sample standard deviation of the final test accuracy over the
seeds (each seed's figure beside it), the test-time-augmented accuracy where
``tinyvision evaluate`` wrote one, train accuracy, epochs, training time, parameters, hardware,
dates, and the command with its seeds. ``--curves FILE.png`` draws every seed's train and test
accuracy per epoch, one panel per recipe. ``--minutes FILE.png`` draws test accuracy against
minutes of training (each epoch's ``elapsed_seconds`` in metrics.jsonl), every recipe and seed
in one panel, with published figures as horizontal lines (``--anchor "MLP-Mixer port=90.2"``).

    python benchmarks/recipe_results.py runs/resmlp runs/densenet --curves docs/curves.png
    python benchmarks/recipe_results.py runs/cpu --minutes docs/minutes.png \
        --anchor "public MLP-Mixer port=90.2" --anchor "MLP 256-128-64=90.0"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _report import mean_std

from tinyvision.compare import BOOKKEEPING, RunRecord, find_runs

# Keys that do not change what is trained, beyond compare's bookkeeping: the seed is what the
# rows average over; model.name and train.epochs are compare's own columns, so not bookkeeping
# here.
NOT_THE_RECIPE = (BOOKKEEPING | {"train.seed", "train.report"}) - {"model.name", "train.epochs"}


def recipe_key(run: RunRecord) -> str:
    return json.dumps(
        {k: v for k, v in run.config.items() if k not in NOT_THE_RECIPE}, sort_keys=True
    )


def environment(run: RunRecord) -> dict:
    path = run.path / "environment.json"
    return json.loads(path.read_text()) if path.exists() else {}


def hardware(env: dict) -> str:
    if env.get("gpu"):
        return f"{env['gpu']}, torch {env.get('torch', '?')}"
    return (
        f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores), torch {env.get('torch', '?')}"
        f", {env.get('torch_threads', '?')} thread(s)"
    )


def command_template(env: dict) -> str:
    """The run's command as a user types it: the program's name, not its installed path, and
    the seed as a placeholder (the row lists the seeds)."""
    words = env.get("command", "?").split()
    words[0] = Path(words[0]).name
    command = re.sub(r"--seed \d+", "--seed SEED", " ".join(words))
    # benchmarks/run_recipes.py names each run <recipe>-seed<S>
    return re.sub(r"-seed\d+\b", "-seedSEED", command)


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def recipe_label(runs: list[RunRecord]) -> str:
    """The config file a recipe was trained from (its command's first argument), else its model,
    followed by the command's overrides that change what is trained (a static twin's
    ``model.num_kernels=1``), so two recipes from one config file keep apart."""
    words = environment(runs[0]).get("command", "").split()
    configs = [w for w in words if w.endswith(".toml")]
    label = Path(configs[0]).stem if configs else str(runs[0].config.get("model.name", "?"))
    overrides = [w.strip("'\"") for w in words if "=" in w and not w.startswith("-")]
    changes = [w for w in overrides if w.partition("=")[0] not in NOT_THE_RECIPE]
    return " ".join([label, *changes])


def distinct_labels(groups: list[list[RunRecord]]) -> list[str]:
    """``recipe_label`` of each group; where two groups share one (a config file edited between
    runs: the same command trained another recipe), each label names the settings that differ,
    up to three of them."""
    labels = [recipe_label(runs) for runs in groups]
    for label in {label for label in labels if labels.count(label) > 1}:
        same = [i for i, other in enumerate(labels) if other == label]
        configs = [groups[i][0].config for i in same]
        keys = sorted(
            {key for config in configs for key in config if key not in NOT_THE_RECIPE}
            - {key for key in configs[0] if all(c.get(key) == configs[0][key] for c in configs)}
        )
        for i, config in zip(same, configs, strict=True):
            shown = ", ".join(f"{key}={config.get(key)}" for key in keys[:3])
            labels[i] = f"{label} ({shown})"
    return labels


def threads_label(groups: list[list[RunRecord]]) -> str:
    """How many CPU threads the runs trained with, for an axis: minutes depend on it."""
    threads = {environment(run).get("torch_threads") for runs in groups for run in runs}
    if len(threads) != 1 or None in threads:
        return "mixed or unknown CPU threads"
    (count,) = threads
    return f"{count} CPU thread{'s' if count != 1 else ''}"


def recipe_row(runs: list[RunRecord], label: str) -> dict[str, str]:
    runs = sorted(runs, key=lambda r: r.config.get("train.seed", 0))
    envs = [environment(r) for r in runs]
    test = [r.summary["final_test_acc"] for r in runs]
    mean, std = mean_std(test)
    tta: dict[str, list[float]] = {}
    for run in runs:
        views = {}  # mode -> this run's test accuracy with those views
        if run.summary.get("final_test_acc_tta") is not None:  # the run's own (train.eval_tta)
            views[run.summary["eval_tta"]] = run.summary["final_test_acc_tta"]
        path = run.path / "evaluation.json"  # written by `tinyvision evaluate --tta MODE`
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                if key.startswith("test_acc_tta_"):
                    views[key.removeprefix("test_acc_tta_")] = value
        for mode, value in views.items():
            tta.setdefault(mode, []).append(value)
    seconds = [r.summary["train_seconds"] for r in runs]
    dates = sorted(e.get("date", "?")[:16].replace("T", " ") for e in envs)
    return {
        "recipe": label,
        "test accuracy": (
            f"**{pct(mean)} +- {pct(std)}** (n = {len(runs)}: "
            + ", ".join(pct(v) for v in test)
            + ")"
            if len(runs) > 1
            else f"**{pct(mean)}** (one seed: no spread measured)"
        ),
        "with TTA": "; ".join(
            f"{mode}: {pct(mean_std(v)[0])} (n = {len(v)})" for mode, v in tta.items()
        )
        or "—",
        "train accuracy": pct(mean_std([r.summary["final_train_acc"] for r in runs])[0]),
        "epochs": str(runs[0].summary["epochs"]),
        "training time": f"{mean_std(seconds)[0] / 60:.1f} min (mean"
        + (f"; each: {', '.join(f'{v / 60:.1f}' for v in seconds)})" if len(runs) > 1 else ")"),
        "parameters": f"{runs[0].summary['parameters']:,}",
        "hardware": hardware(envs[0]),
        "date (UTC)": f"{dates[0]} to {dates[-1]}" if len(dates) > 1 else dates[0],
        "command": f"`{command_template(envs[0])}`",
        "seeds": ", ".join(str(r.config.get("train.seed", 0)) for r in runs),
    }


def plot_curves(groups: list[list[RunRecord]], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, runs, label in zip(axes[0], groups, labels, strict=True):
        for run in sorted(runs, key=lambda r: r.config.get("train.seed", 0)):
            seed = run.config.get("train.seed", 0)
            # With train.eval_every > 1 only some epochs have a test accuracy; all have a train one.
            evaluated = [m for m in run.metrics if "test_acc" in m]
            (line,) = ax.plot(
                [m["epoch"] for m in evaluated], [100 * m["test_acc"] for m in evaluated]
            )
            line.set_label(f"test, seed {seed}")
            ax.plot(
                [m["epoch"] for m in run.metrics],
                [100 * m["train_acc"] for m in run.metrics],
                linestyle="--",
                color=line.get_color(),
                label=f"train, seed {seed}",
            )
        title = f"{label} on {runs[0].config.get('data.dataset')}"
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)  # long labels stay apart
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy (%)")
        later = [100 * m["test_acc"] for r in runs for m in r.metrics[1:] if "test_acc" in m]
        later = later or [0.0]
        ax.set_ylim(max(0.0, min(later) - 3), 100)  # the first epoch would squash the rest
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_minutes(
    groups: list[list[RunRecord]],
    labels: list[str],
    anchors: list[tuple[str, float]],
    path: Path,
) -> None:
    """Test accuracy against minutes of training: what a student with a laptop waits for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    lowest = 100.0
    for index, (runs, recipe) in enumerate(zip(groups, labels, strict=True)):
        color = f"C{index}"
        for n, run in enumerate(sorted(runs, key=lambda r: r.config.get("train.seed", 0))):
            rows = [m for m in run.metrics if "test_acc" in m]
            minutes = [m["elapsed_seconds"] / 60 for m in rows]
            accuracy = [100 * m["test_acc"] for m in rows]
            lowest = min(lowest, *accuracy[len(accuracy) // 4 :])  # the late part sets the scale
            label = f"{recipe} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
            ax.plot(minutes, accuracy, color=color, alpha=0.8, label=label if n == 0 else None)
    styles = ["--", ":", "-.", (0, (5, 5))] * 4
    for index, ((name, value), style) in enumerate(zip(anchors, styles, strict=False)):
        ax.axhline(value, color="grey", linestyle=style, linewidth=1)
        # Labels alternate between the left and the right end, so close figures stay legible.
        side = (
            {"xy": (0.01, value), "ha": "left"}
            if index % 2 == 0
            else {"xy": (0.99, value), "ha": "right"}
        )
        ax.annotate(
            name,
            **side,
            xycoords=ax.get_yaxis_transform(),
            xytext=(0, 2),
            textcoords="offset points",
            fontsize=7,
        )
        lowest = min(lowest, value)
    ax.set_xlabel(f"minutes of training ({threads_label(groups)})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(lowest - 1.5, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_anchor(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=PERCENT, e.g. 'MLP=90.0'")
    return name, float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders, or folders holding run folders")
    parser.add_argument("--curves", type=Path, help="write every recipe's curves to this PNG")
    parser.add_argument(
        "--minutes", type=Path, help="write test accuracy against training minutes to this PNG"
    )
    parser.add_argument(
        "--anchor",
        type=parse_anchor,
        action="append",
        default=[],
        help="a published figure drawn on --minutes as a line: NAME=PERCENT (repeatable)",
    )
    args = parser.parse_args()

    finished = [r for r in find_runs(args.runs) if r.finished]
    if not finished:
        parser.error("none of these runs has finished (no summary.json)")
    groups: dict[str, list[RunRecord]] = {}
    for run in finished:
        groups.setdefault(recipe_key(run), []).append(run)
    recipes = list(groups.values())
    labels = distinct_labels(recipes)
    rows = [recipe_row(runs, label) for runs, label in zip(recipes, labels, strict=True)]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |")
    if args.curves:
        plot_curves(recipes, labels, args.curves)
        print(f"\ncurves: {args.curves}")
    if args.minutes:
        plot_minutes(recipes, labels, args.anchor, args.minutes)
        print(f"\naccuracy against minutes: {args.minutes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
