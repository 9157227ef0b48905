"""Data-parallel training with torchrun: 2 processes, gloo on the CPU."""

import json
import socket
import subprocess
import sys

import pytest
import torch

from tinyvision.engine import train

ARGS = [
    "train.epochs=3",
    "train.progress=off",
    "train.threads=1",
    "data.batch_size=64",
    "train.seed=1",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "tinyvision",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_train_like_one_with_the_same_global_batch(tiny_config, tmp_path):
    single = train(tiny_config(*ARGS))
    config = tiny_config(*ARGS)
    out = tmp_path / "ddp"
    overrides = [f"{k}" for k in ARGS] + [
        f'data.data_dir="{config.data.data_dir}"',
        "data.verify=false",
        "data.download=false",
        f'train.out_dir="{out}"',
        "model.patch_size=7",
        "model.dim=32",
        "model.depth=1",
        "model.token_hidden=16",
        "model.channel_hidden=64",
        "optim.lr=3e-3",
        "data.eval_batch_size=128",
    ]
    result = torchrun(2, "train", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    assert result.stdout.count("final test accuracy") == 1  # process 0 alone reports
    (run,) = out.iterdir()  # process 0 alone writes one run folder
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert json.loads((run / "environment.json").read_text())["processes"] == 2

    single_rows = [
        json.loads(x) for x in (single.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    # The same global batch and learning rate: training progresses alike. The batches hold
    # different images (each process shuffles its own shard), so the match is statistical.
    assert rows[-1]["train_loss"] < 0.75 * rows[0]["train_loss"]
    assert rows[-1]["test_acc"] > 0.5
    assert abs(rows[-1]["test_acc"] - single_rows[-1]["test_acc"]) < 0.15
    assert abs(rows[-1]["train_loss"] - single_rows[-1]["train_loss"]) < 0.3
    # Evaluation covers the whole test split across both processes.
    steps_single = single_rows[-1]["step"]
    assert rows[-1]["step"] == steps_single  # same number of optimiser steps per epoch


def test_global_batch_must_divide_among_processes(tiny_config, tmp_path):
    config = tiny_config()
    result = torchrun(
        2,
        "train",
        "data.batch_size=63",
        "train.epochs=1",
        "train.threads=1",
        f'data.data_dir="{config.data.data_dir}"',
        "data.verify=false",
        f'train.out_dir="{tmp_path}"',
    )
    assert result.returncode != 0
    assert "data.batch_size 63 must be divisible by the 2 processes" in result.stderr
    assert not any(tmp_path.iterdir())
