"""The per-run report, read from the run folder alone: everything a brief asks a student to hand in.

    write_report(run)    report.html and report.md, with beside them
                             confusion.png      confusion matrix of the test split
                             misclassified.png  the most confidently wrong test images
                             per_class.json     the numbers behind both (for scripts and tests)

The report re-evaluates the test split with the saved ``model.pt`` (``evaluate.py`` rebuilds it
from its own record of the architecture), so it checks that the file a user keeps really is the
model whose accuracy the metrics claim; the figures come from ``plots.py``, the page's look from
``pages.py``. This module builds the context (plain values, formatted once) and renders it.
``report.html`` is one self-contained file (figures embedded as data URIs, CSS inline, no
scripts, nothing fetched): it opens offline and can be mailed. ``report.md`` references the
figures as files next to it.

The CLI and the Python API write the report after training returns (``report_when_asked``,
``train.report``), and ``tinyvision report RUN`` writes it again on demand, from any copy of the
run folder. The engine never calls this module, so a problem here can never lose a trained model.
"""

from __future__ import annotations

import html
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tinyvision.config import Config, load_config, toml_value, tomllib
from tinyvision.data import ImageDataset, load_dataset_for
from tinyvision.evaluate import SplitEvaluation, evaluate_saved_model, load_saved_model
from tinyvision.loop import TRAIN_ACC_MEANING
from tinyvision.models import get_variant
from tinyvision.pages import CSS, REPORT_HTML, data_uri
from tinyvision.plots import plot_confusion, plot_curves, plot_misclassified
from tinyvision.runs import RunFolder, atomic_write_text, format_duration
from tinyvision.summary import ModelSummary, summarize
from tinyvision.version import __version__

if TYPE_CHECKING:
    from tinyvision.engine import RunResult

MAX_MISCLASSIFIED = 40  # images in the grid: enough to see a pattern, small enough to scan
# The per-epoch columns shown, when the run recorded them (train_ce: runs from 2026-12 on).
EPOCH_COLUMNS = (
    "train_loss", "train_ce", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
)  # fmt: skip


# --- the report ---------------------------------------------------------------------------------


def write_report(
    run: RunFolder | str | Path,
    *,
    dataset: ImageDataset | None = None,
    device: torch.device | str | None = None,
    max_misclassified: int = MAX_MISCLASSIFIED,
) -> Path:
    """Write ``report.html``, ``report.md`` and their figures and data into the run folder.

    ``dataset`` saves reading the data again when the caller has it in memory; otherwise it is
    loaded as the run's ``[data]`` section says. Returns the path of ``report.html``.
    """
    run = run if isinstance(run, RunFolder) else RunFolder.open(run)
    config = run.load_config()
    model, saved = load_saved_model(run)
    image_shape = (saved["in_chans"], *saved["image_size"])
    shape_summary = summarize(model, image_shape, depth=2)
    shape_summary.title = f"{config.model_name} ({type(model).__name__})"
    brief = get_variant(saved["model_name"]).brief
    answers = brief.answers(model, image_shape) if brief and brief.answers else None

    if dataset is None:
        dataset = load_dataset_for(config.data)
    evaluation = evaluate_saved_model(model, saved, dataset, config, device)
    del model  # the figures below need only the predictions

    if not (run.path / "curves.png").exists():
        plot_curves(run)
    figures = {"curves": (run.path / "curves.png").read_bytes()}
    figures["confusion"] = plot_confusion(
        evaluation.confusion, evaluation.classes, run.path / "confusion.png"
    )
    shown = evaluation.most_confident_mistakes(max_misclassified)
    names = evaluation.classes
    figures["misclassified"] = plot_misclassified(
        dataset.test_images[shown],
        [names[evaluation.labels[i]] for i in shown],
        [names[evaluation.predictions[i]] for i in shown],
        [evaluation.confidence[i].item() for i in shown],
        run.path / "misclassified.png",
    )
    per_class = per_class_record(evaluation, shown, config.data.dataset)
    run.write_json("per_class.json", per_class)

    context = report_context(run, config, saved, shape_summary, answers, per_class)
    atomic_write_text(run.path / "report.md", render_markdown(context))
    atomic_write_text(run.path / "report.html", render_html(context, figures))
    return run.path / "report.html"


def per_class_record(evaluation: SplitEvaluation, shown: list[int], dataset: str) -> dict:
    """``per_class.json``: the confusion matrix, each class's accuracy, the mistakes shown."""
    confusion, names = evaluation.confusion, evaluation.classes
    correct = int(np.trace(confusion))
    return {
        "dataset": dataset,
        "test_size": len(evaluation.labels),
        "correct": correct,
        "accuracy": correct / len(evaluation.labels),
        "classes": names,
        "confusion": confusion.tolist(),  # rows: true class, columns: predicted class
        "per_class": evaluation.per_class(),
        "misclassified_shown": [
            {
                "index": i,
                "true": names[evaluation.labels[i]],
                "predicted": names[evaluation.predictions[i]],
                "confidence": round(evaluation.confidence[i].item(), 4),
            }
            for i in shown
        ],
        "evaluated_on": evaluation.device,
        "evaluation_seconds": round(evaluation.seconds, 3),
    }


def report_when_asked(result: RunResult, *, write_missing: bool = False) -> Path | None:
    """The report of the run ``train()`` has returned, when its config asks for one
    (``train.report``): the call of ``tinyvision train`` and of ``tinyvision.train`` once
    training has returned, written from the run folder alone.

    A run trained now gets a new report. A finished run that was only resumed (nothing left to
    train) keeps its own, unless it has none and ``write_missing``: the Python API's promise
    that the run it returns has its report. Only process 0 writes, as it writes the folder.
    """
    if not result.main:
        return None
    missing = bool(result.summary) and not (Path(result.run_dir) / "report.html").exists()
    if not (result.trained or (write_missing and missing)):
        return None
    if not RunFolder.open(result.run_dir).load_config().train.report:
        return None
    with warnings.catch_warnings():
        # The report reads the data set again, the copy training has just used and (with
        # data.verify = false) just warned about: once in the log is enough.
        warnings.filterwarnings("ignore", "(?s).*NOT checked against the official checksums")
        return report_after_training(result.run_dir)


def report_after_training(run: RunFolder | str | Path) -> Path | None:
    """Write the report of a run training has just finished, but never fail the run over it
    (the run folder is complete by now; the report can be written again later)."""
    try:
        path = write_report(run)
    except Exception as err:  # the training result is safe: say so and go on
        print(
            f"warning: the report could not be written ({type(err).__name__}: {err}); "
            f"try again with `tinyvision report {Path(getattr(run, 'path', run))}`"
        )
        return None
    print(f"report: {path}")
    return path


# --- what the templates show ---------------------------------------------------------------------


def report_context(
    run: RunFolder,
    config: Config,
    saved: dict[str, Any],
    shape_summary: ModelSummary,
    answers: str | None,
    per_class: dict[str, Any],
) -> dict[str, Any]:
    """Everything both report formats show, as plain values (formatting happens here once)."""
    metrics = run.read_metrics()
    summary = _read_json_if_any(run, "summary.json")
    env = _read_json_if_any(run, "environment.json")
    last = metrics[-1] if metrics else {}
    variant = get_variant(saved["model_name"])
    test_acc = summary.get("final_test_acc", last.get("test_acc"))
    recomputed = per_class["accuracy"]
    agreement = None
    if test_acc is not None and abs(recomputed - test_acc) > 0.0015:
        agreement = (
            f"The saved model scores {_pct(recomputed)} when evaluated again on "
            f"{per_class['evaluated_on']}, the training's metrics say {_pct(test_acc)}: "
            "precision or device differences, or model.pt is not the evaluated model."
        )
    integrity = env.get("data", {}).get("integrity", "unknown")
    epoch_header, epoch_rows = _epoch_table(metrics)
    return {
        "title": run.path.name,
        "model_name": saved["model_name"],
        "family": variant.family.__name__,
        "variant_description": variant.description,
        "brief": variant.brief,
        "dataset": config.data.dataset,
        "headline": _headline(summary, last, shape_summary),
        "test_acc": test_acc,
        "hyperparameters": _hyperparameters(run, saved["model_name"]),
        "data_source": [
            ("location", env.get("data", {}).get("location", "—")),
            ("found by", env.get("data", {}).get("found_by", "—")),
            ("integrity", integrity),
        ],
        "verified": "verified" in integrity and "not" not in integrity.lower(),
        "per_class": [
            {
                **row,
                "accuracy_text": _pct(row["accuracy"]),
                "confused_text": (
                    f"{row['most_confused_with']} ({row['most_confused_count']})"
                    if row["most_confused_with"]
                    else "—"
                ),
            }
            for row in per_class["per_class"]
        ],
        "recomputed": (
            f"{_pct(recomputed)} ({per_class['correct']:,} of {per_class['test_size']:,} test "
            f"images), re-evaluated from model.pt on {per_class['evaluated_on']} in "
            f"{per_class['evaluation_seconds']:.2f} s"
        ),
        "agreement": agreement,
        "misclassified_count": per_class["test_size"] - per_class["correct"],
        "misclassified_shown": len(per_class["misclassified_shown"]),
        "layers": shape_summary.to_text(),
        "answers": answers,
        "environment": _environment(env, summary),
        "epoch_header": epoch_header,
        "epoch_rows": epoch_rows,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
    }


def _read_json_if_any(run: RunFolder, name: str) -> dict[str, Any]:
    # An unfinished or older run may lack summary.json or environment.json: show what there is.
    return run.read_json(name) if (run.path / name).exists() else {}


def _headline(
    summary: dict[str, Any], last: dict[str, Any], shape_summary: ModelSummary
) -> list[tuple[str, str, str]]:
    """The cards at the top: (label, value, element id for the tests and scripts)."""
    test_acc = summary.get("final_test_acc", last.get("test_acc"))
    headline = [
        ("final test accuracy", _pct(test_acc), "final-test-acc"),
        # Not an evaluation: counted while training, on augmented batches (loop.py).
        (
            f"final train accuracy ({TRAIN_ACC_MEANING})",
            _pct(summary.get("final_train_acc", last.get("train_acc"))),
            "",
        ),
    ]
    best_val = summary.get("best_val_acc")
    if best_val is not None:
        headline.append(("best validation accuracy", _pct(best_val), "best-val-acc"))
    headline += [
        ("epochs", str(summary.get("epochs", last.get("epoch", "—"))), ""),
        ("parameters", f"{shape_summary.total_params:,}", "parameters"),
        ("MACs per image", _macs(shape_summary.total_macs), "macs"),
        ("training time", _duration(summary.get("train_seconds", last.get("elapsed_seconds"))), ""),
    ]
    return headline


def _hyperparameters(run: RunFolder, model_name: str) -> list[tuple[str, list]]:
    """Each section of config.toml as (key, TOML value, changed from the defaults) rows."""
    raw = tomllib.loads(run.config_path.read_text())
    # What the run changed is what a reader looks for: values that differ from the defaults
    # (tinyvision's, and the model variant's own) are marked.
    defaults = tomllib.loads(load_config(None, [f"model.name={toml_value(model_name)}"]).to_toml())
    return [
        (
            section,
            [
                (key, toml_value(value), value != defaults.get(section, {}).get(key, value))
                for key, value in values.items()
            ],
        )
        for section, values in raw.items()
        if isinstance(values, dict)
    ]


def _environment(env: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Time, device and versions, with every later session that resumed the run."""
    environment = [
        ("device", env.get("device", "—") + (f" ({env['gpu']})" if env.get("gpu") else "")),
        ("wall time (training)", _duration(summary.get("train_seconds"))),
        ("date", env.get("date", "—")),
        ("command", env.get("command", "—")),
        ("tinyvision", __version__),
        ("python", env.get("python", "—")),
        ("torch", env.get("torch", "—") + (f", CUDA {env['cuda']}" if env.get("cuda") else "")),
        ("numpy", env.get("numpy", "—")),
        ("platform", env.get("platform", "—")),
        (
            "CPU",
            f"{env.get('cpu', '—')} ({env.get('cpu_count', '?')} cores, "
            f"{env.get('torch_threads', '?')} torch threads)",
        ),
    ]
    for later in env.get("resumed", []):
        environment.append(
            (
                "resumed",
                f"{later.get('date', '—')} on {later.get('device', '—')}"
                + (f" ({later['gpu']})" if later.get("gpu") else "")
                + f": {later.get('command', '—')}",
            )
        )
    return environment


def _epoch_table(metrics: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Every epoch's numbers: the header and one row of formatted cells per epoch."""
    columns = [c for c in EPOCH_COLUMNS if any(c in m for m in metrics)]
    rows = [
        [str(m["epoch"]), f"{m['lr']:.3g}"]
        + [_pct(m.get(c)) if c.endswith("acc") else _num(m.get(c)) for c in columns]
        + [_duration(m.get("epoch_seconds"))]
        for m in metrics
    ]
    return ["epoch", "lr", *columns, "time"], rows


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _macs(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def _duration(seconds: float | None) -> str:
    return "—" if seconds is None else format_duration(seconds)


# --- HTML ---------------------------------------------------------------------------------------


def render_html(context: dict[str, Any], figures: dict[str, bytes]) -> str:
    """The self-contained HTML page; every value from the run is escaped by the template."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    images = {name: data_uri(png) for name, png in figures.items()}
    return env.from_string(REPORT_HTML).render(
        **context, images=images, css=CSS, version=__version__
    )


# --- Markdown -----------------------------------------------------------------------------------


def _md(text: Any) -> str:
    """A table cell: HTML-escaped (Markdown renders raw HTML) and with pipes escaped."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> str:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(map(_md, header)) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(c: dict[str, Any]) -> str:
    """``report.md``: the same sections as the HTML page, figures as files beside it."""
    brief = c["brief"]
    out = [f"# {_md(c['title'])}", ""]
    tags = [f"model `{c['model_name']}`"]
    if brief:
        tags.append(f"brief {brief.letter}: {brief.title}")
    tags += [f"data set {c['dataset']}", f"data {_md(c['data_source'][2][1])}"]
    out += [" · ".join(tags), ""]
    out += [_md_table(["", ""], [[label, value] for label, value, _ in c["headline"]], {1}), ""]

    description = _md(c["variant_description"])
    out += ["## Model", "", f"**{c['model_name']}** ({c['family']}): {description}"]
    if brief:
        out += ["", f"Brief {brief.letter}, {brief.title}: {brief.summary}"]
    if c["answers"]:
        out += ["", "### The brief's shape questions", "", "```", c["answers"], "```"]
    out += ["", "<details><summary>Layers, parameters and MACs</summary>", "", "```"]
    out += [c["layers"], "```", "", "</details>", ""]

    out += ["## Training curves", "", "![loss and accuracy curves](curves.png)", ""]
    out += [_md_table(c["epoch_header"], c["epoch_rows"], set(range(len(c["epoch_header"])))), ""]

    out += ["## Per-class accuracy and confusion matrix", ""]
    out += [f"Test accuracy {c['recomputed']}.", ""]
    if c["agreement"]:
        out += [f"> {c['agreement']}", ""]
    rows = [
        [row["class"], row["count"], row["accuracy_text"], row["confused_text"]]
        for row in c["per_class"]
    ]
    out += [_md_table(["class", "images", "accuracy", "most often taken for"], rows, {1, 2}), ""]
    out += ["![confusion matrix](confusion.png)", ""]

    out += ["## Misclassified test images", ""]
    out += [
        f"{c['misclassified_shown']} of {c['misclassified_count']} mistakes, the most confident "
        "first: true label in green, predicted label and its probability in red.",
        "",
        "![misclassified test images](misclassified.png)",
        "",
    ]

    out += ["## Hyperparameters", ""]
    out += [
        "The resolved configuration (config.toml), defaults included; **bold** = changed from "
        f"the defaults of {c['model_name']}."
    ]
    for section, rows in c["hyperparameters"]:
        cells = [[f"**{k}**", f"**{v}**"] if changed else [k, v] for k, v, changed in rows]
        out += ["", f"### [{section}]", "", _md_table(["key", "value"], cells)]
    out += ["", "## Data", "", _md_table(["", ""], c["data_source"]), ""]
    out += ["## Time, device and versions", "", _md_table(["", ""], c["environment"]), ""]
    out += [f"_Written by tinyvision {__version__} on {c['generated']}._", ""]
    return "\n".join(out)
