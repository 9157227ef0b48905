"""Hyperparameter sweeps on Optuna, scored on a validation split held out of the training data.

    tinyvision sweep CONFIG [section.key=value ...] --space SPACE.toml --trials N
                     [--storage URL] [--study-name NAME] [--out DIR] [--seed S] [--val-size N]

Every trial trains ``CONFIG`` (plus the overrides, which are fixed for every trial) with values
drawn from the search space, in its own run folder, and is scored on the *validation* split
(``data.val_size`` training images, held out with a seeded, stratified split). The test split
is never part of the score: tuning against it would leak the test set into the result (see
``objective_value``). Each epoch's validation accuracy is reported to Optuna, and a
``MedianPruner`` stops trials that fall below the median of earlier trials at the same epoch.

The search space is a TOML file of distributions over config keys (format and checks:
``sweep_space.py``).

Storage: ``sqlite:///<out>/study.db`` by default, or any SQLAlchemy URL (``--storage``). Workers
on several machines share one study by running the same command with the same storage and study
name (``postgresql+psycopg2://user:password@host/db``); each runs ``--trials`` trials.

The sweep folder (default ``<train.out_dir>/sweeps/<study name>``)::

    study.db              the Optuna study (default SQLite storage only)
    trials/trial-NNNN-*/  one run folder per trial (a normal run folder: config, metrics, curves)
    trials.csv, trials.md every trial: number, state, params, val_acc, epochs, time, run folder
    best.toml             the best trial's config with data.val_size = 0, for ``tinyvision train``
    history.png, intermediate.png, importances.png, slices.png   plots of the search
"""

from __future__ import annotations

import csv
import functools
import io
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tinyvision.config import Config, load_config, toml_value
from tinyvision.errors import ConfigError, TinyVisionError, TrainingError, TrainingInterrupted
from tinyvision.runs import atomic_write, atomic_write_text
from tinyvision.sweep_space import (
    SearchSpace,
    SweepSettings,
    load_space,
    overrides_for,
    param_problems,
)

try:
    import optuna
except ImportError as err:  # pragma: no cover - the optional `sweep` extra is not installed
    raise TinyVisionError(
        "sweeps need Optuna: pip install 'tinyvision[sweep]' (or pip install optuna)"
    ) from err

DEFAULT_VAL_FRACTION = 0.1  # of the training set, when neither the config nor --val-size sets it
TARGET = "validation accuracy"  # what the plots call the objective

# Settings that may differ between workers of one study without changing what a trial computes
# (where the data lives, which device, how many threads); all the others must match.
MACHINE_KEYS = {
    "data": {"data_dir", "download", "verify", "eval_batch_size"},
    "train": {"out_dir", "name", "device", "threads", "progress", "compile", "channels_last"},
}


# --- scoring --------------------------------------------------------------------------------


def objective_value(summary: dict[str, Any], objective: Literal["final", "best"]) -> float:
    """What a finished trial scores: validation accuracy, and only that.

    This is the one place a trial's score is read, and it reads the validation split held out
    of the training data. ``final_test_acc`` (the test split) is recorded in the trials table
    for information but never scores a trial: choosing hyperparameters by it would leak the
    test set into the reported result.
    """
    key = {"final": "final_val_acc", "best": "best_val_acc"}[objective]
    value = summary.get(key)
    if value is None:
        raise TrainingError("the trial has no validation accuracy: was data.val_size set to 0?")
    return float(value)


# --- the sweep ------------------------------------------------------------------------------


@dataclass
class SweepResult:
    out_dir: Path
    study_name: str
    storage: str  # the URL, password hidden
    rows: list[dict[str, Any]]  # the trials table
    best_number: int | None
    best_value: float | None
    best_config: Path | None  # best.toml, None while no trial has completed


class Sweep:
    """One worker of a study: builds the trials' configs, runs trials, writes the outputs."""

    def __init__(
        self,
        config_path: str | Path | None,
        space: SearchSpace,
        *,
        overrides: Sequence[str] = (),
        study_name: str,
        out_dir: Path,
        val_size: int,
    ) -> None:
        self.config_path = config_path
        self.space = space
        self.overrides = list(overrides)
        self.study_name = study_name
        self.out_dir = out_dir
        self.val_size = val_size
        # Set by the sweep for every trial; the params come before so these always win.
        self.fixed = [
            f"data.val_size={val_size}",
            f"train.out_dir={toml_value(str(out_dir / 'trials'))}",
            "train.report=false",  # the trials table is the sweep's report
        ]
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def config_for(self, values: dict[str, Any], trial_number: int | None = None) -> Config:
        extra = [] if trial_number is None else [f'train.name="trial-{trial_number:04d}"']
        return load_config(
            self.config_path, [*self.overrides, *overrides_for(values), *self.fixed, *extra]
        )

    def fingerprint(self) -> dict[str, Any]:
        """The base config every trial starts from, without machine-local settings: workers
        sharing a study must agree on it."""
        dumped = self.config_for({}).model_dump(mode="json")
        for section, keys in MACHINE_KEYS.items():
            for key in keys:
                dumped.get(section, {}).pop(key, None)
        return dumped

    # --- one trial --------------------------------------------------------------------------

    def objective(self, trial: optuna.Trial) -> float:
        from tinyvision.engine import train

        values = self.space.suggest(trial)
        trial.set_user_attr("worker", self.worker)
        started = time.perf_counter()
        rows: list[dict[str, Any]] = []

        def on_epoch(row: dict[str, Any]) -> None:
            if not rows:  # recorded at once, so a worker that dies still leaves the folder
                trial.set_user_attr("run_dir", str(self._run_dir(trial.number) or ""))
            rows.append(row)
            trial.set_user_attr("epochs", row["epoch"])
            if "val_acc" not in row:  # train.eval_every > 1: this epoch was not evaluated
                return
            trial.report(row["val_acc"], step=row["epoch"])  # validation only, never test
            # Pruning after the last epoch would save nothing and lose a finished data point.
            # (With [sweep] prune = false the pruner never prunes.)
            if row["epoch"] < config.train.epochs and trial.should_prune():
                raise optuna.TrialPruned(
                    f"val_acc {row['val_acc']:.4f} at epoch {row['epoch']} is below the median"
                )

        try:
            config = self.config_for(values, trial.number)  # before any on_epoch call
            result = train(config, on_epoch=on_epoch)
            value = objective_value(result.summary, self.space.sweep.objective)
        except (TrainingError, ValueError) as err:  # (optuna.TrialPruned passes through)
            # A diverged run or a combination of values the model refuses (say a patch size
            # that does not divide the image): this trial fails, the sweep goes on.
            trial.set_user_attr("error", str(err).splitlines()[0])
            raise
        finally:
            run_dir = self._run_dir(trial.number)
            trial.set_user_attr("run_dir", str(run_dir or ""))
            trial.set_user_attr("seconds", time.perf_counter() - started)
            if rows and "val_acc" in rows[-1]:
                trial.set_user_attr("val_acc", rows[-1]["val_acc"])
            if rows and "test_acc" in rows[-1]:
                trial.set_user_attr("test_acc", rows[-1]["test_acc"])  # for information only
        return value

    def _run_dir(self, number: int) -> Path | None:
        found = sorted((self.out_dir / "trials").glob(f"trial-{number:04d}-*"))
        return found[-1].resolve() if found else None

    # --- outputs ----------------------------------------------------------------------------

    def write_outputs(self, study: optuna.Study) -> tuple[list[dict[str, Any]], Path | None]:
        rows, columns = trials_table(study, self.space)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out_dir / "trials.csv", buffer.getvalue())
        atomic_write_text(self.out_dir / "trials.md", self.markdown(study, rows, columns))
        best_path = self.write_best(study)
        plot_search(study, self.out_dir)
        return rows, best_path

    def markdown(self, study: optuna.Study, rows: list[dict[str, Any]], columns: list[str]) -> str:
        shown = [c for c in columns if c != "best"]
        head = {"number": "#", "val_acc": "val acc", "test_acc": "test acc (info)"}
        lines = [
            f"# Sweep {self.study_name}",
            "",
            f"Scored on a validation split of {self.val_size} training images "
            f"({self.space.sweep.objective} epoch's val_acc). The test accuracy is shown for "
            "information only: it never scores or selects a trial.",
            "",
            "| " + " | ".join(head.get(c, c) for c in shown) + " |",
            "|" + "|".join("---" for _ in shown) + "|",
        ]
        for row in rows:
            cells = [_cell(c, row.get(c), self.out_dir) for c in shown]
            if row["best"]:
                cells[shown.index("state")] += " (best)"
            lines.append("| " + " | ".join(cells) + " |")
        best = _best_trial(study)
        if best is not None:
            lines += ["", f"Best: trial {best.number}, val acc {best.value:.2%}: best.toml"]
        return "\n".join(lines) + "\n"

    def write_best(self, study: optuna.Study) -> Path | None:
        """best.toml: the best trial's config, trained on the full training split."""
        best = _best_trial(study)
        path = self.out_dir / "best.toml"
        if best is None:
            return None
        values = self.space.decode(best.params)
        # The base config with the trial's values, its own out_dir and name (not the sweep's
        # trial folder), and no validation split: the final model trains on all the data.
        config = load_config(self.config_path, [*self.overrides, *overrides_for(values)])
        config.data.val_size = 0
        states = [t.state for t in study.get_trials(deepcopy=False)]
        counts = ", ".join(
            f"{states.count(state)} {state.name.lower()}"
            for state in optuna.trial.TrialState
            if states.count(state)
        )
        searched = "\n".join(f"#   {line}" for line in overrides_for(values))
        header = (
            f"# Best configuration of sweep {self.study_name!r}: trial {best.number} of "
            f"{len(states)} ({counts}),\n"
            f"# val_acc {best.value:.2%} ({self.space.sweep.objective} epoch) on {self.val_size} "
            "training images held out as a validation split.\n"
            f"# Searched values:\n{searched}\n"
            "# data.val_size is reset to 0 here, so the final model trains on the full training\n"
            "# split; its test accuracy, measured once at the end, is the result to report:\n"
            f"#   tinyvision train {path}\n\n"
        )
        atomic_write_text(path, header + config.to_toml())
        return path


def trials_table(study: optuna.Study, space: SearchSpace) -> tuple[list[dict[str, Any]], list[str]]:
    """Every trial of the study, whichever worker ran it: report 2's hand-made table."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    keys = list(space.params)
    keys += sorted({k for t in trials for k in t.params} - set(keys))
    best = _best_trial(study)
    rows = []
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            val_acc = t.value
        elif t.intermediate_values:  # pruned (or stopped): the last validation accuracy seen
            val_acc = t.intermediate_values[max(t.intermediate_values)]
        else:
            val_acc = None
        seconds = t.duration.total_seconds() if t.duration else t.user_attrs.get("seconds")
        note = t.user_attrs.get("error", "")
        if t.state == optuna.trial.TrialState.PRUNED:
            note = f"pruned after epoch {t.user_attrs.get('epochs', '?')}"
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "best": best is not None and t.number == best.number,
                **{key: t.params.get(key) for key in keys},
                "val_acc": val_acc,
                "epochs": t.user_attrs.get("epochs", 0),
                "seconds": seconds,
                "run_dir": t.user_attrs.get("run_dir", ""),
                "worker": t.user_attrs.get("worker", ""),
                "note": note,
                "test_acc": t.user_attrs.get("test_acc"),  # information only: never the score
            }
        )
    columns = ["number", "state", "best", *keys, "val_acc", "epochs", "seconds", "run_dir"]
    columns += ["worker"]
    return rows, [*columns, "note", "test_acc"]


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    # The highest validation score; ties go to the earliest trial, as in Optuna.
    return max(complete, key=lambda t: (t.value, -t.number), default=None)


def _cell(column: str, value: Any, out_dir: Path) -> str:
    if value is None or value == "":
        return ""
    if column in ("val_acc", "test_acc"):
        return f"{value:.2%}"
    if column == "seconds":
        return f"{value:.0f}s"
    if column == "run_dir":
        path = Path(value)
        return (
            str(path.relative_to(out_dir.resolve()))
            if path.is_relative_to(out_dir.resolve())
            else str(path)
        )
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def plot_search(study: optuna.Study, out_dir: Path) -> list[Path]:
    """PNG plots of the search with optuna.visualization.matplotlib (no plotly needed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as om

    complete = [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    plots: dict[str, Callable[[optuna.Study], Any]] = {}
    if complete:
        plots["history.png"] = functools.partial(om.plot_optimization_history, target_name=TARGET)
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots["intermediate.png"] = om.plot_intermediate_values  # per-epoch val_acc, pruning
    if len(complete) >= 2:  # one point per axis says nothing (and matplotlib warns)
        plots["slices.png"] = functools.partial(om.plot_slice, target_name=TARGET)
        plots["importances.png"] = functools.partial(om.plot_param_importances, target_name=TARGET)
    written = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except Exception as err:  # a plot is a bonus: it never costs the sweep its results
            # (e.g. importances when every finished trial drew the same values)
            print(f"plot {name} skipped: {err}")
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        if name == "intermediate.png":  # Optuna's generic "step" and "intermediate value"
            first.set(xlabel="epoch", ylabel=TARGET, title="Validation accuracy per epoch")
        figure = first.figure
        atomic_write(
            out_dir / name,
            lambda f, fig=figure: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"),
        )
        plt.close(figure)
        written.append(out_dir / name)
    return written


# --- storage --------------------------------------------------------------------------------


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database. Retries a few times: workers started together race to create the
    tables, and the loser of that race gets an integrity error that a retry resolves."""
    import sqlalchemy
    import sqlalchemy.exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(
            f"--storage {url!r} is not an SQLAlchemy URL such as sqlite:///study.db or "
            "postgresql+psycopg2://user:password@host/db"
        ) from None
    # Long trials leave connections idle; check each one before use rather than fail on it.
    engine_kwargs = {} if parsed.get_backend_name() == "sqlite" else {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # The heartbeat lets the other workers mark a dead worker's trial as failed.
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=180
                )
        except sqlalchemy.exc.ArgumentError as err:  # e.g. an unknown dialect or driver
            raise ConfigError(f"--storage {mask_url(url)}: {err}") from None
        except ImportError as err:
            raise ConfigError(
                f"no database driver for {parsed.drivername}: {err.__cause__ or err}. For "
                "PostgreSQL: pip install 'tinyvision[sweep]' (psycopg2-binary)"
            ) from None
        except sqlalchemy.exc.OperationalError as err:
            if attempt == 5:
                raise TinyVisionError(
                    f"cannot open the study storage {mask_url(url)}: {err.orig}"
                ) from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 5:
                raise
        time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def mask_url(url: str) -> str:
    import sqlalchemy

    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def default_val_size(config: Config) -> int:
    """10% of the training set (6000 images of Fashion-MNIST, 5000 of CIFAR-10)."""
    from tinyvision.data import load_dataset_for

    dataset = load_dataset_for(config.data, progress=True)
    return max(dataset.num_classes, round(DEFAULT_VAL_FRACTION * len(dataset.train_labels)))


def _check_study(study: optuna.Study, key: str, value: Any, what: str) -> None:
    """The first worker records ``value``; every later one must bring the same."""
    stored = study.user_attrs.get(key)
    if stored is None:
        study.set_user_attr(key, value)
        return
    if stored != value:
        differences = _differences(stored, value)
        raise ConfigError(
            f"study {study.study_name!r} was started with a different {what}"
            + (f" ({'; '.join(differences[:6])})" if differences else "")
            + ": start every worker with the same config, overrides and space, or give this "
            "search another --study-name"
        )


def _differences(there: Any, here: Any, prefix: str = "") -> list[str]:
    if isinstance(there, dict) and isinstance(here, dict):
        out = []
        for key in sorted(set(there) | set(here), key=str):
            out += _differences(there.get(key), here.get(key), f"{prefix}{key}.")
        return out
    if there != here:
        return [f"{prefix.rstrip('.')}: {there!r} there, {here!r} here"]
    return []


def run_sweep(
    config_path: str | Path | None,
    space: SearchSpace | str | Path,
    trials: int,
    *,
    overrides: Sequence[str] = (),
    storage: str | None = None,
    study_name: str | None = None,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    val_size: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> SweepResult:
    """Run ``trials`` trials of the study (0: only rewrite the table, best config and plots).

    ``seed`` seeds the sampler, for a reproducible search with one worker; leave it unset when
    several workers share a study, or they would all draw the same values. ``pruner`` replaces
    the MedianPruner that the space's ``[sweep]`` table configures.
    """
    if trials < 0:
        raise ConfigError(f"--trials must be 0 or more (got {trials})")
    base = load_config(config_path, overrides)
    if not study_name:  # the space file's name, by default
        study_name = "sweep" if isinstance(space, SearchSpace) else Path(space).stem
    space = _checked_space(space, config_path, overrides)
    if val_size is None:
        val_size = base.data.val_size or default_val_size(base)
    if val_size <= 0:
        raise ConfigError(
            "a sweep scores trials on a validation split held out of the training data, never "
            f"on the test split: --val-size must be positive (got {val_size})"
        )
    out = Path(out_dir) if out_dir is not None else base.train.out_dir / "sweeps" / study_name
    sweep = Sweep(
        config_path,
        space,
        overrides=overrides,
        study_name=study_name,
        out_dir=out,
        val_size=val_size,
    )
    sweep.config_for({})  # the base config with the sweep's own settings

    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = _open_study(url, study_name, space.sweep, seed, pruner)
    _check_study(study, "space", space.model_dump(mode="json"), "search space")
    _check_study(study, "val_size", val_size, "validation split size")
    _check_study(study, "base_config", sweep.fingerprint(), "base config")
    print(
        f"sweep {study_name!r}: {trials} trial(s) on this worker, storage {mask_url(url)}, "
        f"scored on {val_size} held-out training images; folder {out}",
        flush=True,
    )
    try:
        if trials:
            study.optimize(sweep.objective, n_trials=trials, catch=(TrainingError, ValueError))
    except TrainingInterrupted:  # Ctrl-C: the trial is marked failed; keep what was found
        sweep.write_outputs(study)
        raise
    rows, best_path = sweep.write_outputs(study)
    print((out / "trials.md").read_text(), flush=True)
    best = _best_trial(study)
    if best_path is not None:
        print(f"best config: {best_path}\ntrain it with:  tinyvision train {best_path}")
    else:
        print("no trial has completed yet: no best.toml")
    return SweepResult(
        out_dir=out,
        study_name=study_name,
        storage=mask_url(url),
        rows=rows,
        best_number=best.number if best is not None else None,
        best_value=best.value if best is not None else None,
        best_config=best_path,
    )


def _checked_space(
    space: SearchSpace | str | Path, config_path: str | Path | None, overrides: Sequence[str]
) -> SearchSpace:
    """The space, with every problem of its structure and its fit to the config reported at
    once, before anything is created."""
    check = functools.partial(param_problems, config_path, overrides)
    if not isinstance(space, SearchSpace):
        return load_space(space, check)
    if problems := [line for key, p in space.params.items() for line in check(key, p)]:
        raise ConfigError("the search space does not fit the config:\n" + "\n".join(problems))
    return space


def _open_study(
    url: str,
    study_name: str,
    settings: SweepSettings,
    seed: int | None,
    pruner: optuna.pruners.BasePruner | None,
) -> optuna.Study:
    """Create the study, or join it if another worker has (the same storage and name)."""
    if pruner is None:
        pruner = (
            optuna.pruners.MedianPruner(
                n_startup_trials=settings.prune_startup_trials,
                n_warmup_steps=settings.prune_warmup_epochs,
            )
            if settings.prune
            else optuna.pruners.NopPruner()
        )
    if settings.sampler == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # constant_liar: running trials count as bad guesses, so parallel workers spread out
            sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.create_study(
        storage=open_storage(url),
        study_name=study_name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,  # the first worker creates the study, the others join it
    )


__all__ = [
    "SearchSpace",
    "SweepResult",
    "load_space",
    "objective_value",
    "run_sweep",
    "trials_table",
]
