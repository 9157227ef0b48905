"""``tinyvision compare``: the table of configurations and results, and its HTML page.

The run folders here are written directly (config, metrics, summary), as training writes them,
so the expected table is known exactly and no training is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tinyvision.cli import main
from tinyvision.compare import ComparisonTable, differing_keys, find_runs, render_comparison_html
from tinyvision.config import load_config
from tinyvision.errors import TinyVisionError
from tinyvision.runs import RunFolder


def make_run(
    out: Path, name: str, overrides: list[str], test_accs: list[float], seconds: float
) -> Path:
    """A finished run folder whose test accuracy per epoch is ``test_accs``."""
    config = load_config(
        None,
        [
            f'train.out_dir="{out}"', f'train.name="{name}"', "data.batch_size=64",
            'data.data_dir="/data/somewhere"', "model.name=mixer", "model.dim=32",
            f"train.epochs={len(test_accs)}", *overrides,
        ],
    )  # fmt: skip
    run = RunFolder.create(config)
    metrics = [
        {
            "epoch": epoch,
            "step": 10 * epoch,
            "lr": 1e-3,
            "train_loss": 2.0 / epoch,
            "train_acc": min(1.0, acc + 0.05),
            "test_loss": 2.2 / epoch,
            "test_acc": acc,
            "epoch_seconds": seconds / len(test_accs),
            "elapsed_seconds": seconds * epoch / len(test_accs),
        }
        for epoch, acc in enumerate(test_accs, start=1)
    ]
    run.write_metrics(metrics)
    run.write_json(
        "summary.json",
        {
            "epochs": len(test_accs),
            "final_test_acc": test_accs[-1],
            "final_train_acc": metrics[-1]["train_acc"],
            "best_val_acc": None,
            "train_seconds": seconds,
        },
    )
    return run.path


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    out = tmp_path / "runs"
    make_run(out, "adam-small", ["optim.lr=1e-3"], [0.70, 0.80], 12.0)
    make_run(out, "adam-wide", ["optim.lr=3e-3", "model.dim=64"], [0.75, 0.85], 95.0)
    make_run(out, "adam-fast", ["optim.lr=1e-2"], [0.60, 0.75], 7.5)
    return out


def test_columns_are_the_settings_that_differ_and_the_results(runs_dir):
    runs = find_runs([runs_dir])
    assert len(runs) == 3
    assert differing_keys(runs) == ["model.dim", "optim.lr"]  # in config order
    table = ComparisonTable.build(runs)
    assert table.columns == [
        "run", "test_acc", "best_val_acc", "train_acc", "epochs", "time",
        "model", "model.dim", "optim.lr",
    ]  # fmt: skip
    # Shared settings are listed once; where a run was stored is not a setting at all.
    assert table.shared["data.batch_size"] == 64
    assert "data.data_dir" not in table.shared and "train.out_dir" not in table.columns


def test_table_is_sorted_by_test_accuracy_best_first(runs_dir):
    table = ComparisonTable.build(find_runs([runs_dir]))
    assert [run.name.rsplit("-", 2)[0] for run in table.runs] == [
        "adam-wide",
        "adam-small",
        "adam-fast",
    ]
    text = table.to_text(width=200)
    lines = text.splitlines()
    header, rule, *rows = lines[: 2 + 3]
    assert header.split() == [
        "run", "test", "acc", "↓", "best", "val", "acc", "train", "acc", "epochs", "time",
        "model", "model.dim", "optim.lr",
    ]  # fmt: skip
    assert set(rule) <= {"-", " "}
    assert len({len(line) for line in (header, rule, *rows)}) == 1  # aligned columns
    first = rows[0].split()
    assert first[0].startswith("adam-wide-") and first[1:] == [
        "85.00%", "—", "90.00%", "2", "1m35s", "mixer", "64", "0.003",
    ]  # fmt: skip
    assert "train acc: running mean over the last epoch's augmented training batches" in text
    assert "shared by all runs: " in text and "data.batch_size=64" in text


@pytest.mark.parametrize(
    ("sort", "reverse", "expected"),
    [
        ("optim.lr", False, ["adam-small", "adam-wide", "adam-fast"]),
        ("time", False, ["adam-fast", "adam-small", "adam-wide"]),
        ("time", True, ["adam-wide", "adam-small", "adam-fast"]),
        ("test_acc", True, ["adam-fast", "adam-small", "adam-wide"]),
        ("run", False, ["adam-fast", "adam-small", "adam-wide"]),
    ],
)
def test_sort_by_any_column_or_config_key(runs_dir, sort, reverse, expected):
    table = ComparisonTable.build(find_runs([runs_dir]), sort=sort, reverse=reverse)
    assert [run.name.rsplit("-", 2)[0] for run in table.runs] == expected


def test_unknown_sort_key_names_the_valid_ones(runs_dir):
    with pytest.raises(TinyVisionError, match="cannot sort by 'speed': use one of run, test_acc"):
        ComparisonTable.build(find_runs([runs_dir]), sort="speed")


def test_unfinished_runs_show_their_last_epoch(runs_dir):
    config = load_config(None, [f'train.out_dir="{runs_dir}"', "train.epochs=10"])
    run = RunFolder.create(config)
    run.write_metrics([{"epoch": 3, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.55,
                        "elapsed_seconds": 30.0}])  # fmt: skip
    table = ComparisonTable.build(find_runs([runs_dir]))
    (unfinished,) = [r for r in table.runs if not r.finished]
    assert table.cell(unfinished, "epochs") == "3/10 (unfinished)"
    assert table.cell(unfinished, "test_acc") == "55.00%"


def test_cli_prints_the_table_and_writes_a_self_contained_page(runs_dir, tmp_path, capsys):
    page = tmp_path / "compare.html"
    run_paths = sorted(str(p) for p in runs_dir.iterdir())
    assert main(["compare", *run_paths, "--sort", "time", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert out.index("adam-fast") < out.index("adam-small") < out.index("adam-wide")
    assert f"comparison page: {page}" in out

    html = page.read_text()
    runs_table = html[html.index('id="runs"') : html.index("</table>")]
    assert runs_table.count("<tr>") == 1 + 3  # the header and one row per run
    assert 'class="sortable"' in html and "addEventListener('click'" in html
    assert html.count('src="data:image/png;base64,') == 1  # the overlaid curves, embedded
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from anywhere
    assert 'data-value="0.85"' in html  # the script sorts by the raw numbers


def test_folder_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(TinyVisionError, match="holds no run folders"):
        find_runs([tmp_path])
    assert main(["compare", str(tmp_path / "missing")]) == 2


def test_page_escapes_what_users_typed(tmp_path):
    out = tmp_path / "runs<i>&amp;"  # a folder name a user chose, shown in the page's footer
    make_run(out, "a", ["optim.lr=1e-3"], [0.5], 1.0)
    make_run(out, "b", ["optim.lr=2e-3"], [0.6], 1.0)
    html = render_comparison_html(ComparisonTable.build(find_runs([out])))
    assert "<i>" not in html and "runs&lt;i&gt;&amp;amp;" in html


def test_the_table_fits_the_terminal_results_first(
    runs_dir, tmp_path, monkeypatch, capsys, reliability
):
    # Four runs with a hyperparameter each that the others lack: a wide table.
    for i, key in enumerate(["optim.weight_decay=0.1", "train.label_smoothing=0.1"]):
        make_run(runs_dir, f"extra-{i}", [key], [0.5, 0.6], 3.0)
    monkeypatch.setenv("COLUMNS", "80")
    page = tmp_path / "compare.html"
    assert main(["compare", str(runs_dir), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines if not line.startswith("comparison page")) <= 80
    header = lines[0].split()
    assert header[:4] == ["run", "test", "acc", "↓"]  # the results lead the first block
    blocks = [i for i, line in enumerate(lines) if line.startswith("run ")]
    assert len(blocks) >= 2  # what did not fit follows, led by the run's name again
    assert "optim.weight_decay" in out and "train.label_smoothing" in out
    html = page.read_text()
    head = html[html.index("<thead>") : html.index("</thead>")]
    assert head.index("test acc") < head.index("model") < head.index("optim.lr")
    reliability.record(
        "cli",
        "`tinyvision compare` of 5 runs with COLUMNS=80",
        f"every line at most 80 characters, in {len(blocks)} blocks led by the run's name; the "
        "accuracies come first, in the text and in compare.html",
    )
