"""Run folders under stress: damaged checkpoints, finished and extended runs, runs stopped
before their first checkpoint, two processes on one folder, full disks, read-only folders,
and files given where a config belongs. Each fault must end in one clear message (exit 2 from
the CLI) with nothing lost.

A full or read-only disk is injected: ``tinyvision.runs`` writes every file through
``atomic_write``, whose ``os`` and ``tempfile`` are replaced by ones that fail the chosen
write with the operating system's own error (ENOSPC, EROFS), so torch.save and matplotlib
meet the failure exactly as they would on a real full disk.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from conftest import tiny_config_for

import tinyvision
import tinyvision.engine
import tinyvision.loop
import tinyvision.runs
from tinyvision.cli import main
from tinyvision.config import load_config
from tinyvision.engine import RunResult, train
from tinyvision.lock import holding_locks, lock_run
from tinyvision.optim import lr_factor
from tinyvision.report import report_when_asked
from tinyvision.runs import RunFolder

SETTINGS = ["train.report=false", "train.checkpoint_every_steps=4"]  # 10 steps an epoch


@pytest.fixture(scope="module")
def finished_run(tiny_fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run; tests work on copies of it."""
    out = tmp_path_factory.mktemp("finished")
    return train(tiny_config_for(tiny_fashion_dir, out, *SETTINGS)).run_dir


@pytest.fixture(scope="module")
def stopped_run(tiny_fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run stopped after its first epoch (an exception from ``on_epoch``)."""
    out = tmp_path_factory.mktemp("stopped")

    def stop(row: dict) -> None:
        raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError, match="stopped by the test"):
        train(tiny_config_for(tiny_fashion_dir, out, *SETTINGS), on_epoch=stop)
    (run,) = out.iterdir()
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The CLI's error, checked to be a message and not a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- resuming ------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated to 100 kB", "emptied to 0 bytes"])
def test_damaged_last_checkpoint_resumes_from_the_newest_intact_one(
    damage, stopped_run, tmp_path, capsys, reliability
) -> None:
    run = copy_of(stopped_run, tmp_path)
    last = run / "checkpoints" / "last.pt"
    size = last.stat().st_size
    cut = 0 if damage == "emptied to 0 bytes" else min(100_000, size // 2)
    with last.open("r+b") as file:
        file.truncate(cut)
    rc, out, err = cli(capsys, "train", "--resume", run)
    assert rc == 0, err
    assert "warning: checkpoints/last.pt is damaged" in out
    assert "resuming from the newest intact checkpoint, checkpoints/best.pt" in out
    assert (run / "checkpoints" / "last.pt.damaged").stat().st_size < size  # kept, not lost
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and (run / "summary.json").is_file()
    said = next(line for line in out.splitlines() if line.startswith("resuming from"))
    reliability.record(
        "resume",
        f"--resume with checkpoints/last.pt ({size:,} bytes) cut to {cut:,} bytes",
        f"exit 0; '{said}'; finished",
    )


def test_no_intact_checkpoint_says_exactly_what_is_left(
    stopped_run, tmp_path, capsys, reliability
) -> None:
    run = copy_of(stopped_run, tmp_path)
    for name in ("last.pt", "best.pt"):
        (run / "checkpoints" / name).write_bytes(b"")
    rc, _out, err = cli(capsys, "train", "--resume", run)
    assert rc == 2
    line = one_error_line(err)
    assert "has no intact checkpoint to resume from" in line
    assert "checkpoints/last.pt: damaged: it is empty" in line
    assert "metrics.jsonl" in line and "(metrics of epochs 1-1)" in line
    assert f"tinyvision train {run / 'config.toml'}" in line
    reliability.record(
        "resume", "--resume with last.pt and best.pt both emptied", f"exit 2, {line}"
    )


def test_a_finished_run_is_left_as_it_is(finished_run, tmp_path, capsys, reliability) -> None:
    run = copy_of(finished_run, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc, out, err = cli(capsys, "train", "--resume", run)
    assert rc == 0, err
    assert f"{run} is finished: 2 epochs of 2 done, final test accuracy" in out
    assert f"tinyvision train --resume {run} --epochs N" in out
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.lock"}
    assert after == {p: b for p, b in before.items() if p.name != "train.lock"}  # nothing rewritten
    reliability.record(
        "resume", "--resume of a finished run", f"exit 0, no file changed; '{out.strip()}'"
    )


def test_extending_a_run_rebuilds_the_schedule_for_the_new_total(
    finished_run, tmp_path, capsys, reliability
) -> None:
    run = copy_of(finished_run, tmp_path)
    rc, out, err = cli(capsys, "train", "--resume", run, "--epochs", 4)
    assert rc == 0, err
    assert f"extending {run} from 2 to 4 epochs (2 done)" in out
    config = load_config(run / "config.toml")
    assert config.train.epochs == 4  # a later --resume keeps the new total
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    steps = 10  # per epoch: 640 images, batches of 64
    # The steps done are kept and the rate is a 4-epoch schedule's from there on: epoch 2 ended
    # at the 2-epoch cosine's floor, epoch 3 is back up where a 4-epoch cosine is at step 30.
    lr = config.optim.lr
    assert rows[1]["lr"] == pytest.approx(lr * lr_factor(20, config.schedule, steps, 20))
    assert rows[2]["lr"] == pytest.approx(lr * lr_factor(30, config.schedule, steps, 40))
    assert rows[3]["lr"] == pytest.approx(lr * lr_factor(40, config.schedule, steps, 40))
    assert rows[2]["lr"] > rows[1]["lr"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 4
    reliability.record(
        "resume",
        "--resume RUN --epochs 4 of a finished 2-epoch run (cosine schedule)",
        "trained epochs 3 and 4; config.toml now says 4; the schedule is rebuilt for 4 epochs "
        f"with the 20 steps done kept: lr at the end of epoch 2 {rows[1]['lr']:.2e} (the "
        f"2-epoch floor), epoch 3 {rows[2]['lr']:.2e}, epoch 4 {rows[3]['lr']:.2e}, as a "
        "4-epoch schedule has them",
    )


def test_extending_to_fewer_epochs_than_done_is_refused(
    finished_run, tmp_path, capsys, reliability
) -> None:
    run = copy_of(finished_run, tmp_path)
    rc, _, err = cli(capsys, "train", "--resume", run, "--epochs", 1)
    assert rc == 2
    line = one_error_line(err)
    assert "--epochs 1 is fewer than the 2 epochs" in line and "give at least 2" in line
    assert load_config(run / "config.toml").train.epochs == 2
    reliability.record("resume", "--resume RUN --epochs 1 of a 2-epoch run", f"exit 2, {line}")


def test_resume_refuses_flags_it_would_ignore(finished_run, capsys) -> None:
    rc, _, err = cli(capsys, "train", "--resume", finished_run, "--seed", 3)
    assert rc == 2 and "give no config file, overrides or --seed" in one_error_line(err)


def test_a_run_stopped_before_its_first_checkpoint_starts_again_in_its_folder(
    tiny_config, capsys, reliability
) -> None:
    config = tiny_config(*SETTINGS)
    with holding_locks():
        run = RunFolder.create(config)  # what a process killed before its first save leaves
    rc, out, err = cli(capsys, "train", "--resume", run.path)
    assert rc == 0, err
    said = next(line for line in out.splitlines() if "first checkpoint" in line)
    assert "stopped before its first checkpoint: starting it again from the beginning" in said
    assert "mixer on fashion-mnist, 2 epochs" in said
    assert [p.name for p in config.train.out_dir.iterdir()] == [run.path.name]  # same folder
    assert json.loads((run.path / "summary.json").read_text())["epochs"] == 2
    reliability.record("resume", "--resume of a run killed before its first checkpoint", said)


# --- two processes on one run folder -------------------------------------------------------


def test_a_second_process_on_a_training_run_is_refused_and_a_kill_leaves_no_lock(
    tiny_fashion_dir, tmp_path, reliability
) -> None:
    out = tmp_path / "runs"
    args = [
        f'data.data_dir="{tiny_fashion_dir}"',
        "data.verify=false",
        "data.download=false",
        f'train.out_dir="{out}"',
        "train.epochs=1000",  # runs until the test kills it
        "train.progress=off",
        "train.threads=1",
        *SETTINGS,
        "model.name=mixer",
        "model.patch_size=7",
        "model.dim=16",
        "model.depth=1",
    ]
    command = [sys.executable, "-m", "tinyvision", "train"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "first.log"
    with log.open("w") as file:
        first = subprocess.Popen([*command, *args], stdout=file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/checkpoints/last.pt")):
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        (run,) = out.iterdir()
        second = subprocess.run(
            [*command, "--resume", str(run)], capture_output=True, text=True, env=env, timeout=120
        )
        assert first.poll() is None, "the first process ended: the test proves nothing"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert second.returncode == 2
    line = one_error_line(second.stderr)
    assert f"{run} is in use: process {first.pid} (on " in line
    with holding_locks():  # the kernel dropped the killed process's lock
        lock_run(run)
    reliability.record(
        "locking",
        "`--resume RUN` while another process trains RUN (two real processes)",
        f"the second exits 2: {line}",
    )
    reliability.record(
        "locking", "the training process is SIGKILLed", "its lock is gone: the folder locks again"
    )


# --- full disks, read-only folders -----------------------------------------------------------


class FailingDisk:
    """Stands in for ``os`` and ``tempfile`` in ``tinyvision.runs``: the ``count``-th write of
    a file named ``name`` fails with ``code`` (at its first write call, or at mkstemp)."""

    def __init__(self, monkeypatch, name: str, count: int, code: int, at: str = "write") -> None:
        self.name, self.count, self.code, self.at, self.seen = name, count, code, at, 0
        real_os, real_tempfile = os, tinyvision.runs.tempfile
        disk = self

        def mkstemp(*, dir, prefix, suffix):
            if prefix == f".{name}." and at == "mkstemp":
                disk.seen += 1
                if disk.seen == count:
                    raise OSError(code, os.strerror(code), str(Path(dir) / name))
            return real_tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)

        def fdopen(fd: int, mode: str):
            file = real_os.fdopen(fd, mode)
            target = Path(real_os.readlink(f"/proc/self/fd/{fd}")).name
            if at == "write" and target.startswith(f".{name}."):
                disk.seen += 1
                if disk.seen == count:
                    return FullFile(file, code)
            return file

        fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if k[0] != "_"})
        fake_os.fdopen = fdopen
        fake_tempfile = types.SimpleNamespace(mkstemp=mkstemp)
        monkeypatch.setattr(tinyvision.runs, "os", fake_os)
        monkeypatch.setattr(tinyvision.runs, "tempfile", fake_tempfile)


class FullFile:
    def __init__(self, file, code: int) -> None:
        self._file, self._code = file, code

    def write(self, data) -> int:
        raise OSError(self._code, os.strerror(self._code))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


# last.pt is written at steps 4, 8 and 10 (the end of epoch 1): the third write fails.
@pytest.mark.parametrize(("name", "count"), [("last.pt", 3), ("curves.png", 1)])
def test_a_full_disk_says_what_is_safe_and_resume_finishes(
    name, count, tiny_config, monkeypatch, capsys, reliability
) -> None:
    config = tiny_config(*SETTINGS)
    disk = FailingDisk(monkeypatch, name, count, errno.ENOSPC)
    config_file = config.train.out_dir.parent / "config.toml"
    config_file.write_text(config.to_toml())
    rc, _out, err = cli(capsys, "train", config_file)
    assert disk.seen == count and rc == 2
    assert "Traceback" not in err and "inline_container" not in err
    first, second = err.strip().splitlines()
    (run,) = config.train.out_dir.iterdir()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["state"]
    assert first.startswith(f"error: the disk holding {run} is full (writing ")
    assert "the checkpoint on disk is intact (checkpoints/last.pt: " in first
    assert f"step {state['global_step']}" in first
    assert (
        second == f"free some space, then continue the run with:  tinyvision train --resume {run}"
    )
    assert not list(run.rglob("*.tmp"))
    monkeypatch.undo()  # space freed
    rc, _, err = cli(capsys, "train", "--resume", run)
    assert rc == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    reliability.record(
        "disk",
        f"disk full (ENOSPC) while writing {name}"
        + (f" (the {count}rd checkpoint, end of epoch 1)" if name == "last.pt" else ""),
        f"exit 2, no traceback: '{first} / {second}'; --resume then finished the run",
    )


def test_export_to_a_read_only_folder_is_one_line(finished_run, monkeypatch, capsys, reliability):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    FailingDisk(monkeypatch, "model.onnx", 1, errno.EROFS, at="mkstemp")
    target = finished_run.parent / "read-only" / "model.onnx"
    rc, _, err = cli(capsys, "export", finished_run, "--out", target, "--no-check")
    assert rc == 2
    line = one_error_line(err)
    assert line == f"error: cannot write {target}: Read-only file system"
    reliability.record("disk", "`tinyvision export RUN --out READ-ONLY-DIR/model.onnx`", line)


def test_evaluate_on_a_read_only_run_prints_the_results_then_says_saving_failed(
    finished_run, tmp_path, monkeypatch, capsys, reliability
) -> None:
    run = copy_of(finished_run, tmp_path)
    FailingDisk(monkeypatch, "evaluation.json", 1, errno.EROFS, at="mkstemp")
    rc, out, err = cli(capsys, "evaluate", run, "--device", "cpu")
    assert rc == 2
    assert "test accuracy: " in out and "(plain)" in out and "(test-time augmentation" in out
    line = one_error_line(err)
    assert line.startswith("error: the results were not saved: cannot write ")
    assert "evaluation.json: Read-only file system" in line
    reliability.record(
        "disk",
        "`tinyvision evaluate RUN` on a read-only run folder",
        f"the accuracies printed first, then exit 2: {line}",
    )


# --- what is given as a config, what training says before it starts ------------------------


@pytest.mark.parametrize("given", ["a JPEG", "a folder"])
def test_a_config_that_is_not_a_text_file(given, tmp_path, capsys, reliability) -> None:
    if given == "a JPEG":
        path = tmp_path / "photo.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)))
        want = f"error: {path} is not a text file (it is not UTF-8)"
    else:
        path = tmp_path / "configs"
        path.mkdir()
        want = f"error: config file '{path}' is a folder, not a file"
    rc, _, err = cli(capsys, "train", path)
    assert rc == 2
    line = one_error_line(err)
    assert line.startswith(want)
    reliability.record("config file", f"{given} given as the config file", f"exit 2, {line}")


@pytest.mark.parametrize("given", ["no config", "an empty config file"])
def test_training_the_defaults_says_so(given, tmp_path, monkeypatch, capsys, reliability) -> None:
    started = []

    def train_stand_in(config):  # what the CLI would train, without training it
        started.append(config)
        return RunResult(tmp_path, {}, main=False)  # main=False: the CLI writes no report

    monkeypatch.setattr(tinyvision.engine, "train", train_stand_in)
    args = ["train"]
    if given == "an empty config file":
        (tmp_path / "empty.toml").write_text("# nothing yet\n")
        args.append(tmp_path / "empty.toml")
    rc, out, _ = cli(capsys, *args)
    assert rc == 0 and len(started) == 1
    why = "no config file given" if given == "no config" else f"{tmp_path / 'empty.toml'} sets "
    assert out.startswith(why)
    assert "the built-in defaults: training mixer on fashion-mnist for 10 epochs" in out
    reliability.record("config file", f"`tinyvision train` with {given}", out.strip())


def test_training_prints_where_its_data_came_from(tiny_config, capsys, reliability) -> None:
    config = tiny_config(*SETTINGS, "train.epochs=1", "train.report=true")
    report_when_asked(train(config))  # the report, as `tinyvision train` writes it
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("data: "))
    assert line.startswith(f"data: {config.data.data_dir} (found by: data_dir argument; ")
    assert "for 1 epoch on" in out and "after 1 epoch," in out  # not "1 epochs"
    final = next(line for line in out.splitlines() if line.startswith("final test accuracy"))
    assert "(train accuracy " in final
    assert "running mean over the last epoch's augmented training batches" in final
    run = Path(next(line for line in out.splitlines() if line.startswith("run folder: "))[12:])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_train_acc_is"].startswith("running mean over the last epoch's")
    report = (run / "report.md").read_text()
    assert "final train accuracy (running mean over the last epoch's augmented" in report
    reliability.record("data folder", "where the data came from, at the start of training", line)
    reliability.record(
        "cli",
        "one epoch; the final train accuracy (counted during training, not evaluated)",
        f"'for 1 epoch', not '1 epochs'; '{final}'; summary.json final_train_acc_is and "
        "report.md say the same",
    )


@pytest.mark.parametrize("case", ["does not exist", "holds no data set"])
def test_train_with_a_data_dir_that_is_not_there_is_refused(
    case, tmp_path, capsys, reliability
) -> None:
    named = tmp_path / "nowhere"
    if case == "holds no data set":
        named.mkdir()
    rc, _, err = cli(capsys, "train", "--data-dir", named, "--out", tmp_path / "runs")
    assert rc == 2 and "Traceback" not in err
    assert f"error: no Fashion-MNIST in the data folder you named, {named}" in err
    assert not (tmp_path / "runs").exists()
    first = " / ".join(err.splitlines()[:2])
    reliability.record(
        "data folder", f"`tinyvision train --data-dir DIR`, DIR {case}", f"exit 2, {first}"
    )


@pytest.mark.parametrize("progress", ["auto", "off"])
def test_off_a_terminal_a_line_is_printed_within_each_epoch(
    progress, tiny_config, monkeypatch, capsys, reliability
) -> None:
    default = tinyvision.loop.PROGRESS_SECONDS
    monkeypatch.setattr(tinyvision.loop, "PROGRESS_SECONDS", 0.0)  # every step, for the test
    train(tiny_config(*SETTINGS, f"train.progress={progress}", "train.epochs=1"))
    out = capsys.readouterr().out  # captured: not a terminal
    lines = [line.strip() for line in out.splitlines() if line.startswith("  epoch 1/1: step")]
    if progress == "off":
        assert lines == []
        return
    assert [line.split()[3] for line in lines] == [f"{n}/10" for n in range(1, 10)]
    reliability.record(
        "cli",
        "training with its output not a terminal (progress bars off there)",
        f"a line within the epoch every {default:g} s by default, e.g. '{lines[-1]}'",
    )


def test_version_and_help_descriptions(capsys, reliability) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    version = capsys.readouterr().out.strip()
    assert version == f"tinyvision {tinyvision.__version__}"
    descriptions = {}
    for command in ("models", "data"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        # The description is the paragraph after the usage lines.
        descriptions[command] = text.split("\n\n")[1].replace("\n", " ").strip()
        assert len(descriptions[command]) > 40
    assert "model.name" in descriptions["models"]
    assert "TINYVISION_DATA" in descriptions["data"]
    reliability.record("cli", "`tinyvision --version`", f"'{version}'")
    for command, text in descriptions.items():
        reliability.record("cli", f"`tinyvision {command} --help`", f"describes it: '{text}'")
