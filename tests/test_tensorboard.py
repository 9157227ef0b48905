"""``--tensorboard``: event files in the run folder that say what metrics.jsonl says."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tinyvision.cli import main
from tinyvision.engine import train
from tinyvision.errors import TinyVisionError


def read_events(run_dir):
    # The optional extra, in [dev]: CI has it.
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0}
    )
    events.Reload()
    return events


def test_event_files_hold_every_metric_the_step_loss_lr_and_the_confusion_matrix(
    tiny_fashion_dir, tmp_path, capsys
):
    out = tmp_path / "runs"
    code = main(
        [
            "train",
            "--tensorboard",
            "--epochs",
            "2",
            "--data-dir",
            str(tiny_fashion_dir),
            "--no-verify",
            "--no-download",
            "--out",
            str(out),
            "train.progress=off",
            "train.threads=1",
            "data.val_size=64",  # the validation split's metrics go to TensorBoard too
            "model.patch_size=7",
            "model.dim=16",
            "model.depth=1",
            "data.batch_size=32",  # 18 steps an epoch: the step loss is logged every 20
        ]
    )
    assert code == 0, capsys.readouterr().err
    (run_dir,) = out.iterdir()
    events = read_events(run_dir)
    tags = set(events.Tags()["scalars"])

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for key in rows[0]:
        scalars = events.Scalars(f"metrics/{key}")
        assert [s.step for s in scalars] == [row["step"] for row in rows], key
        # Event files store float32: each value is the metrics.jsonl value, so rounded.
        assert [s.value for s in scalars] == [np.float32(row[key]) for row in rows], key
    assert {"metrics/val_acc", "metrics/test_acc", "metrics/lr"} <= tags

    steps = (run_dir / "steps.csv").read_text().splitlines()[1:]
    logged = events.Scalars("step/train_loss")
    assert [s.step for s in logged] == [int(line.split(",")[0]) for line in steps]
    assert [s.value for s in logged] == pytest.approx(
        [float(line.split(",")[2]) for line in steps], rel=1e-5
    )  # steps.csv keeps 6 significant digits
    assert len(events.Scalars("step/lr")) == len(logged)

    (image,) = events.Images("confusion_matrix")
    assert image.step == rows[-1]["step"] and image.width > 100 and image.height > 100


def test_confusion_matrix_is_drawn_as_an_rgb_image():
    from tinyvision import tensorboard

    confusion = np.array([[3, 1], [0, 4]])
    picture = tensorboard.confusion_image(confusion, ["a", "b"])
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8


def test_without_tensorboard_the_option_fails_in_one_line(tiny_config, monkeypatch):
    # As if the package were not installed: importing it raises ImportError.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    config = tiny_config("train.tensorboard=true")
    with pytest.raises(TinyVisionError) as err:
        train(config)
    message = str(err.value)
    assert "\n" not in message and "pip install 'tinyvision[tensorboard]'" in message
    assert not config.train.out_dir.exists()  # failed before a run folder was made


def test_resumed_run_logs_each_step_once(tiny_config):
    config = tiny_config("train.tensorboard=true", "train.epochs=2", "data.batch_size=32")

    class Stop(Exception):
        pass

    def stop_after_first(row):
        raise Stop

    with pytest.raises(Stop):
        train(config, on_epoch=stop_after_first)  # the checkpoint of epoch 1 is kept
    (run_dir,) = config.train.out_dir.iterdir()
    train(resume=run_dir)
    events = read_events(run_dir)
    steps = [s.step for s in events.Scalars("metrics/epoch")]
    assert steps == sorted(set(steps)) and len(steps) == 2


def test_run_started_again_before_its_first_checkpoint_logs_each_step_once(tiny_config):
    from tinyvision import tensorboard
    from tinyvision.lock import holding_locks
    from tinyvision.runs import RunFolder

    config = tiny_config("train.tensorboard=true", "train.epochs=1", "data.batch_size=32")
    with holding_locks():
        run = RunFolder.create(config)  # what a process killed before its first save leaves...
    stale = tensorboard.TensorBoardLog(run.path)  # ...with the step losses it had logged
    stale.log_step(20, 99.0, 0.5)
    stale.close()
    train(resume=run.path)  # starts again from step 0 in the same folder
    events = read_events(run.path)
    steps = (run.path / "steps.csv").read_text().splitlines()[1:]
    logged = events.Scalars("step/train_loss")
    assert [s.step for s in logged] == [int(line.split(",")[0]) for line in steps]
    assert 99.0 not in [s.value for s in logged]  # the stale point is hidden
