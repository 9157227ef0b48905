"""The command line, end to end, as a user runs it (a subprocess per command)."""

import json
import subprocess
import sys

import pytest


def tinyvision(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinyvision", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_shows_commands_and_examples():
    result = tinyvision("--help")
    assert result.returncode == 0
    for word in ("train", "summary", "models", "examples:"):
        assert word in result.stdout
    assert tinyvision("train", "--help").returncode == 0


def test_models_lists_every_family():
    out = tinyvision("models").stdout
    for name in ("mixer_brief", "dynconv_brief", "resmlp_brief", "densenet_brief"):
        assert name in out


def test_summary_answers_the_densenet_questions():
    result = tinyvision("summary", "densenet_brief", "model.growth_rate=8")
    assert result.returncode == 0, result.stderr
    assert "Dense block 1 runs at 14x14" in result.stdout
    assert "4 input channels and 28 output channels" in result.stdout  # 4 + 3 x 8
    assert "final fully connected layer takes 28 input features" in result.stdout


def test_train_end_to_end_then_resume_refuses_a_finished_run(tiny_fashion_dir, tmp_path):
    result = tinyvision(
        "train",
        "--epochs",
        "1",
        "--data-dir",
        str(tiny_fashion_dir),
        "--no-verify",
        "--no-download",
        "--out",
        str(tmp_path),
        "train.progress=off",
        "model.patch_size=7",
        "model.dim=16",
        "model.depth=1",
        "data.batch_size=64",
    )
    assert result.returncode == 0, result.stderr
    assert "final test accuracy:" in result.stdout
    (run,) = tmp_path.iterdir()
    assert f"run folder: {run}" in result.stdout
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "optim.lrr=1"], "optim.lrr: unknown key. Did you mean 'optim.lr'?"),
        (["train", "model.name=mixr"], "unknown model 'mixr'"),
        (["train", "missing.toml"], "config file 'missing.toml' does not exist"),
        (["train", "--resume", "nowhere"], "nowhere is not a tinyvision run folder"),
        (["train", "--device", "cuda:7"], "CUDA is not available"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, message, tmp_path):
    # (--resume takes no such flags: the run's own config holds them.)
    flags = ["--out", str(tmp_path / "runs"), "--no-download", "--data-dir", str(tmp_path)]
    result = tinyvision(*args, *([] if "--resume" in args else flags))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_outside_the_training_loop_exits_130_without_a_traceback(monkeypatch, capsys):
    # Ctrl-C while the data is read or the model compiled arrives as KeyboardInterrupt from
    # wherever the process happens to be; here, from the start of training.
    import tinyvision.engine
    from tinyvision.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tinyvision.engine, "train", interrupted)
    assert main(["train", "train.epochs=1"]) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C)" in err
    assert "--resume" in err
    assert "Traceback" not in err
