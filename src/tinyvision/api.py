"""The Python API: what the command line does, from a script or a notebook.

    import tinyvision

    run = tinyvision.train("configs/fmnist-resmlp-brief.toml", {"train.epochs": 3})
    run.path                    # the run folder (the same one `tinyvision train` writes)
    run.metrics                 # one row per epoch, as in metrics.jsonl (a Table: a list of dicts)
    run.summary["final_test_acc"]
    run.model                   # the trained model, from model.pt, in eval mode on the CPU
    run.report()                # the path of report.html (written if missing)

    run = tinyvision.load_run("runs/fashion-mnist-resmlp_brief-20261203-101500")
    tinyvision.compare_runs([run_a, run_b]).to_text()   # settings that differ, and results

    @tinyvision.register_model("tiny_cnn", width=16)     # reachable by name everywhere
    class TinyCNN(nn.Module): ...

Every function here is a thin layer over the modules that do the work (``config``, ``engine``,
``runs``, ``evaluate``, ``report``, ``compare``, ``models``): a run trained from Python is the
same run folder, with the same files (the report too), as one trained from the command line.
"""

from __future__ import annotations

import copy
import functools
import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from tinyvision.config import Config, _apply_override, load_config, toml_value, validate_config
from tinyvision.errors import TinyVisionError
from tinyvision.runs import RunFolder

__all__ = ["Run", "Table", "compare_runs", "load_run", "register_model", "train"]

Overrides = Sequence[str] | Mapping[str, Any]
F = TypeVar("F", bound=type[nn.Module])


class Table(list):
    """Rows of a table as a plain list of dicts, shown as a table in notebooks and terminals.

    A list, so it indexes, slices and loops like one; ``to_pandas()`` turns it into a DataFrame
    when pandas is installed (tinyvision itself does not need pandas).
    """

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(key for row in self for key in row))

    def column(self, name: str) -> list[Any]:
        """One column's values, ``None`` where a row lacks it (test metrics every N epochs)."""
        return [row.get(name) for row in self]

    def to_pandas(self) -> Any:
        try:
            import pandas
        except ImportError:
            raise TinyVisionError("Table.to_pandas() needs pandas: pip install pandas") from None
        return pandas.DataFrame(list(self), columns=self.columns)

    def _cells(self) -> list[list[str]]:
        return [[_cell(row.get(c)) for c in self.columns] for row in self]

    def __str__(self) -> str:
        columns, rows = self.columns, self._cells()
        widths = [max(len(x) for x in [c, *(r[i] for r in rows)]) for i, c in enumerate(columns)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

        return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])

    def _repr_html_(self) -> str:  # Jupyter shows this instead of the list's repr
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self._cells()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class Run:
    """One run folder, read lazily: nothing is loaded until it is asked for."""

    def __init__(self, path: str | Path) -> None:
        self._folder = RunFolder.open(path)  # refuses a folder without config.toml
        self.path = self._folder.path

    def __repr__(self) -> str:
        acc = self.summary.get("final_test_acc")
        result = f"test acc {acc:.2%}" if acc is not None else "unfinished"
        return f"Run({str(self.path)!r}, {result})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Config:
        """The resolved config the run was trained with (every hyperparameter, defaults too)."""
        return self._folder.load_config()

    @property
    def hyperparameters(self) -> Table:
        """Every setting of the resolved config as ``setting`` / ``value`` rows."""
        raw = self.config.model_dump(mode="json", exclude_none=True)
        return Table(
            {"setting": f"{section}.{key}", "value": value}
            for section, values in raw.items()
            for key, value in values.items()
        )

    @property
    def metrics(self) -> Table:
        """One row per epoch, as in ``metrics.jsonl`` (read again at each access)."""
        return Table(self._folder.read_metrics())

    @property
    def steps(self) -> Table:
        """The training loss every few steps, as in ``steps.csv``."""
        return Table(
            {"step": step, "epoch": epoch, "train_loss": loss}
            for step, epoch, loss in self._folder.read_steps()
        )

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json``: final accuracies, parameters, time; ``{}`` while unfinished."""
        if not (self.path / "summary.json").exists():
            return {}
        return self._folder.read_json("summary.json")

    @property
    def finished(self) -> bool:
        return bool(self.summary)

    @functools.cached_property
    def model(self) -> nn.Module:
        """The trained model, rebuilt from ``model.pt`` alone, in eval mode on the CPU."""
        from tinyvision.evaluate import load_saved_model

        model, _ = load_saved_model(self._folder)
        return model

    def report(self, *, rewrite: bool = False, device: str | None = None) -> Path:
        """The path of ``report.html``, written first if it is missing (or if ``rewrite``)."""
        path = self.path / "report.html"
        if rewrite or not path.exists():
            from tinyvision.report import write_report

            path = write_report(self._folder, device=device)
        return path

    def evaluate(self, tta: str = "flip", device: str | None = None) -> dict[str, Any]:
        """Test accuracy of the saved model, plain and with test-time augmentation."""
        from tinyvision.evaluate import evaluate_run

        return evaluate_run(self._folder, tta=tta, device=device)


def make_config(
    config: str | Path | Mapping[str, Any] | Config | None = None, overrides: Overrides = ()
) -> Config:
    """A validated config from a TOML file, a dict shaped like one, a ``Config`` or the
    defaults, with ``overrides`` (``["optim.lr=3e-3"]`` or ``{"optim.lr": 3e-3}``) applied."""
    if isinstance(overrides, Mapping):
        overrides = [f"{key}={toml_value(_plain(value))}" for key, value in overrides.items()]
    elif isinstance(overrides, str):  # one override given bare: a common slip
        overrides = [overrides]
    if config is None or isinstance(config, str | Path):
        return load_config(config, list(overrides))
    if isinstance(config, Config):
        raw = config.model_dump(mode="json", exclude_none=True)
    elif isinstance(config, Mapping):
        raw = copy.deepcopy({key: _plain(value) for key, value in config.items()})
    else:
        raise TypeError(
            f"config must be a TOML file's path, a dict, a Config or None, not {type(config)}"
        )
    for override in overrides:
        _apply_override(raw, override)
    return validate_config(raw)


def _plain(value: Any) -> Any:
    """Paths as strings (TOML has no path type), recursively; everything else unchanged."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def train(
    config: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Overrides = (),
    *,
    resume: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Run:
    """Train as ``tinyvision train`` does and return the run.

    ``config`` is a TOML file's path, a dict shaped like one (``{"model": {"name":
    "mixer_brief"}, "train": {"epochs": 3}}``), a ``Config``, or ``None`` for the defaults;
    ``overrides`` are applied on top, as ``["optim.lr=3e-3"]`` or ``{"optim.lr": 3e-3}``.
    ``resume`` continues an interrupted run folder instead (with its saved config).
    ``on_epoch(row)`` is called with each epoch's metrics once they are saved.
    """
    from tinyvision import engine
    from tinyvision.report import report_when_asked

    if resume is not None:
        if config is not None or overrides:
            raise TinyVisionError("resume continues a run with its saved config: give no config")
        result = engine.train(resume=resume, on_epoch=on_epoch)
    else:
        result = engine.train(make_config(config, overrides), on_epoch=on_epoch)
    # The report is part of a finished run: written as `tinyvision train` writes it, from the
    # run folder once training has returned (a report problem is a warning, never a lost run),
    # and also for a finished run resumed here that has none yet.
    report_when_asked(result, write_missing=True)
    return Run(result.run_dir)


def load_run(path: str | Path) -> Run:
    """The run in folder ``path`` (finished or not), as ``train`` returns it."""
    return Run(path)


def compare_runs(runs: Iterable[Run | str | Path], sort: str = "test_acc") -> Any:
    """The table ``tinyvision compare`` prints, for runs or run folders (or folders of them):
    a ``ComparisonTable`` with ``.to_text()``; its columns are the settings that differ."""
    from tinyvision.compare import ComparisonTable, find_runs

    paths = [run.path if isinstance(run, Run) else Path(run) for run in runs]
    return ComparisonTable.build(find_runs(paths), sort=sort)


def register_model(
    name: str, family: F | None = None, description: str = "", **defaults: Any
) -> Any:
    """Make a model of your own reachable by ``name``: ``[model] name = "..."`` in a config,
    ``model.name=...`` on the command line, ``tinyvision summary``, reports and ``load_run``.

    ``family`` is an ``nn.Module`` class with a nested pydantic ``Config`` (its architecture
    options, validated when a config names it) and the constructor
    ``Family(config, *, in_chans, num_classes, image_size)``; ``defaults`` are the variant's
    values of those options. Used bare it is a decorator::

        @tinyvision.register_model("tiny_cnn", description="two convs", width=16)
        class TinyCNN(nn.Module):
            class Config(pydantic.BaseModel):
                width: int = 16
            def __init__(self, config, *, in_chans, num_classes, image_size): ...

    For the command line (and any other process) to know the model, the module that registers
    it must be imported there: ``tinyvision --import my_models train ...`` or
    ``TINYVISION_PLUGINS=my_models`` (module names or ``.py`` files, comma-separated).
    Registering the same name again with a class of the same name replaces the variant, so a
    notebook cell can be run twice; any other clash is an error.
    """
    from tinyvision.models import _VARIANTS, list_variants, register_variant

    def register(cls: F) -> F:
        if not hasattr(cls, "Config"):
            raise TypeError(f"{cls.__name__} needs a nested pydantic Config class of its options")
        list_variants()  # the built-in variants first, so a clash with one of them shows now
        known = _VARIANTS.get(name)
        same_class = known is not None and (known.family.__module__, known.family.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if same_class:
            del _VARIANTS[name]  # the same class defined again (a re-run notebook cell)
        register_variant(name, cls, description, **defaults)
        return cls

    return register if family is None else register(family)
