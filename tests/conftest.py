"""Shared fixtures: a tiny Fashion-MNIST-format data set that a model can learn in seconds."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from tinyvision.config import Config, load_config

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")

# The `reliability` fixture: tests record the faults and bad inputs they try (docs/reliability.md).
pytest_plugins = ["reliability_log"]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzip-compressed), the official Fashion-MNIST format."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def learnable_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose class is a bright horizontal band at a class-specific height."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 230
    return images


@pytest.fixture(scope="session")
def tiny_fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-fashion")
    rng = np.random.default_rng(0)
    for split, count in (("train", 640), ("t10k", 320)):
        labels = np.arange(count) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", learnable_images(labels, rng))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def tiny_config_for(data_dir: Path, out_dir: Path, *overrides: str) -> Config:
    """A small, fast config on the tiny data set in ``data_dir``; overrides as section.key=value."""
    base = [
        f'data.data_dir="{data_dir}"',
        "data.verify=false",
        "data.download=false",
        "data.batch_size=64",
        "data.eval_batch_size=128",
        f'train.out_dir="{out_dir}"',
        "train.epochs=2",
        "train.progress=off",
        "train.threads=1",
        "model.name=mixer",
        "model.patch_size=7",
        "model.dim=32",
        "model.depth=1",
        "model.token_hidden=16",
        "model.channel_hidden=64",
        "optim.lr=3e-3",
    ]
    return load_config(None, [*base, *overrides])


@pytest.fixture
def tiny_config(tiny_fashion_dir: Path, tmp_path: Path):
    """A factory of tiny_config_for configs writing under this test's tmp_path."""

    def make(*overrides: str) -> Config:
        return tiny_config_for(tiny_fashion_dir, tmp_path / "runs", *overrides)

    return make


def pytest_configure(config: pytest.Config) -> None:
    # The tiny data set has no official checksum: every test that uses it says so on purpose.
    config.addinivalue_line(
        "filterwarnings", "ignore:.*NOT checked against the official checksums:UserWarning"
    )
