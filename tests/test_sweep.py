"""Hyperparameter sweeps: a small study on SQLite, scoring on the validation split only, the
space file's checks, and two workers sharing one study on a real PostgreSQL server."""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import learnable_images, write_idx

from tinyvision.cli import main
from tinyvision.config import load_config
from tinyvision.engine import train
from tinyvision.errors import ConfigError, TrainingError
from tinyvision.sweep import load_space, objective_value, run_sweep

# Small and fast: two learning rates, two optimisers, two widths, per-block list choices.
SPACE = """
[sweep]
prune = false

[params]
optim.lr = {type = "float", low = 1e-3, high = 1e-2, log = true}
"optim.name" = {type = "categorical", choices = ["adam", "radam"]}

[params.model]
dim = {type = "int", low = 16, high = 32, step = 16}
token_hidden = {type = "categorical", choices = [[8], [16]]}
"""


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


@pytest.fixture
def base_config(tiny_config, tmp_path: Path) -> Path:
    path = tmp_path / "base.toml"
    path.write_text(tiny_config("train.epochs=1").to_toml())
    return path


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    return path


# --- a sweep on SQLite ----------------------------------------------------------------------


def test_sqlite_sweep_writes_the_table_the_best_config_and_plots(
    base_config: Path, space: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    result = run_sweep(base_config, space, 4, out_dir=out, seed=0)

    assert (out / "study.db").is_file()  # the default storage: SQLite in the sweep folder
    rows = read_rows(out / "trials.csv")
    assert [int(row["number"]) for row in rows] == [0, 1, 2, 3]
    assert {row["state"] for row in rows} == {"COMPLETE"}
    for row in rows:  # one run folder per trial, under the sweep folder
        run = Path(row["run_dir"])
        assert run.parent == (out / "trials").resolve()
        assert run.name.startswith(f"trial-{int(row['number']):04d}-")
        config = load_config(run / "config.toml")
        assert config.data.val_size == 64  # the default: 10% of the 640 training images
        assert config.optim.name == row["optim.name"]
        assert config.model["token_hidden"] == json.loads(row["model.token_hidden"])
        assert (
            float(row["val_acc"]) == json.loads((run / "summary.json").read_text())["final_val_acc"]
        )
    table = (out / "trials.md").read_text()
    assert "| # | state | optim.lr | optim.name | model.dim | model.token_hidden | val acc" in table
    assert "(best)" in table and "information only" in table
    for plot in ("history.png", "slices.png", "intermediate.png", "importances.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG"), plot

    # best.toml: the best trial's values, no validation split, loadable and trainable.
    text = (out / "best.toml").read_text()
    assert text.startswith("# Best configuration of sweep 'space': trial")
    assert "data.val_size is reset to 0" in text
    best_row = rows[result.best_number]
    assert float(best_row["val_acc"]) == max(float(row["val_acc"]) for row in rows)
    best = load_config(out / "best.toml")
    assert best.data.val_size == 0
    assert best.train.out_dir == tmp_path / "runs"  # the config's own, not the sweep's
    assert best.optim.name == best_row["optim.name"]
    assert best.model["dim"] == int(best_row["model.dim"])
    trained = train(best)
    assert trained.summary["final_val_acc"] is None  # trained on the full training split
    assert trained.summary["epochs"] == 1

    # --trials 0 only rewrites the outputs from the stored study.
    again = run_sweep(base_config, space, 0, out_dir=out)
    assert len(again.rows) == 4 and again.best_number == result.best_number

    # A different space under the same study name would mix incomparable trials: refused.
    other = tmp_path / "other.toml"
    other.write_text(SPACE.replace("high = 1e-2", "high = 3e-2"))
    with pytest.raises(ConfigError, match="'space' was started with a different search space"):
        run_sweep(base_config, other, 1, out_dir=out, study_name="space")


@pytest.fixture
def mislabelled_test_dir(tiny_fashion_dir: Path, tmp_path: Path) -> Path:
    """The tiny data set with every test label shifted by one class: a model that learns the
    training data scores high on the validation split and near zero on the test split."""
    folder = tmp_path / "mislabelled"
    shutil.copytree(tiny_fashion_dir, folder)
    labels = np.arange(320) % 10
    write_idx(
        folder / "t10k-images-idx3-ubyte.gz", learnable_images(labels, np.random.default_rng(1))
    )
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", (labels + 1) % 10)
    return folder


def test_trials_are_scored_on_the_validation_split_never_the_test_split(
    tiny_config, mislabelled_test_dir: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.toml"
    base.write_text(
        tiny_config(
            f'data.data_dir="{mislabelled_test_dir}"', "data.val_size=100", "optim.name=adam"
        ).to_toml()
    )
    space = tmp_path / "lr.toml"
    space.write_text(
        '[sweep]\nprune = false\n[params]\n"optim.lr" = {type = "float", low = 5e-3, high = 2e-2}'
    )
    result = run_sweep(base, space, 1, out_dir=tmp_path / "sweep", seed=0)

    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path / 'sweep/study.db'}")
    for trial in study.get_trials():
        metrics = [
            json.loads(line)
            for line in (Path(trial.user_attrs["run_dir"]) / "metrics.jsonl")
            .read_text()
            .splitlines()
        ]
        assert len(metrics) == 2
        assert metrics[-1]["val_acc"] > metrics[-1]["test_acc"] + 0.3  # the data set differs
        assert trial.value == metrics[-1]["val_acc"]  # the score: the final val_acc
        assert trial.intermediate_values == {m["epoch"]: m["val_acc"] for m in metrics}
        assert trial.user_attrs["test_acc"] == metrics[-1]["test_acc"]  # recorded, not scored
    assert result.best_value == max(t.value for t in study.get_trials())


def test_objective_value_reads_only_validation_accuracy() -> None:
    summary = {"final_val_acc": 0.8, "best_val_acc": 0.85, "final_test_acc": 0.99}
    assert objective_value(summary, "final") == 0.8
    assert objective_value(summary, "best") == 0.85
    with pytest.raises(TrainingError, match="no validation accuracy"):
        objective_value({"final_val_acc": None, "final_test_acc": 0.99}, "final")


def test_a_pruned_trial_stops_early_and_keeps_its_run_folder(
    base_config: Path, space: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    # A threshold no accuracy reaches prunes every trial at its first report.
    result = run_sweep(
        base_config,
        space,
        1,
        overrides=["train.epochs=3"],
        out_dir=out,
        pruner=optuna.pruners.ThresholdPruner(lower=1.01),
    )
    (row,) = result.rows
    assert row["state"] == "PRUNED" and row["epochs"] == 1
    assert row["note"] == "pruned after epoch 1"
    assert len((Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()) == 1
    assert result.best_config is None and not (out / "best.toml").exists()


# --- the space file -------------------------------------------------------------------------


def test_space_keys_may_be_quoted_dotted_or_in_sub_tables(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text(
        '[params]\n"optim.lr" = {type = "float", low = 1e-4, high = 1e-2, log = true}\n'
        'optim.name = {type = "categorical", choices = ["adam", "sgd"]}\n'
        "[params.model]\n"
        'token_hidden = {type = "categorical", choices = [64, [64, 32]]}\n'
    )
    space = load_space(path)
    assert list(space.params) == ["optim.lr", "optim.name", "model.token_hidden"]
    assert space.sweep.prune and space.sweep.objective == "final"
    trial = optuna.trial.FixedTrial(
        {"optim.lr": 1e-3, "optim.name": "sgd", "model.token_hidden": "[64, 32]"}
    )
    values = space.suggest(trial)
    assert values == {"optim.lr": 1e-3, "optim.name": "sgd", "model.token_hidden": [64, 32]}


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        (
            '[params]\n"optim.lr" = {type = "uniform", low = 1e-4, high = 1e-2}',
            ['optim.lr: unknown distribution type \'uniform\': use "float", "int"'],
        ),
        (
            '[params]\n"optim.lr" = {type = "float", low = 1e-2, high = 1e-4}',
            ["optim.lr: low (0.01) must be below high (0.0001)"],
        ),
        (
            '[params]\n"optim.lrr" = {type = "float", low = 1e-4, high = 1e-2, log = true}\n'
            '"optim.momentum" = {type = "float", low = 0.5, high = 1.0}\n'
            '"model.depht" = {type = "int", low = 1, high = 3}\n'
            '"optim.name" = {type = "categorical", choices = ["adam", "lion"]}',
            [  # every problem at once
                "optim.lrr: unknown key. Did you mean 'optim.lr'?",
                "optim.momentum: Input should be less than 1 (got 1.0)",
                "model.depht: unknown key. Did you mean 'model.depth'?",
                "optim.name: Input should be 'sgd', 'adam', 'adamw' or 'radam' (got 'lion')",
            ],
        ),
        (
            '[params]\n"optim.lr" = {type = "float", low = 0.0, high = 1e-2, log = true}\n'
            '"data.val_size" = {type = "int", low = 10, high = 100}\n'
            '"model.dim" = {low = 16, high = 32}\n'
            '"model.depth" = {type = "int", low = 1, high = 2, stepp = 1}',
            [
                "optim.lr: log = true needs low > 0",
                "data.val_size: cannot be searched: the validation split must be the same",
                "model.dim: no distribution type",
                "model.depth: unknown setting 'stepp'",
            ],
        ),
        ('optim.lr = {type = "float", low = 1e-4, high = 1e-2}', ["distributions go under"]),
        ("[sweep]\nobjectiv = 'best'\n[params]\n", ["Did you mean 'sweep.objective'?", "[params]"]),
        ("[params\n", ["is not valid TOML"]),
    ],
)
def test_a_bad_space_is_one_clear_error_before_anything_runs(
    text: str, messages: list[str], base_config: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        run_sweep(base_config, path, 3, out_dir=tmp_path / "sweep")
    for message in messages:
        assert message in str(error.value)
    assert not (tmp_path / "sweep").exists()  # nothing was created


def test_the_cli_reports_a_bad_space_in_one_line_and_exits_2(
    base_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[params]\n"model.depht" = {type = "int", low = 1, high = 3}')
    code = main(["sweep", str(base_config), "--space", str(path), "--trials", "2"])
    assert code == 2
    assert "model.depht: unknown key. Did you mean 'model.depth'?" in capsys.readouterr().err


# --- several workers, one study, a real PostgreSQL server -----------------------------------


def postgres_bindir() -> Path | None:
    """Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, off the PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster in a temporary folder, reached over a Unix socket only
    (no TCP port to collide with), with trust authentication; stopped and deleted after."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="tv-pg-", dir="/tmp"))  # short: sockets need < 108 bytes
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to 'postgres'
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.fail("running as root and there is no 'postgres' user to own the cluster")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data = root / "data"

    def pg(*args: str | Path) -> None:
        done = subprocess.run(
            [*as_owner, *map(str, args)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"

    try:
        pg(bindir / "initdb", "-D", data, "-U", "sweeper", "--auth=trust", "--no-sync")
        pg(
            bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60",
            "-o", f"-k {root} -c listen_addresses='' -c fsync=off", "start",
        )  # fmt: skip
        yield f"postgresql+psycopg2://sweeper@/postgres?host={root}"
    finally:
        subprocess.run(
            [*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(
    postgres_url: str, base_config: Path, space: Path, tmp_path: Path
) -> None:
    per_worker = 2
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]  # as if on two machines
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = []
    for out, log in zip(outs, logs, strict=True):  # the same command, started together
        command = [
            sys.executable, "-m", "tinyvision", "sweep", str(base_config),
            "--space", str(space), "--trials", str(per_worker), "--storage", postgres_url,
            "--study-name", "shared", "--out", str(out), "--val-size", "64",
        ]  # fmt: skip
        with log.open("w") as file:
            workers.append(subprocess.Popen(command, stdout=file, stderr=subprocess.STDOUT))
    codes = [worker.wait(timeout=300) for worker in workers]
    assert codes == [0, 0], "\n\n".join(log.read_text()[-3000:] for log in logs)

    trials = optuna.load_study(study_name="shared", storage=postgres_url).get_trials()
    # No trial lost, none run twice: numbers 0..N-1 once each, N = both workers' trials.
    assert sorted(t.number for t in trials) == list(range(2 * per_worker))
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    workers_seen = Counter(t.user_attrs["worker"] for t in trials)
    assert sorted(workers_seen.values()) == [per_worker, per_worker]

    folders = [folder.resolve() for out in outs for folder in (out / "trials").iterdir()]
    numbers = sorted(int(folder.name.split("-")[1]) for folder in folders)
    assert numbers == list(range(2 * per_worker))
    for trial in trials:  # exactly one run folder per trial, the one the study records
        run = Path(trial.user_attrs["run_dir"])
        assert run in folders and run.name.startswith(f"trial-{trial.number:04d}-")
        assert json.loads((run / "summary.json").read_text())["final_val_acc"] == trial.value
    assert not any((out / "study.db").exists() for out in outs)
    # Each worker writes the table of the whole study as it stands when it finishes.
    assert max(len(read_rows(out / "trials.csv")) for out in outs) == 2 * per_worker
