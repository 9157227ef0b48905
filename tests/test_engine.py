import csv
import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REAL_FASHION

from tinyvision.config import ScheduleConfig, load_config
from tinyvision.engine import train
from tinyvision.errors import TinyVisionError, TrainingError
from tinyvision.models import create_model
from tinyvision.models.dynconv import DynamicConv2d
from tinyvision.optim import build_optimizer, lr_factor


def test_loss_falls_on_a_small_batch():
    torch.manual_seed(0)
    model = create_model(
        "mixer",
        in_chans=1,
        num_classes=10,
        image_size=(28, 28),
        patch_size=7,
        dim=32,
        depth=2,
        token_hidden=16,
        channel_hidden=64,
    )
    config = load_config(None, ["optim.lr=3e-3"])
    optimizer = build_optimizer(model, config.optim)
    images, labels = torch.randn(32, 1, 28, 28), torch.arange(32) % 10
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_weight_decay_spares_norms_and_biases():
    model = create_model("mixer", in_chans=1, num_classes=10, image_size=(28, 28), dim=8, depth=1)
    config = load_config(None, ["optim.weight_decay=0.1"])
    decay, no_decay = build_optimizer(model, config.optim).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["params"]


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "onecycle"])
def test_schedules_warm_up_then_follow_their_shape(name):
    cfg = ScheduleConfig(name=name, warmup_epochs=1, step_epochs=2, gamma=0.5, min_lr_ratio=0.1)
    steps_per_epoch, total = 10, 60
    factors = [lr_factor(s, cfg, steps_per_epoch, total) for s in range(total)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up
    after = factors[10:]
    if name == "constant":
        assert after == pytest.approx([1.0] * 50)
    elif name == "step":  # x0.5 every 2 epochs, counted from the start
        assert after[0] == 1.0 and factors[20] == 0.5 and factors[40] == 0.25
    else:  # cosine and onecycle fall monotonically from 1 towards min_lr_ratio
        assert after[0] == pytest.approx(1.0)
        assert all(a >= b for a, b in itertools.pairwise(after))
        assert after[-1] == pytest.approx(0.1, abs=0.03)
    if name == "cosine":
        assert factors[35] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_run_folder_holds_every_artefact(tiny_config):
    config = tiny_config("data.val_size=100")
    result = train(config)
    run = result.run_dir
    names = {p.name for p in run.iterdir()}
    assert {
        "config.toml",
        "environment.json",
        "metrics.jsonl",
        "metrics.csv",
        "steps.csv",
        "curves.png",
        "checkpoints",
        "model.pt",
        "summary.json",
    } <= names
    assert load_config(run / "config.toml") == config  # every hyperparameter, reloadable

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        for key in (
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "test_loss",
            "test_acc",
            "lr",
            "epoch_seconds",
        ):
            assert key in row
    csv_rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [float(r["test_acc"]) for r in csv_rows] == [r["test_acc"] for r in rows]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_acc"] == rows[-1]["test_acc"] == result.summary["final_test_acc"]
    assert summary["final_test_acc"] > 0.5  # the tiny data set is easy; chance is 0.1
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["data"]["location"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "checkpoints" / "last.pt").is_file() and (
        run / "checkpoints" / "best.pt"
    ).is_file()

    saved = torch.load(run / "model.pt", weights_only=False)
    model = create_model(
        saved["model_name"],
        in_chans=saved["in_chans"],
        num_classes=saved["num_classes"],
        image_size=saved["image_size"],
        **saved["model_params"],
    )
    model.load_state_dict(saved["model"])


def test_runs_never_overwrite_each_other(tiny_config):
    config = tiny_config("train.epochs=1", "train.name=same")
    first, second = train(config).run_dir, train(config).run_dir
    assert first != second and first.parent == second.parent


class Crash(Exception):
    pass


def test_crash_mid_epoch_then_resume_gives_the_uninterrupted_result(tiny_config, monkeypatch):
    """Crash at step 17 (epoch 2 of 3; a checkpoint every 3 steps), resume from the checkpoint
    on disk: the weights and metrics equal those of an uninterrupted run, bit for bit."""
    settings = (
        "train.epochs=3",
        "train.deterministic=true",
        "train.checkpoint_every_steps=3",
        "augment.flip=true",
        "augment.crop_padding=2",
        "model.dropout=0.1",
        "train.ema_decay=0.9",
    )
    uninterrupted = train(tiny_config(*settings))

    import tinyvision.engine

    real_create_model = tinyvision.engine.create_model
    calls = {"train": 0}

    def crashing_model(*args, **kwargs):
        model = real_create_model(*args, **kwargs)

        def hook(module, inputs):
            if module.training:
                calls["train"] += 1
                if calls["train"] == 17:
                    raise Crash

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(tinyvision.engine, "create_model", crashing_model)
    with pytest.raises(Crash):
        train(tiny_config(*settings))
    monkeypatch.undo()
    (run_dir,) = [p for p in uninterrupted.run_dir.parent.iterdir() if p != uninterrupted.run_dir]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["state"]["global_step"] == 15 and checkpoint["state"]["step_in_epoch"] == 5

    resumed = train(resume=run_dir)
    env = json.loads((run_dir / "environment.json").read_text())
    assert len(env["resumed"]) == 1  # the first session's record stays; the resumption is added
    assert env["date"] <= env["resumed"][0]["date"] and env["resumed"][0]["torch"]
    a = torch.load(resumed.run_dir / "model.pt", weights_only=False)["model"]
    b = torch.load(uninterrupted.run_dir / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    rows_a = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows_b = [
        json.loads(x) for x in (uninterrupted.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows_a] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert ra[key] == rb[key], key


def test_non_finite_loss_stops_with_the_step_and_the_likely_cause(tiny_config):
    config = tiny_config("optim.name=sgd", "optim.lr=1e12", "optim.momentum=0.0")
    with pytest.raises(TrainingError, match=r"became (nan|inf) at step \d+ .*optim.lr = 1e\+12"):
        train(config)


def test_bad_input_fails_before_a_run_folder_exists(tiny_config, tmp_path):
    config = tiny_config("model.patch_size=5")
    with pytest.raises(TinyVisionError, match="patch_size 5 does not divide"):
        train(config)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(TinyVisionError, match="larger than the"):
        train(tiny_config("data.batch_size=100000"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_short_training_on_real_fashion_mnist(tmp_path):
    """One epoch of a small Mixer on the real data: well above chance (stated bar: 80%)."""
    config = load_config(
        None,
        [
            f'train.out_dir="{tmp_path}"',
            "train.epochs=1",
            "train.progress=off",
            "model.patch_size=7",
            "model.dim=64",
            "model.depth=2",
            "model.token_hidden=32",
            "model.channel_hidden=128",
            "data.batch_size=128",
            "optim.lr=2e-3",
        ],
    )
    summary = train(config).summary
    assert summary["final_test_acc"] >= 0.80


SHIPPED = sorted(
    p
    for p in (Path(__file__).parent.parent / "configs").glob("*.toml")
    if not p.name.startswith("sweep-")
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_builds_and_takes_a_training_step(path):
    config = load_config(path)
    shape = (3, 32, 32) if config.data.dataset == "cifar10" else (1, 28, 28)
    torch.manual_seed(0)
    model = create_model(
        config.model_name,
        in_chans=shape[0],
        num_classes=10,
        image_size=shape[1:],
        **config.model_params,
    )
    optimizer = build_optimizer(model, config.optim)
    images, labels = torch.randn(8, *shape), torch.arange(8)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(images), labels, label_smoothing=config.train.label_smoothing)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
@pytest.mark.parametrize(
    ("model", "bar"),
    [("resmlp_brief", 0.80), ("densenet_brief", 0.60)],  # 10-class chance: 0.10
)
def test_short_real_training_of_each_fashion_family_beats_chance(model, bar, tmp_path):
    config = load_config(
        None,
        [
            f'train.out_dir="{tmp_path}"',
            "train.epochs=1",
            "train.progress=off",
            f"model.name={model}",
            "data.batch_size=128",
            "optim.lr=2e-3",
            "train.report=false",
        ],
    )
    assert train(config).summary["final_test_acc"] >= bar


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/venv/bin/tinyvision", "train", "a b.toml"], "tinyvision train 'a b.toml'"),
        (
            ["/src/tinyvision/__main__.py", "train", 'train.name="x"'],
            "python -m tinyvision train 'train.name=\"x\"'",
        ),
        (["bench.py", "--seed", "1"], "bench.py --seed 1"),
    ],
)
def test_runs_record_the_command_as_a_user_types_it_again(argv, expected, monkeypatch):
    from tinyvision.runs import command_line

    monkeypatch.setattr(sys, "argv", argv)
    assert command_line() == expected


@pytest.mark.parametrize(("setting", "expected"), [("auto", True), ("off", False)])
def test_conv_models_train_channels_last_on_the_cpu_unless_switched_off(
    setting, expected, tiny_config, monkeypatch
):
    import tinyvision.engine

    real_create_model = tinyvision.engine.create_model
    layouts = []

    def recording_model(*args, **kwargs):
        model = real_create_model(*args, **kwargs)
        for conv in model.modules():
            # Inputs of more than one channel: with one, both layouts are the same strides.
            if isinstance(conv, torch.nn.Conv2d) and conv.in_channels > 1:
                conv.register_forward_pre_hook(
                    lambda module, inputs: layouts.append(
                        "nhwc" if not inputs[0].is_contiguous() else "nchw"
                    )
                )
        return model

    monkeypatch.setattr(tinyvision.engine, "create_model", recording_model)
    result = train(
        tiny_config(
            'model={name="densenet_brief"}', "train.epochs=1", f"train.channels_last={setting}"
        )
    )
    assert layouts and set(layouts) == {"nhwc" if expected else "nchw"}
    assert result.summary["final_test_acc"] > 0.1


def test_dynamic_conv_model_with_plain_convs_trains_channels_last(tiny_config, monkeypatch):
    """Brief B's network with an ordinary-conv stem: its 5-D dynamic kernels have no NHWC
    layout, so the engine converts the ordinary convolutions only (model.to() raised)."""
    import tinyvision.engine

    real_create_model = tinyvision.engine.create_model
    models = []
    monkeypatch.setattr(
        tinyvision.engine,
        "create_model",
        lambda *args, **kwargs: models.append(real_create_model(*args, **kwargs)) or models[-1],
    )
    dynconv = 'model={name="dynconv", stem="plain", stem_width=4, widths=[4, 4], strides=[2, 2]}'
    result = train(tiny_config(dynconv, "train.epochs=1", "train.channels_last=on"))
    assert math.isfinite(result.summary["final_test_loss"])
    convs = [m for m in models[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    dynamic = [m for m in models[0].modules() if isinstance(m, DynamicConv2d)]
    assert dynamic and all(d.weight.is_contiguous() for d in dynamic)  # 5-D, left as it was


def test_all_dynamic_conv_model_gets_channels_last_batches_on_the_cpu(tiny_config, monkeypatch):
    """Brief B's network without one nn.Conv2d still trains channels-last under "auto": its
    dynamic convolutions compute NHWC on the CPU (method "nhwc")."""
    import tinyvision.engine

    real_create_model = tinyvision.engine.create_model
    layouts = []

    def recording_model(*args, **kwargs):
        model = real_create_model(*args, **kwargs)
        for conv in model.modules():
            if isinstance(conv, DynamicConv2d) and conv.in_chans > 1:
                conv.register_forward_pre_hook(
                    lambda module, inputs: layouts.append(
                        "nhwc" if not inputs[0].is_contiguous() else "nchw"
                    )
                )
        return model

    monkeypatch.setattr(tinyvision.engine, "create_model", recording_model)
    dynconv = 'model={name="dynconv", stem_width=4, widths=[4, 4], strides=[2, 2]}'
    result = train(tiny_config(dynconv, "train.epochs=1"))
    assert math.isfinite(result.summary["final_test_loss"])
    assert layouts and set(layouts) == {"nhwc"}


def test_ema_decay_warms_up_with_the_step_count():
    """Update n uses min(decay, (1 + n) / (10 + n)): the first updates follow the weights."""
    from tinyvision.engine import make_ema

    model = torch.nn.Linear(3, 2)
    ema = make_ema(model, 0.999)
    expected = model.weight.detach().clone()
    for n in range(5):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update_parameters(model)
        # n = 0 copies the weights; after that the warm-up decay applies
        decay = 0.0 if n == 0 else min(0.999, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * model.weight.detach()
        assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    # A fixed 0.999 would still be almost the initial weights; the warmed-up average is near now.
    assert (model.weight - ema.module.weight).abs().max() < 2.0


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FASHION.exists(), reason="needs the real Fashion-MNIST")
def test_a_one_epoch_ema_run_scores_close_to_the_plain_weights(tmp_path):
    """The case that was scored as chance (9.21% vs 47.90%) before the decay warmed up."""
    common = [
        "train.epochs=1",
        "model.name=mixer",
        "model.patch_size=7",
        "model.depth=1",
        "model.dim=32",
        "model.token_hidden=16",
        "model.channel_hidden=64",
        "optim.lr=3e-3",
        "data.val_size=1000",
        "train.threads=1",
        "train.progress=off",
        "train.report=false",
        f'train.out_dir="{tmp_path}"',
    ]
    plain = train(load_config(None, [*common, "train.ema_decay=0"]))
    averaged = train(load_config(None, [*common, "train.ema_decay=0.999"]))
    assert plain.summary["final_test_acc"] > 0.4
    assert abs(averaged.summary["final_test_acc"] - plain.summary["final_test_acc"]) < 0.05


def test_a_warm_up_as_long_as_the_run_is_warned_about(tiny_config):
    with pytest.warns(UserWarning, match="warmup_epochs .* not shorter than train.epochs"):
        train(tiny_config("train.epochs=1", "schedule.warmup_epochs=1", "train.report=false"))


# --- the loss curves say what they show ----------------------------------------------------


def record_steps(
    monkeypatch: pytest.MonkeyPatch, smoothing: float = 0.0
) -> list[tuple[float, float, int, float, float]]:
    """Every training step's (loss, plain CE, batch size, then recomputed from its logits: the
    plain CE and the CE with label smoothing ``smoothing``)."""
    import tinyvision.loop

    steps = []
    real_add = tinyvision.loop.EpochTotals.add

    def add(self, loss, plain_ce, logits, targets):
        logits = logits.detach().float()
        plain = F.cross_entropy(logits, targets).item()
        smoothed = F.cross_entropy(logits, targets, label_smoothing=smoothing).item()
        steps.append((loss.item(), plain_ce.item(), targets.shape[0], plain, smoothed))
        real_add(self, loss, plain_ce, logits, targets)

    monkeypatch.setattr(tinyvision.loop.EpochTotals, "add", add)
    return steps


def test_each_point_of_the_loss_curve_is_the_mean_of_exactly_its_steps(tiny_config, monkeypatch):
    from tinyvision.loop import LOG_EVERY
    from tinyvision.runs import RunFolder

    steps = record_steps(monkeypatch)
    # 640 images in batches of 24: 26 steps an epoch, not a multiple of LOG_EVERY (20), so the
    # points on either side of an epoch boundary cover steps of two epochs' windows.
    run = train(tiny_config("data.batch_size=24", "train.epochs=3")).run_dir
    steps_per_epoch = 640 // 24
    points = RunFolder.open(run).read_steps()
    losses = [step[0] for step in steps]
    assert len(losses) == 3 * steps_per_epoch
    covered = 0
    for step, epoch_float, value in points:
        assert value == pytest.approx(sum(losses[covered:step]) / (step - covered), rel=1e-5)
        assert epoch_float == pytest.approx(step / steps_per_epoch, abs=1e-4)  # 4 decimals
        covered = step
    assert covered == len(losses)  # every step is in exactly one point
    # Right after the first epoch boundary (step 26), the point at step 40 is the mean of
    # steps 27..40, not their sum over LOG_EVERY (the dip the curve used to show).
    after = next(point for point in points if point[0] > steps_per_epoch)
    assert after[0] == 2 * LOG_EVERY
    assert after[2] == pytest.approx(sum(losses[steps_per_epoch:40]) / (40 - steps_per_epoch))


def test_metrics_keep_the_plain_cross_entropy_beside_the_smoothed_objective(
    tiny_config, monkeypatch
):
    steps = record_steps(monkeypatch, smoothing=0.2)
    run = train(tiny_config("train.label_smoothing=0.2", "train.epochs=1")).run_dir
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seen = sum(n for _, _, n, _, _ in steps)
    for loss, plain_ce, _, plain, smoothed in steps:
        assert plain_ce == pytest.approx(plain, rel=1e-5)  # no smoothing in train_ce
        assert loss == pytest.approx(smoothed, rel=1e-5)  # the objective has it
    assert row["train_ce"] == pytest.approx(sum(c * n for _, c, n, _, _ in steps) / seen, rel=1e-5)
    assert row["train_loss"] == pytest.approx(
        sum(x * n for x, _, n, _, _ in steps) / seen, rel=1e-5
    )
    assert abs(row["train_loss"] - row["train_ce"]) > 0.01  # a gap the figure must not hide

    steps.clear()
    run = train(tiny_config("train.epochs=1")).run_dir  # without smoothing they are one value
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["train_ce"] == row["train_loss"]


def test_the_curves_figure_compares_cross_entropy_with_cross_entropy(tiny_config, monkeypatch):
    import tinyvision.plots

    legends = {}
    real_save = tinyvision.plots._save_figure

    def save(fig, path):
        if path.name == "curves.png":
            legends["loss"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        return real_save(fig, path)

    monkeypatch.setattr(tinyvision.plots, "_save_figure", save)
    train(tiny_config("train.label_smoothing=0.1", "train.epochs=1"))
    assert legends["loss"] == [
        "train objective (label smoothing 0.1), every few steps",
        "train cross-entropy (epoch mean)",
        "train objective (label smoothing 0.1) (epoch mean)",
        "test cross-entropy",
    ]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_trains_and_warns_only_without_bf16_instructions(
    tiny_config, monkeypatch, native
):
    import warnings

    monkeypatch.setattr("tinyvision.engine.cpu_has_native_bf16", lambda: native)
    config = tiny_config("train.epochs=1", "train.precision=bf16", "train.report=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    emulated = [w for w in caught if "no bf16 instructions" in str(w.message)]
    assert len(emulated) == (0 if native else 1)
    assert result.summary["final_test_acc"] > 0.2  # bf16 autocast still learns the tiny set


class _LeftHalfModel(torch.nn.Module):
    """Logits from the left half of the image only: a mirror image gives other predictions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[..., :2].flatten(1))


def test_evaluation_with_flip_tta_averages_the_softmax_of_image_and_mirror():
    import contextlib

    from tinyvision.data import DeviceLoader
    from tinyvision.loop import evaluate

    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 3, (50,), generator=generator)
    loader = DeviceLoader(
        images, labels, batch_size=16, mean=[0.5], std=[0.25], shuffle=False, drop_last=False
    )
    model = _LeftHalfModel()
    plain = evaluate(model, loader, contextlib.nullcontext())
    flip = evaluate(model, loader, contextlib.nullcontext(), tta="flip")
    assert set(plain) == {"loss", "acc"} and set(flip) == {"loss", "acc", "loss_tta", "acc_tta"}
    assert flip["acc"] == plain["acc"] and flip["loss"] == pytest.approx(plain["loss"])

    x = (images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert flip["acc_tta"] == pytest.approx((probs.argmax(1) == labels).float().mean().item())
    assert flip["loss_tta"] == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-5)
    assert flip["acc_tta"] != plain["acc"]  # the mirror views did change predictions


def test_a_run_with_eval_tta_logs_plain_and_averaged_accuracy_of_each_split(tiny_config):
    result = train(tiny_config("data.val_size=100", 'train.eval_tta="flip"', "train.epochs=1"))
    row = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for split in ("val", "test"):
        assert 0.0 <= row[f"{split}_acc_tta"] <= 1.0 and row[f"{split}_loss_tta"] > 0
    assert result.summary["eval_tta"] == "flip"
    assert result.summary["final_test_acc_tta"] == row["test_acc_tta"]
    assert result.summary["final_val_acc_tta"] == row["val_acc_tta"]
    plain = train(tiny_config("data.val_size=100", "train.epochs=1"))
    assert plain.summary["final_test_acc"] == result.summary["final_test_acc"]  # same seed
    assert plain.summary["final_test_acc_tta"] is None


def test_an_unknown_eval_tta_is_a_config_error(tiny_config):
    with pytest.raises(TinyVisionError, match="eval_tta"):
        tiny_config('train.eval_tta="rotate"')
