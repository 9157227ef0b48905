"""What this CPU offers a training step: fp32, bf16 autocast, torch.compile, channels-last.

Issue 13 asks that each speed-up the CPU engine could use be measured side by side, and used
only where it wins. For each config given, the script builds the config's model and times its
training step (forward, cross-entropy, backward, AdamW step) at the config's batch size, in
every mode that applies:

- ``fp32``: eager, full precision (the engine's CPU default);
- ``bf16``: eager under ``torch.autocast("cpu", torch.bfloat16)`` (``train.precision = "bf16"``);
  fast only on CPUs with bf16 instructions (AVX512-BF16, AMX), which the report states;
- ``compile fp32`` / ``compile bf16``: the same after ``model.compile()`` (``train.compile``);
- ``channels-last fp32`` / ``channels-last bf16``: NHWC memory, only for models with
  ``nn.Conv2d`` (``train.channels_last``), and the same compiled (both settings together).

Timing: warm-up steps first (compilation happens there), then ``--repeats`` blocks of
``--steps`` steps, the modes alternating block by block so drift in the machine's load hits
each alike; the median block gives images per second, and each mode's speed is given relative
to fp32 eager. Random inputs of the data set's shape: a step's time does not depend on pixels.

    taskset -c 1 python benchmarks/cpu_fast_path.py configs/fmnist-mixer-cpu.toml --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _report import LoadMeter, Report, median
from torch import nn

from tinyvision.config import Config, load_config
from tinyvision.device import cpu_has_native_bf16
from tinyvision.models import create_model

SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
NUM_CLASSES = 10


def build_model(config: Config) -> nn.Module:
    chans, height, width = SHAPES[config.data.dataset]
    torch.manual_seed(0)
    return create_model(
        config.model_name,
        in_chans=chans,
        num_classes=NUM_CLASSES,
        image_size=(height, width),
        **config.model_params,
    )


def make_step(config: Config, mode: str) -> tuple[Callable[[], None], int]:
    """One training step of the config's model in ``mode``, and the batch size it uses."""
    chans, height, width = SHAPES[config.data.dataset]
    model = build_model(config)
    batch = config.data.batch_size
    images = torch.randn(batch, chans, height, width)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    if "channels-last" in mode:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if "compile" in mode:
        model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    use_bf16 = mode.endswith("bf16")

    def step() -> None:
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        )
        with autocast:
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, batch


def modes_for(config: Config) -> list[str]:
    model = build_model(config)
    modes = ["fp32", "bf16", "compile fp32", "compile bf16"]
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        modes += ["channels-last fp32", "channels-last bf16"]
        modes += ["compile channels-last fp32", "compile channels-last bf16"]
    return modes


def measure(config_path: Path, args: argparse.Namespace) -> list[list[str]]:
    config = load_config(config_path)
    modes = modes_for(config)
    steps = {}
    for mode in modes:
        step, batch = make_step(config, mode)
        for _ in range(args.warmup):
            step()
        steps[mode] = step
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode in modes:  # alternating: load drift hits every mode alike
            started = time.perf_counter()
            for _ in range(args.steps):
                steps[mode]()
            seconds[mode].append((time.perf_counter() - started) / args.steps)
    base = median(seconds["fp32"])
    rows = []
    for mode in modes:
        per_step = median(seconds[mode])
        rows.append(
            [
                config_path.name,
                mode,
                str(batch),
                f"{1000 * per_step:.1f}",
                f"{batch / per_step:,.0f}",
                f"{base / per_step:.2f}x",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="tinyvision config files")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [%(default)s]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per mode")
    parser.add_argument("--out", type=Path, default=None, help="append the results to FILE.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    report = Report("CPU fast path: a training step per precision and setting", torch.device("cpu"))
    report.context.append(
        "bf16 instructions (AVX512-BF16 or AMX): "
        + ("yes" if cpu_has_native_bf16() else "none, bf16 is emulated: expect it to be slower")
    )
    rows = []
    with LoadMeter() as load:
        for config_path in args.configs:
            rows += measure(config_path, args)
    report.context.append(load.describe())
    report.add_table(
        ["config", "mode", "batch", "ms / step", "images / s", "speed vs fp32 eager"], rows
    )
    report.add_note(
        f"Median of {args.repeats} blocks of {args.steps} steps after {args.warmup} warm-up "
        "steps, modes alternating block by block; random inputs of the data set's shape."
    )
    report.emit(args.out)


if __name__ == "__main__":
    main()
