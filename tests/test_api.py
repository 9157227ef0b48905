"""The Python API (``import tinyvision``), used as the README's "From Python" shows it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinyvision
from tinyvision.errors import ConfigError, TinyVisionError
from tinyvision.models import _VARIANTS

# A tiny Mixer on the tiny data set, as a config dict (the shape of a TOML file).
TINY_MODEL = {
    "name": "mixer",
    "patch_size": 7,
    "dim": 32,
    "depth": 1,
    "token_hidden": 16,
    "channel_hidden": 64,
}


def tiny_dict(data_dir: Path, out_dir: Path) -> dict:
    return {
        "data": {
            "data_dir": data_dir,  # a Path is fine: converted for TOML
            "verify": False,
            "download": False,
            "batch_size": 64,
            "eval_batch_size": 128,
        },
        "model": dict(TINY_MODEL),
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "progress": "off", "threads": 1, "out_dir": out_dir},
    }


@pytest.fixture(scope="module")
def trained(tiny_fashion_dir, tmp_path_factory) -> tinyvision.Run:
    out = tmp_path_factory.mktemp("api-runs")
    return tinyvision.train(tiny_dict(tiny_fashion_dir, out), {"train.seed": 3})


def test_train_returns_the_run_with_its_folder_metrics_summary_model_and_report(trained):
    run = trained
    assert run.path.is_dir() and (run.path / "model.pt").exists()
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert run.metrics == rows  # a list of dicts, exactly metrics.jsonl
    assert isinstance(run.metrics, list) and run.metrics.column("epoch") == [1, 2]
    assert run.summary["final_test_acc"] == rows[-1]["test_acc"] > 0.2  # beats chance
    assert run.summary["epochs"] == 2
    assert run.config.train.seed == 3  # the override was applied
    assert run.config.model_name == "mixer"
    assert run.steps and set(run.steps[0]) == {"step", "epoch", "train_loss"}
    settings = {row["setting"]: row["value"] for row in run.hyperparameters}
    assert settings["optim.lr"] == 3e-3 and settings["model.dim"] == 32
    assert run.report() == run.path / "report.html" and run.report().exists()
    assert repr(run).startswith("Run(") and "test acc" in repr(run)


def test_train_writes_the_report_and_a_resumed_finished_run_gets_a_missing_one(
    trained, tmp_path, capsys
):
    import shutil

    assert (trained.path / "report.html").exists()  # written by train(), as the CLI does
    copy = Path(shutil.copytree(trained.path, tmp_path / trained.path.name))
    (copy / "report.html").unlink()
    before = (copy / "model.pt").read_bytes()
    run = tinyvision.train(resume=copy)  # nothing left to train...
    assert (run.path / "model.pt").read_bytes() == before
    assert (run.path / "report.html").exists()  # ...but the run it returns has its report
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out


def test_the_model_is_the_trained_one_in_eval_mode(trained, tiny_fashion_dir):
    from tinyvision.data import DeviceLoader, load_dataset

    model = trained.model
    assert isinstance(model, torch.nn.Module) and not model.training
    saved = torch.load(trained.path / "model.pt", weights_only=True)
    data = load_dataset("fashion-mnist", tiny_fashion_dir, download=False, verify=False)
    loader = DeviceLoader(
        data.test_images,
        data.test_labels,
        batch_size=512,
        mean=saved["mean"],
        std=saved["std"],
        shuffle=False,
        drop_last=False,
        device=torch.device("cpu"),
        num_classes=10,
    )
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    # The metrics' final test accuracy is that of the model the run saved.
    assert correct / len(data.test_labels) == pytest.approx(trained.summary["final_test_acc"])


def test_load_run_reads_the_same_run_back(trained):
    again = tinyvision.load_run(str(trained.path))
    assert again.path == trained.path
    assert again.metrics == trained.metrics and again.summary == trained.summary
    with pytest.raises(TinyVisionError, match="not a tinyvision run folder"):
        tinyvision.load_run(trained.path / "checkpoints")


def test_every_name_the_readme_uses_exists(trained):
    block = readme_block("import tinyvision")
    for name in set(re.findall(r"tinyvision\.(\w+)\(", block)):
        assert callable(getattr(tinyvision, name)), name
    for name in set(re.findall(r"^run\.(\w+)", block, flags=re.M)):
        getattr(trained, name)  # raises AttributeError if the README promises too much
    assert trained.metrics.column("test_acc") == [row["test_acc"] for row in trained.metrics]


def test_tables_show_in_notebooks_and_terminals(trained):
    table = trained.metrics
    assert "train_acc" in str(table).splitlines()[0]
    assert table._repr_html_().startswith("<table>") and "<td>2</td>" in table._repr_html_()


def test_config_file_with_override_list_and_report_on_demand(tiny_config, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config().to_toml())
    run = tinyvision.train(config, ["train.epochs=1", "train.report=false"])
    assert run.summary["epochs"] == 1
    assert not (run.path / "report.html").exists()  # switched off...
    assert run.report().exists()  # ...and written when asked for


def test_compare_runs_tabulates_the_settings_that_differ(trained, tiny_config):
    other = tinyvision.train(tiny_config("train.epochs=1", "optim.lr=1e-3", "train.report=false"))
    table = tinyvision.compare_runs([trained, other.path])
    assert "optim.lr" in table.columns and len(table.runs) == 2


def test_resume_takes_no_config_and_bad_configs_fail_with_the_usual_message(tmp_path):
    with pytest.raises(TinyVisionError, match="give no config"):
        tinyvision.train({"train": {"epochs": 1}}, resume=tmp_path)
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key\. Did you mean 'optim\.lr'"):
        tinyvision.train({"optim": {"lrr": 1.0}})
    with pytest.raises(TypeError, match="config must be"):
        tinyvision.train(42)


# --- a model of one's own ----------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(first_line: str) -> str:
    """The README's code block that starts with ``first_line``."""
    blocks = re.findall(r"```(?:python|bash)\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


PLUGIN = readme_block("# my_models.py")  # the README's own example of a model of one's own


def cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "tinyvision", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_a_user_registered_model_trains_from_the_cli(tiny_fashion_dir, tmp_path):
    (tmp_path / "my_models.py").write_text(PLUGIN)
    # As the README writes it, plus where the test's data and runs are.
    result = cli(
        "train",
        "--import",
        "my_models",  # a module name, found in the current folder
        "model.name=tiny_cnn",
        "model.width=6",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "runs"),
        "--data-dir",
        str(tiny_fashion_dir),
        "--no-verify",
        "--no-download",
        "train.progress=off",
        "data.batch_size=64",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "final test accuracy:" in result.stdout
    assert "tiny_cnn" in (run_dir / "report.md").read_text()  # the report reached it too
    assert "width = 6" in (run_dir / "config.toml").read_text()

    # Any other process finds it through $TINYVISION_PLUGINS (here as a .py file).
    env = {"TINYVISION_PLUGINS": str(tmp_path / "my_models.py")}
    listed = cli("models", env=env)
    assert listed.returncode == 0 and "tiny_cnn" in listed.stdout
    rewritten = cli("report", str(run_dir), env=env)
    assert rewritten.returncode == 0, rewritten.stderr
    # Without the import the name is unknown, and the message says so in one line.
    unknown = cli("summary", "tiny_cnn")
    assert unknown.returncode == 2 and "unknown model 'tiny_cnn'" in unknown.stderr


def test_a_missing_plugin_is_one_clear_line(tmp_path):
    result = cli("--import", "no_such_models_module", "models", cwd=tmp_path)
    assert result.returncode == 2
    assert "could not import the model plugin 'no_such_models_module'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def clean_registry():
    before = dict(_VARIANTS)
    yield
    _VARIANTS.clear()
    _VARIANTS.update(before)


def test_register_model_in_python_then_train_load_and_rerun_the_cell(tiny_config, clean_registry):
    namespace: dict = {}
    exec(compile(PLUGIN, "<notebook cell>", "exec"), namespace)
    exec(compile(PLUGIN, "<notebook cell>", "exec"), namespace)  # a re-run cell is no clash
    run = tinyvision.train(tiny_config("model.name=tiny_cnn", "train.epochs=1"))
    assert run.summary["model"] == "tiny_cnn"
    assert type(run.model).__name__ == "TinyCNN"
    with pytest.raises(ValueError, match="registered twice"):
        tinyvision.register_model("mixer", namespace["TinyCNN"])  # a built-in name is taken


def test_register_model_needs_a_config_class():
    from torch import nn

    with pytest.raises(TypeError, match="nested pydantic Config"):
        tinyvision.register_model("no_config", nn.Linear)


def test_configs_come_from_files_dicts_configs_or_defaults_with_overrides(tiny_config, tmp_path):
    from tinyvision.api import make_config

    base = tiny_config()
    assert make_config(base, {"optim.lr": 0.5}).optim.lr == 0.5  # a Config, overridden
    assert make_config(base, {"optim.lr": 0.5}) != base and base.optim.lr == 3e-3  # a copy
    assert make_config(None, "train.epochs=4").train.epochs == 4  # one bare override
    nested = make_config({"model": {"name": "resmlp_brief"}})
    assert nested.model_name == "resmlp_brief" and nested.model["width"] == 256  # defaults
    path = tmp_path / "c.toml"
    path.write_text(base.to_toml())
    from_file = make_config(str(path), ["model.dim=48", "model.token_hidden=[8]"])
    assert from_file.model["dim"] == 48 and from_file.model["token_hidden"] == [8]
    assert make_config({"train": {"out_dir": tmp_path}}).train.out_dir == tmp_path
