"""Bad input, end to end: every case goes through ``train()`` as a user's run would.

Data, config and model mistakes must be rejected with one clear message *before* training
starts, so no run folder may exist afterwards. Faults that can only show during training
(a NaN loss, weights turned non-finite, out of GPU memory) must stop the run with a message
naming the cause and leave the last good checkpoint intact and loadable, with no temporary
files behind. ``tests/test_data.py`` checks the readers case by case; here the same kinds of
damage are driven through the whole program.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import math
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

import tinyvision.engine
from tinyvision.data import DATASET_INFO, load_dataset, sources
from tinyvision.engine import train
from tinyvision.errors import ConfigError, DataError, TinyVisionError, TrainingError
from tinyvision.models import list_variants


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No fallback to the user's own copies: a damaged data_dir must not be silently skipped
    in favour of $TINYVISION_DATA, the user cache or /usr/share/datasets."""
    monkeypatch.delenv("TINYVISION_DATA", raising=False)
    monkeypatch.setenv("TINYVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_FOLDERS", {"fashion-mnist": [], "cifar10": []})


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def problem_lines(err: BaseException) -> str:
    """The message without the "invalid configuration:" heading: the lines a user acts on."""
    lines = str(err).strip().splitlines()
    return " / ".join(line.strip() for line in lines if line != "invalid configuration:")


# --------------------------------------------------------------------------------- data


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _gunzip(folder: Path, name: str) -> bytes:
    return gzip.decompress((folder / f"{name}.gz").read_bytes())


def _replace(folder: Path, name: str, data: bytes, *, compress: bool = True) -> None:
    """Put ``data`` in place of ``name`` (gzip-compressed unless told otherwise)."""
    (folder / f"{name}.gz").unlink()
    if compress:
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))
    else:
        (folder / name).write_bytes(data)


IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# (case, damage(folder), words the message must hold). The file's name is always required too.
DATA_FAULTS: list[tuple[str, Callable[[Path], None], str, str]] = [
    (
        "missing file",
        lambda d: (d / f"{TEST_LABELS}.gz").unlink(),
        TEST_LABELS,
        "missing t10k-labels-idx1-ubyte[.gz]",
    ),
    (
        "empty file",
        lambda d: (d / f"{IMAGES}.gz").write_bytes(b""),
        IMAGES,
        "truncated, 0 bytes is shorter than an IDX header",
    ),
    (
        "truncated gzip (cut in half)",
        lambda d: (d / f"{IMAGES}.gz").write_bytes((d / f"{IMAGES}.gz").read_bytes()[:2000]),
        IMAGES,
        "not a readable gzip file",
    ),
    (
        "truncated IDX contents",
        lambda d: _replace(d, IMAGES, _gunzip(d, IMAGES)[:-1000]),
        IMAGES,
        "truncated",
    ),
    (
        "trailing bytes after the IDX data",
        lambda d: _replace(d, LABELS, _gunzip(d, LABELS) + b"\0\0", compress=False),
        LABELS,
        "trailing bytes",
    ),
    (
        "corrupt gzip stream (bytes flipped)",
        lambda d: (d / f"{LABELS}.gz").write_bytes(
            (d / f"{LABELS}.gz").read_bytes()[:12]
            + bytes(255 - b for b in (d / f"{LABELS}.gz").read_bytes()[12:])
        ),
        LABELS,
        "not a readable gzip file",
    ),
    (
        "wrong format: a PNG named .gz",
        lambda d: (d / f"{IMAGES}.gz").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100)),
        IMAGES,
        "not a readable gzip file",
    ),
    (
        "wrong format: IDX magic of another type",
        lambda d: _replace(d, IMAGES, b"\x00\x00\x0d\x03" + _gunzip(d, IMAGES)[4:]),
        IMAGES,
        "wrong IDX magic number",
    ),
    (
        "wrong image shape (32x32 instead of 28x28)",
        lambda d: _replace(d, IMAGES, _idx(np.zeros((640, 32, 32)))),
        IMAGES,
        "shape (32, 32), expected (28, 28)",
    ),
    (
        "labels out of range (a label 10)",
        lambda d: _replace(d, LABELS, _gunzip(d, LABELS)[:-1] + b"\x0a"),
        LABELS,
        "range over [0, 10]",
    ),
    (
        "image and label counts differ",
        lambda d: _replace(d, LABELS, _idx(np.zeros(639))),
        LABELS,
        "639 labels",
    ),
]


@pytest.mark.parametrize(
    ("case", "damage", "file", "expected"), DATA_FAULTS, ids=[c[0] for c in DATA_FAULTS]
)
def test_damaged_data_stops_before_training(
    case, damage, file, expected, tiny_fashion_dir, tiny_config, tmp_path, reliability
):
    data = tmp_path / "data"
    shutil.copytree(tiny_fashion_dir, data)
    damage(data)
    with pytest.raises(DataError) as err:
        train(tiny_config(f'data.data_dir="{data}"'))
    assert expected in str(err.value) and file in str(err.value)
    assert not (tmp_path / "runs").exists()
    message = " / ".join(str(err.value).splitlines()[:3])  # missing data: where it looked
    reliability.record("data", case, f"DataError before training: {message}")


def test_wrong_checksum_is_refused_unless_the_user_trusts_the_copy(
    tiny_fashion_dir, tiny_config, tmp_path, reliability
):
    # The tiny files are not the official ones: with verification on, that is what is reported.
    with pytest.raises(DataError) as err:
        train(tiny_config("data.verify=true"))
    message = str(err.value)
    assert "checksum mismatch" in message and "--no-verify" in message
    assert not (tmp_path / "runs").exists()
    reliability.record(
        "data",
        "wrong checksum (not the official files, verify=true)",
        f"DataError before training: {first_line(err.value)} (+ expected and "
        "actual sha256 and the way out, --no-verify)",
    )


# --- interrupted downloads -----------------------------------------------------------------


class FlakyServer(http.server.SimpleHTTPRequestHandler):
    """Serves files; a request for a path in ``cut_first`` is cut off after half its bytes,
    once."""

    cut_first: ClassVar[dict[str, bool]] = {}  # path -> True while the next request is to be cut
    send_length = True  # False: no Content-Length, so only the hash can tell the file is short

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        cut = self.cut_first.pop(self.path, False)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.send_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if cut else data)
        self.wfile.flush()
        self.close_connection = True  # the connection drops: the download is interrupted

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Tiny Fashion-MNIST files served over HTTP, the download table pointed at them."""
    served = tmp_path / "served"
    served.mkdir()
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    handler = type("Handler", (FlakyServer,), {"cut_first": {}})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(served))
    )
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    rng = np.random.default_rng(0)
    downloads, checksums = [], {}
    for name in DATASET_INFO["fashion-mnist"].checksums:
        n = 20 if name.startswith("train") else 10
        array = rng.integers(0, 256, (n, 28, 28)) if "images" in name else np.arange(n) % 10
        raw = _idx(array)
        gz = gzip.compress(raw)
        (served / f"{name}.gz").write_bytes(gz)
        downloads.append(
            sources.Download(f"{url}{name}.gz", f"{name}.gz", "md5:" + hashlib.md5(gz).hexdigest())
        )
        checksums[name] = "sha256:" + hashlib.sha256(raw).hexdigest()
    handler.cut_first[urlsplit(downloads[0].url).path] = True  # the first file, on its first try
    info = dataclasses.replace(
        DATASET_INFO["fashion-mnist"], downloads=tuple(downloads), checksums=checksums
    )
    monkeypatch.setitem(DATASET_INFO, "fashion-mnist", info)
    yield handler
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("send_length", [True, False], ids=["content-length", "no-length"])
def test_interrupted_download_is_never_used_and_the_next_try_starts_again(
    send_length, flaky_server, tmp_path, reliability
):
    flaky_server.send_length = send_length
    cache = tmp_path / "cache" / "fashion-mnist"
    # A temporary file left by a download that was killed earlier must not be taken for data.
    cache.mkdir(parents=True)
    (cache / "tmpk1ll3d").write_bytes(b"\x1f\x8b half of something")
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", progress=False)
    message = str(err.value)
    assert "nothing half-downloaded was kept" in message
    assert sorted(p.name for p in cache.iterdir()) == ["tmpk1ll3d"]  # no new partial file
    dataset = load_dataset("fashion-mnist", progress=False)  # the server now sends it whole
    assert dataset.source["found_by"] == "download" and len(dataset.train_labels) == 20
    assert "verified" in dataset.source["integrity"]
    how = "with" if send_length else "without"
    reliability.record(
        "data",
        f"download cut off half-way ({how} Content-Length), after a killed earlier try",
        f"DataError, nothing kept ({'incomplete read' if send_length else 'md5 mismatch'}); "
        "the next try downloaded again from the start and verified; the killed try's "
        "temporary file was ignored",
    )


# ------------------------------------------------------------------------------- configs

DYNCONV = any(v.family.__module__.endswith(".dynconv") for v in list_variants())
dynconv_only = pytest.mark.skipif(not DYNCONV, reason="the dynamic-convolution family is absent")

# (case, overrides, words the message must hold)
CONFIG_FAULTS: list = [
    ("unknown key", ["optim.lrr=1e-3"], "optim.lrr: unknown key. Did you mean 'optim.lr'?"),
    (
        "unknown model key",
        ["model.patch_sise=7"],
        "model.patch_sise: unknown key. Did you mean 'model.patch_size'?",
    ),
    ("unknown section", ["trian.epochs=1"], "trian: unknown key. Did you mean 'train'?"),
    ("unknown model", ["model.name=densenett"], "unknown model 'densenett'. Did you mean"),
    (
        "unknown data set",
        ["data.dataset=mnist"],
        "data.dataset: Input should be 'fashion-mnist' or 'cifar10'",
    ),
    (
        "wrong type: text for an integer",
        ['train.epochs="three"'],
        "train.epochs: Input should be a valid integer",
    ),
    (
        "wrong type: text for a number",
        ['optim.lr="fast"'],
        "optim.lr: Input should be a valid number",
    ),
    (
        "wrong type: text for a boolean",
        ['augment.flip="sometimes"'],
        "augment.flip: Input should be a valid boolean",
    ),
    (
        "wrong type: fraction for a width",
        ["model.dim=1.5"],
        "model.dim: Input should be a valid integer",
    ),
    (
        "wrong type: list for a batch size",
        ["data.batch_size=[64]"],
        "data.batch_size: Input should be a valid integer",
    ),
    (
        "wrong type: a section given a value",
        ["optim=3"],
        "optim: Input should be a valid dictionary",
    ),
    ("negative learning rate", ["optim.lr=-0.1"], "optim.lr: Input should be greater than 0"),
    ("NaN learning rate", ["optim.lr=nan"], "optim.lr: Input should be a finite number"),
    (
        "infinite weight decay",
        ["optim.weight_decay=inf"],
        "optim.weight_decay: Input should be a finite number",
    ),
    ("seed out of range", ["train.seed=18446744073709551616"], "train.seed: Input should be less"),
    ("zero epochs", ["train.epochs=0"], "train.epochs: Input should be greater than 0"),
    (
        "patch size that does not divide the image",
        ["model.patch_size=5"],
        "patch_size 5 does not divide the 28x28 image",
    ),
    ("zero width (mixer dim)", ["model.dim=0"], "model.dim: Input should be greater than 0"),
    (
        "zero width in a per-block list",
        ["model.depth=1", "model.token_hidden=[0]"],
        "model.token_hidden.0: Input should be greater than 0",
    ),
    (
        "per-block list not matching depth",
        ["model.depth=2", "model.channel_hidden=[8]"],
        "channel_hidden has 1 entries but depth is 2",
    ),
    (
        "zero width (residual MLP)",
        ['model={name="resmlp_brief"}', "model.width=0"],
        "model.width: Input should be greater than 0",
    ),
    (
        "zero growth rate (DenseNet)",
        ['model={name="densenet_brief"}', "model.growth_rate=0"],
        "model.growth_rate: Input should be greater than 0",
    ),
    (
        "no dense blocks",
        ['model={name="densenet_brief"}', "model.block_layers=[]"],
        "model.block_layers: List should have at least 1 item",
    ),
    (
        "model too deep for the image (DenseNet, 6 poolings on 28x28)",
        ['model={name="densenet_brief"}', "model.block_layers=[1, 1, 1, 1, 1, 1]"],
        "does not fit the data: a 28x28 image is too small for 6 2x2 poolings",
    ),
    (
        "dropout of 1 (drops everything)",
        ["model.dropout=1.0"],
        "model.dropout: Input should be less",
    ),
    (
        "batch larger than the training set",
        ["data.batch_size=100000"],
        "larger than the 640 training images",
    ),
    (
        "validation split smaller than the number of classes",
        ["data.val_size=5"],
        "val_size must be at least the number of classes",
    ),
    (
        "model too deep for the image (dynamic conv, 5 down-samplings on 28x28)",
        ['model={name="dynconv_brief"}', "model.widths=[4, 4, 4, 4, 4, 4]"],
        "does not fit the data: a 28x28 image is too small for the down-sampling",
    ),
    ("unknown device", ['train.device="tpu"'], "unknown device 'tpu'"),
    ("model name of a wrong type (a number)", ["model.name=3"], "unknown model 3."),
    ("model name of a wrong type (a list)", ['model.name=["mixer"]'], "unknown model ['mixer']."),
    (
        "run name with a path separator",
        ['train.name="experiments/one"'],
        "train.name: must be one plain folder name",
    ),
    ("run name that is an absolute path", ['train.name="/tmp/x"'], "must be one plain folder name"),
    ("run name too long for a folder", [f'train.name="{"x" * 300}"'], "at most 100 characters"),
    ("CUDA asked for where there is none", ['train.device="cuda:7"'], "CUDA is not available"),
]
if DYNCONV:  # K, the number of kernels the dynamic convolution mixes, must be at least 1
    CONFIG_FAULTS += [
        (
            "K < 1 (dynamic convolution)",
            ['model={name="dynconv_brief"}', "model.num_kernels=0"],
            "model.num_kernels: Input should be greater than 0",
        ),
    ]


@pytest.mark.parametrize(
    ("case", "overrides", "expected"), CONFIG_FAULTS, ids=[c[0] for c in CONFIG_FAULTS]
)
def test_bad_config_stops_before_training(
    case, overrides, expected, tiny_config, tmp_path, reliability
):
    if case == "CUDA asked for where there is none" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TinyVisionError) as err:
        train(tiny_config(*overrides))  # validation, or the model/data check, must refuse it
    assert expected in str(err.value)
    assert "Traceback" not in str(err.value)
    assert not (tmp_path / "runs").exists()
    kind = type(err.value).__name__
    reliability.record(
        "config",
        f"{case}: {' '.join(overrides)}",
        f"{kind} before training: {problem_lines(err.value)}",
    )


def test_every_config_problem_is_reported_at_once(tiny_config, tmp_path, reliability):
    with pytest.raises(ConfigError) as err:
        tiny_config("optim.lr=-1", "model.dpeth=2", "train.epochs=0", "augment.flip=2")
    for key in ("optim.lr", "model.dpeth", "train.epochs", "augment.flip"):
        assert key in str(err.value)
    assert not (tmp_path / "runs").exists()
    reliability.record(
        "config",
        "four mistakes in one command line",
        "one ConfigError listing all four, one line each",
    )


# ------------------------------------------------------------------ numerics and resources


class Injected:
    """Wraps the engine's ``create_model``/``build_optimizer`` to inject a fault at a step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.calls = 0

    def forward(
        self, at: int, replace: Callable[[torch.Tensor], torch.Tensor], *, training: bool = True
    ) -> None:
        """From the ``at``-th training (or evaluation) forward pass on, replace the output."""
        real = tinyvision.engine.create_model

        def create(*args, **kwargs):
            model = real(*args, **kwargs)

            def hook(module, inputs, output):
                if module.training == training:
                    self.calls += 1
                    if self.calls >= at:
                        return replace(output)
                return output

            model.register_forward_hook(hook)
            return model

        self.monkeypatch.setattr(tinyvision.engine, "create_model", create)

    def after_optimizer_step(self, at: int, action: Callable[[torch.optim.Optimizer], None]):
        real = tinyvision.engine.build_optimizer

        def build(*args, **kwargs):
            optimizer = real(*args, **kwargs)

            def hook(opt, args, kwargs):
                self.calls += 1
                if self.calls == at:
                    action(opt)

            optimizer.register_step_post_hook(hook)
            return optimizer

        self.monkeypatch.setattr(tinyvision.engine, "build_optimizer", build)


def only_run(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "runs").iterdir()
    return run


def assert_last_checkpoint_good(run: Path, global_step: int) -> dict:
    """last.pt is whole, from ``global_step``, with finite weights; no temporary file is left."""
    assert not list(run.rglob("*.tmp"))
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["state"]["global_step"] == global_step
    for name, tensor in checkpoint["model"].items():
        assert torch.isfinite(tensor).all(), name
    return checkpoint


def nan_logits(output: torch.Tensor) -> torch.Tensor:
    # ``output - output.detach()`` is 0 but keeps the graph: backward runs as it would.
    return output - output.detach() + math.nan


def inf_loss_logits(output: torch.Tensor) -> torch.Tensor:
    # Every class but 0 is impossible: the loss of any image not of class 0 is +inf.
    impossible = torch.full_like(output, -math.inf)
    impossible[:, 0] = 0.0
    return output - output.detach() + impossible


@pytest.mark.parametrize(
    ("case", "replace", "word"),
    [
        ("NaN loss", nan_logits, "nan"),
        ("infinite loss", inf_loss_logits, "inf"),
    ],
    ids=["nan", "inf"],
)
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    case, replace, word, tiny_config, tmp_path, monkeypatch, reliability
):
    settings = ("train.checkpoint_every_steps=3", "train.deterministic=true")
    Injected(monkeypatch).forward(at=8, replace=replace)
    with pytest.raises(TrainingError) as err:
        train(tiny_config(*settings))
    message = str(err.value)
    assert f"became {word} at step 8 (epoch 1)" in message
    assert "optim.lr = 0.003" in message and "last good checkpoint is kept" in message
    run = only_run(tmp_path)
    assert_last_checkpoint_good(run, global_step=6)
    monkeypatch.undo()
    # What a process killed while writing leaves (see test_kill_resume): resuming removes it.
    stale = run / "checkpoints" / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"PK half a checkpoint")
    resumed = train(resume=run)  # the kept checkpoint really is good: training goes on from it
    assert resumed.summary["epochs"] == 2
    assert not stale.exists()
    reliability.record(
        "numerics",
        f"{case} injected at step 8 (checkpoint every 3 steps)",
        f"TrainingError: '{first_line(err.value)}'; last.pt from step 6 intact, finite and "
        "loadable; --resume from it trained to the end (and removed a stale temporary file "
        "planted in checkpoints/)",
    )


def test_weights_turned_non_finite_are_never_checkpointed(
    tiny_config, tmp_path, monkeypatch, reliability
):
    """A step can break the weights while its own loss was still finite; the checkpoint due
    after that step must not be written over the last good one."""

    def poison(optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            optimizer.param_groups[0]["params"][0].fill_(math.nan)

    Injected(monkeypatch).after_optimizer_step(at=6, action=poison)
    with pytest.raises(TrainingError) as err:
        train(tiny_config("train.checkpoint_every_steps=3"))
    assert "at step 6 (epoch 1)" in str(err.value)
    assert_last_checkpoint_good(only_run(tmp_path), global_step=3)
    reliability.record(
        "numerics",
        "weights set to NaN by the optimizer step at step 6 (its loss finite), "
        "a checkpoint due at step 6",
        f"TrainingError: '{first_line(err.value)}'; last.pt stayed the good one from step 3",
    )


def cuda_oom(output: torch.Tensor) -> torch.Tensor:
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.parametrize("where", ["training", "evaluation"])
def test_out_of_memory_suggests_a_smaller_batch(
    where, tiny_config, tmp_path, monkeypatch, reliability
):
    Injected(monkeypatch).forward(at=1, replace=cuda_oom, training=where == "training")
    with pytest.raises(TrainingError) as err:
        train(tiny_config("train.checkpoint_every_steps=5"))
    message = str(err.value)
    assert "out of GPU memory with data.batch_size = 64" in message
    assert "data.batch_size=32" in message
    run = only_run(tmp_path)
    if where == "training":  # nothing was saved yet, and the message must not claim otherwise
        assert not list(run.rglob("*.tmp"))
        assert not (run / "checkpoints" / "last.pt").exists() and "checkpoint" not in message
    else:  # the first evaluation comes after 10 steps, with checkpoints at steps 5 and 10
        assert_last_checkpoint_good(run, global_step=10)
        assert "checkpoint from step 10" in message
    reliability.record(
        "resources",
        f"CUDA out-of-memory raised in the first {where} forward pass",
        f"TrainingError: '{problem_lines(err.value)}'",
    )
