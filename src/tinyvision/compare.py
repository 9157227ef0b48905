"""Comparing runs: the table of configurations and results that students keep by hand.

    runs = find_runs(["runs/"])                 # run folders, or folders holding run folders
    table = ComparisonTable.build(runs, sort="test_acc")
    print(table.to_text())                      # aligned, for the terminal
    write_comparison_html(table, "compare.html")  # sortable table and overlaid curves

One row per run: its name, then the results (final test accuracy, best validation accuracy,
final train accuracy, epochs, training time), then its model and the hyperparameters that
*differ* between the runs (the settings they share would only repeat). The text table fits
the terminal: columns that do not fit go into further blocks below, each led by the run's
name. ``tinyvision compare`` is the command line for it.
"""

from __future__ import annotations

import io
import json
import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyvision.errors import TinyVisionError
from tinyvision.runs import RunFolder, atomic_write_text, format_duration

# Settings that say where or how a run was executed, not what was trained: never a column.
BOOKKEEPING = {
    "data.data_dir",
    "data.download",
    "data.verify",
    "data.eval_batch_size",
    "train.out_dir",
    "train.name",
    "train.progress",
    "train.threads",
    "train.checkpoint_every_steps",
    "train.tensorboard",
    "model.name",  # shown as its own column
    "train.epochs",  # so is this: the epochs column (done/planned for an unfinished run)
}
# The result columns, right after the run's name: what a reader compares first. Accuracies sort
# best-first by default.
RESULT_COLUMNS = ["test_acc", "best_val_acc", "train_acc", "epochs", "time"]
# What "train acc" is (see loop.TRAIN_ACC_MEANING): said under the table.
TRAIN_ACC_NOTE = "train acc: running mean over the last epoch's augmented training batches"
HIGHER_IS_BETTER = {"train_acc", "test_acc", "best_val_acc"}
MISSING = "—"


@dataclass
class RunRecord:
    """What one run folder says about itself: its config (flattened) and its results."""

    name: str
    path: Path
    config: dict[str, Any]  # "section.key" -> value, from config.toml
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        from tinyvision.config import tomllib

        run = RunFolder.open(path)
        raw = tomllib.loads(run.config_path.read_text())
        config = {
            f"{section}.{key}": value
            for section, values in raw.items()
            if isinstance(values, dict)
            for key, value in values.items()
        }
        summary_path = run.path / "summary.json"
        summary = run.read_json("summary.json") if summary_path.exists() else {}
        return cls(run.path.name, run.path, config, run.read_metrics(), summary)

    @property
    def finished(self) -> bool:
        return bool(self.summary)

    def result(self, key: str) -> Any:
        """A result column's value; an unfinished run falls back to its last logged epoch."""
        last = self.metrics[-1] if self.metrics else {}
        if key == "epochs":
            return self.summary.get("epochs", last.get("epoch"))
        if key == "time":
            return self.summary.get("train_seconds", last.get("elapsed_seconds"))
        if key == "best_val_acc":
            values = [m["val_acc"] for m in self.metrics if m.get("val_acc") is not None]
            return self.summary.get("best_val_acc", max(values, default=None))
        if key in ("train_acc", "test_acc"):
            return self.summary.get(f"final_{key}", last.get(key))
        raise KeyError(key)


def find_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Every run folder named in ``paths``: a run folder itself, or a folder of run folders."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if (path / "config.toml").is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.iterdir() if (p / "config.toml").is_file())
            if not inside:
                raise TinyVisionError(f"{path} holds no run folders (none has a config.toml)")
            found += inside
        else:
            raise TinyVisionError(f"{path} is not a run folder or a folder of run folders")
    unique = list(dict.fromkeys(p.resolve() for p in found))  # a run named twice counts once
    return [RunRecord.load(p) for p in unique]


def differing_keys(runs: Sequence[RunRecord]) -> list[str]:
    """The hyperparameters whose values are not the same in every run, in config order."""
    keys = list(dict.fromkeys(k for run in runs for k in run.config))
    return [
        key
        for key in keys
        if key not in BOOKKEEPING
        and len({json.dumps(run.config.get(key), sort_keys=True) for run in runs}) > 1
    ]


def _sort_key(value: Any) -> tuple:
    """Numbers before text, missing values last, whatever the direction."""
    if value is None:
        return (2,)
    if isinstance(value, bool):
        return (1, str(value).lower())
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, json.dumps(value) if isinstance(value, list) else str(value))


@dataclass
class ComparisonTable:
    runs: list[RunRecord]  # in display order
    columns: list[str]  # "run", RESULT_COLUMNS, "model", then the hyperparameter keys
    shared: dict[str, Any] = field(default_factory=dict)  # the settings all runs have in common
    sort: str = "test_acc"
    descending: bool = True

    @classmethod
    def build(
        cls, runs: Sequence[RunRecord], sort: str = "test_acc", reverse: bool = False
    ) -> ComparisonTable:
        """The table of ``runs``, sorted by column ``sort`` (accuracies best first, the rest
        ascending; ``reverse`` flips that)."""
        if not runs:
            raise TinyVisionError("no runs to compare")
        keys = differing_keys(runs)
        columns = ["run", *RESULT_COLUMNS, "model", *keys]
        if sort not in columns and not any(sort in run.config for run in runs):
            raise TinyVisionError(
                f"cannot sort by {sort!r}: use one of {', '.join(columns)} or any config key "
                "(section.key)"
            )
        table = cls(list(runs), columns, sort=sort)
        table.descending = (sort in HIGHER_IS_BETTER) != reverse
        present = [run for run in runs if table.value(run, sort) is not None]
        absent = [run for run in runs if table.value(run, sort) is None]
        present.sort(key=lambda run: _sort_key(table.value(run, sort)), reverse=table.descending)
        table.runs = present + absent  # runs without the value go last either way
        first = runs[0].config
        table.shared = {
            key: value for key, value in first.items() if key not in BOOKKEEPING and key not in keys
        }
        return table

    def value(self, run: RunRecord, column: str) -> Any:
        if column == "run":
            return run.name
        if column == "model":
            return run.config.get("model.name")
        if column in RESULT_COLUMNS:
            return run.result(column)
        return run.config.get(column)

    def cell(self, run: RunRecord, column: str) -> str:
        """A value as the table shows it."""
        value = self.value(run, column)
        if value is None:
            return MISSING
        if column in HIGHER_IS_BETTER:
            return f"{100 * value:.2f}%"
        if column == "time":
            return format_duration(value, compact=True)
        if column == "epochs" and not run.finished:
            planned = run.config.get("train.epochs")
            return f"{value}/{planned} (unfinished)"
        return format_value(value)

    def header(self, column: str) -> str:
        return {
            "train_acc": "train acc",
            "test_acc": "test acc",
            "best_val_acc": "best val acc",
        }.get(column, column)

    def to_text(self, width: int | None = None) -> str:
        """An aligned table for the terminal; numbers right-aligned, the sort column marked.

        ``width`` (default: the terminal's, ``COLUMNS`` if set) bounds the lines: columns that
        do not fit go into further blocks below, each starting with the run's name again.
        """
        if width is None:
            width = shutil.get_terminal_size((100, 24)).columns
        headers = [
            self.header(c) + ((" ↓" if self.descending else " ↑") if c == self.sort else "")
            for c in self.columns
        ]
        rows = [[self.cell(run, c) for c in self.columns] for run in self.runs]
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(self.columns))]
        numeric = [
            all(
                _is_number(self.value(run, c))
                for run in self.runs
                if self.value(run, c) is not None
            )
            and c not in ("run", "model")
            for c in self.columns
        ]

        def line(cells: list[str], block: list[int]) -> str:
            return "  ".join(
                cells[i].rjust(widths[i]) if numeric[i] else cells[i].ljust(widths[i])
                for i in block
            ).rstrip()

        out: list[str] = []
        for block in _blocks(widths, width):
            if out:
                out.append("")
            out += [line(headers, block), line(["-" * w for w in widths], block)]
            out += [line(row, block) for row in rows]
        out += ["", TRAIN_ACC_NOTE]
        if self.shared:
            shared = "shared by all runs: " + ", ".join(_shared_items(self.shared))
            out += ["", textwrap.fill(shared, width=min(width, 100), subsequent_indent="  ")]
        return "\n".join(out)


def _blocks(widths: list[int], width: int) -> list[list[int]]:
    """Column indices in blocks that fit in ``width`` characters, column 0 (the run) in each;
    a column wider than the space left gets a block of its own."""
    blocks: list[list[int]] = []
    current, used = [0], widths[0]
    for i in range(1, len(widths)):
        if used + 2 + widths[i] > width and len(current) > 1:
            blocks.append(current)
            current, used = [0], widths[0]
        current.append(i)
        used += 2 + widths[i]
    blocks.append(current)
    return blocks


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shared_items(shared: dict[str, Any]) -> list[str]:
    return [f"{key}={format_value(value)}" for key, value in shared.items()]


def format_value(value: Any) -> str:
    """A config value as written in TOML (``true``, ``[3, 3]``, ``0.001``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


# --- the HTML page ---------------------------------------------------------------------------


def run_colours(count: int) -> list[str]:
    """One distinct colour per run, shared by the curves and the table's swatches."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    if count <= 20:
        return [matplotlib.colors.to_hex(cmap(i)) for i in range(count)]
    wide = matplotlib.colormaps["turbo"]
    return [matplotlib.colors.to_hex(wide(i / max(count - 1, 1))) for i in range(count)]


def plot_overlaid_curves(table: ComparisonTable, colours: list[str]) -> bytes:
    """Test accuracy and training loss per epoch, every run on the same axes."""
    # A bare Figure (no pyplot): draws off-screen without touching the caller's backend.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    for run, colour in zip(table.runs, colours, strict=True):
        tests = [(m["epoch"], 100 * m["test_acc"]) for m in run.metrics if "test_acc" in m]
        if tests:
            acc_ax.plot(*zip(*tests, strict=True), "o-", color=colour, markersize=3, label=run.name)
        losses = [(m["epoch"], m["train_loss"]) for m in run.metrics if "train_loss" in m]
        if losses:
            loss_ax.plot(*zip(*losses, strict=True), "-", color=colour, label=run.name)
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Training loss")
    losses = [m["train_loss"] for run in table.runs for m in run.metrics if m.get("train_loss")]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        loss_ax.set_yscale("log")  # runs that differ by orders of magnitude stay readable
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if len(table.runs) <= 12:  # more: the table's colour swatches are the legend
        acc_ax.legend(fontsize=7, loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var down = th.getAttribute('aria-sort') !== 'descending';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', down ? 'descending' : 'ascending');
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      if (x === '') return 1; if (y === '') return -1;   // missing values last
      var nx = Number(x), ny = Number(y);   // NaN unless the whole value is a number
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y, undefined, {numeric: true});
      return down ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tinyvision: {{ table.runs | length }} runs compared</title>
<style>{{ css | safe }}
table.sortable th { cursor:pointer; user-select:none; white-space:nowrap; }
table.sortable th:hover { background:#eaeef2; }
th[aria-sort=descending]::after { content:" ▼"; color:var(--accent); }
th[aria-sort=ascending]::after { content:" ▲"; color:var(--accent); }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; }
.scroll { overflow-x:auto; }
</style>
</head>
<body><main>
<header>
  <h1>{{ table.runs | length }} runs compared</h1>
  <p class="muted">Columns: the results, then the model and the hyperparameters that differ
  between the runs. Train accuracy is the running mean over the last epoch's augmented training
  batches.
  Click a column header to sort. Sorted by {{ table.header(table.sort) }}
  ({{ 'best first' if table.descending and table.sort in better else
      ('descending' if table.descending else 'ascending') }}).</p>
</header>
<section>
<div class="scroll">
<table class="sortable" id="runs">
<thead><tr>{% for c in table.columns %}<th class="{{ 'num' if c in numeric }}"{% if c ==
table.sort %} aria-sort="{{ 'descending' if table.descending else 'ascending' }}"{% endif
%}>{{ table.header(c) }}</th>{% endfor %}</tr></thead>
<tbody>
{% for run, colour in rows %}<tr>{% for c in table.columns %}{% set v = table.value(run, c) %}
<td class="{{ 'num' if c in numeric }}" data-value="{{ '' if v is none else sort_value(v) }}">
{%- if c == 'run' %}<span class="swatch" style="background:{{ colour }}"></span>{% endif -%}
{{ table.cell(run, c) }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
</div>
</section>
<section>
<h2>Curves</h2>
<img class="figure" alt="test accuracy and training loss of every run" src="{{ curves }}">
</section>
{% if table.shared %}<section>
<h2>Settings shared by all runs</h2>
<div class="columns">{% for section, rows in shared %}<div><h3>[{{ section }}]</h3>
<table class="kv">{% for key, value in rows %}<tr><td>{{ key }}</td><td><code>{{ value }}</code>
</td></tr>{% endfor %}</table></div>{% endfor %}</div>
</section>{% endif %}
<footer>Written by tinyvision {{ version }}. Runs: {% for run in table.runs %}{{ run.path }}{{
', ' if not loop.last }}{% endfor %}.</footer>
</main>
<script>{{ js | safe }}</script>
</body>
</html>
"""


def _sort_value(value: Any) -> str:
    """What the page's script sorts a cell by: plain numbers, or the text."""
    if _is_number(value):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return format_value(value)


def render_comparison_html(table: ComparisonTable) -> str:
    """The self-contained comparison page (the figure embedded, CSS and script inline)."""
    import base64

    import jinja2

    from tinyvision.pages import CSS
    from tinyvision.version import __version__

    colours = run_colours(len(table.runs))
    curves = "data:image/png;base64," + base64.b64encode(
        plot_overlaid_curves(table, colours)
    ).decode("ascii")
    numeric = {
        c
        for c in table.columns
        if c not in ("run", "model")
        and all(_is_number(table.value(r, c)) for r in table.runs if table.value(r, c) is not None)
    }
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_HTML).render(
        table=table,
        rows=list(zip(table.runs, colours, strict=True)),
        numeric=numeric,
        better=HIGHER_IS_BETTER,
        sort_value=_sort_value,
        shared=_shared_pairs(table.shared),
        curves=curves,
        css=CSS,
        js=_SORT_JS,
        version=__version__,
    )


def _shared_pairs(shared: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The shared settings grouped by config section, as the report shows a config."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for key, value in shared.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append((name, format_value(value)))
    return list(sections.items())


def write_comparison_html(table: ComparisonTable, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, render_comparison_html(table))
    return path
