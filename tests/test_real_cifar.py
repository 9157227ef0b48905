"""CIFAR-10 on real images: the official batch layout read by the project's own reader, then a
handful of training steps of brief B's CPU recipe on real batches.

Real CIFAR-10 is used where it is present: ``$TINYVISION_CIFAR10_DIR`` (a folder holding
``cifar-10-batches-py``), else the JPEG-75 copy that the project's machines keep beside the
checkout (``../shared/data``, written out in the official layout by its own script). Without
either the test is skipped; it never downloads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinyvision.config import load_config
from tinyvision.data import load_dataset
from tinyvision.engine import build_model
from tinyvision.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_COPY = ROOT.parent / "shared" / "data" / "cifar10_proxy.py"


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("TINYVISION_CIFAR10_DIR")
    if given:
        return Path(given)
    if not SHARED_COPY.is_file():
        pytest.skip("no CIFAR-10 here: set TINYVISION_CIFAR10_DIR to a cifar-10-batches-py parent")
    folder = tmp_path_factory.mktemp("cifar10")
    # The copy's own script writes the official "python version" batches (about 15 s).
    subprocess.run([sys.executable, str(SHARED_COPY), str(folder)], check=True, timeout=300)
    return folder


@pytest.mark.slow
def test_real_cifar10_reads_and_the_cpu_recipe_learns_from_it(cifar_dir: Path) -> None:
    with pytest.warns(UserWarning, match="NOT checked"):
        data = load_dataset("cifar10", cifar_dir, download=False, verify=False)
    assert data.train_images.shape == (50000, 3, 32, 32)
    assert data.test_images.shape == (10000, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8
    # The official split: 5,000 training and 1,000 test images of each class.
    assert torch.bincount(data.train_labels, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [1000] * 10
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"

    config = load_config(ROOT / "configs" / "cifar10-dynconv-cpu.toml", ["train.precision=fp32"])
    torch.manual_seed(0)
    model, channels_last = build_model(config, data, torch.device("cpu"))
    optimizer = build_optimizer(model, config.optim)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    images = (data.train_images[:64].float() / 255 - mean) / std
    if channels_last:  # as the engine feeds its batches
        images = images.contiguous(memory_format=torch.channels_last)
    labels = data.train_labels[:64]
    losses = []
    for _ in range(8):  # the same real batch, eight steps: its loss must fall from chance's 2.30
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.4, losses  # measured: 2.37 -> about 1.75
