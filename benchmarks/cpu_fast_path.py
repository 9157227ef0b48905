"""What this CPU offers a training step: fp32, bf16 autocast, torch.compile, channels-last.

Issue 13 asks that each speed-up the CPU engine could use be measured side by side, and used
only where it wins. For each config given, the script builds the config's model and times its
training step (forward, cross-entropy with the config's label smoothing, backward, and a step of
the config's optimiser, as the engine builds it) at the config's batch size, in every mode that
applies:

- ``fp32``: eager, full precision (the engine's CPU default);
- ``bf16``: eager under ``torch.autocast("cpu", torch.bfloat16)`` (``train.precision = "bf16"``);
  fast only on CPUs with bf16 instructions (AVX512-BF16, AMX), which the report states;
- ``compile fp32`` / ``compile bf16``: the same after ``model.compile()`` (``train.compile``);
- ``channels-last fp32`` / ``channels-last bf16``: NHWC memory, only for models with
  convolutions (``nn.Conv2d`` or brief B's ``DynamicConv2d``; ``train.channels_last``), and
  the same compiled (both settings together).

``--twin`` adds, for a dynamic-convolution config (brief B), its static twin: the same network
with ``model.num_kernels=1``, one kernel per layer, so each dynamic convolution is an ordinary
convolution with a constant gate. The two networks alternate block by block like the modes, and
the table gives the dynamic network's step time as a multiple of its twin's in the same mode:
the network-level cost of the dynamic convolution (issue 14: at most 1.3x).

Timing: warm-up steps first (compilation happens there), then ``--repeats`` blocks of
``--steps`` steps, the modes alternating block by block so drift in the machine's load hits
each alike; the median block gives images per second, and each mode's speed is given relative
to fp32 eager. "s / epoch" is the step time times the steps of one epoch of the full training
split (the model's compute only: no augmentation or evaluation). Random inputs of the data
set's shape: a step's time does not depend on pixels.

    taskset -c 1 python benchmarks/cpu_fast_path.py configs/fmnist-mixer-cpu.toml --threads 1
    python benchmarks/cpu_fast_path.py configs/cifar10-dynconv.toml --threads 2 --twin
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
from tinyvision.device import convs_to_channels_last, cpu_has_native_bf16
from tinyvision.models import create_model
from tinyvision.models.dynconv import DynamicConv2d
from tinyvision.optim import build_optimizer

SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
TRAIN_IMAGES = {"fashion-mnist": 60_000, "cifar10": 50_000}
NUM_CLASSES = 10
STATIC_TWIN = "static twin (K = 1)"  # brief B's network with one kernel a layer


def build_model(config: Config, overrides: dict | None = None) -> nn.Module:
    chans, height, width = SHAPES[config.data.dataset]
    torch.manual_seed(0)
    return create_model(
        config.model_name,
        in_chans=chans,
        num_classes=NUM_CLASSES,
        image_size=(height, width),
        **{**config.model_params, **(overrides or {})},
    )


def make_step(
    config: Config, mode: str, overrides: dict | None = None
) -> tuple[Callable[[], None], int]:
    """One training step of the config's model in ``mode``, and the batch size it uses."""
    chans, height, width = SHAPES[config.data.dataset]
    model = build_model(config, overrides)
    batch = config.data.batch_size
    images = torch.randn(batch, chans, height, width)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    if "channels-last" in mode:
        model = convs_to_channels_last(model)  # as the engine does
        images = images.contiguous(memory_format=torch.channels_last)
    if "compile" in mode:
        model.compile()
    # The config's optimiser, as the engine builds it: SGD's update costs less than AdamW's.
    optimizer = build_optimizer(model, config.optim)
    smoothing = config.train.label_smoothing
    use_bf16 = mode.endswith("bf16")

    def step() -> None:
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        )
        with autocast:
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, batch


def modes_for(model: nn.Module) -> list[str]:
    modes = ["fp32", "bf16", "compile fp32", "compile bf16"]
    if any(isinstance(m, (nn.Conv2d, DynamicConv2d)) for m in model.modules()):
        modes += ["channels-last fp32", "channels-last bf16"]
        modes += ["compile channels-last fp32", "compile channels-last bf16"]
    return modes


def networks_for(model: nn.Module, twin: bool) -> dict[str, dict]:
    """The networks to time, by name: the config's own and, with ``twin``, its static twin."""
    num_kernels = {m.num_kernels for m in model.modules() if isinstance(m, DynamicConv2d)}
    if not twin or not num_kernels:
        return {"": {}}
    return {f"dynamic (K = {max(num_kernels)})": {}, STATIC_TWIN: {"num_kernels": 1}}


def measure(config_path: Path, args: argparse.Namespace) -> list[list[str]]:
    config = load_config(config_path)
    model = build_model(config)
    networks = networks_for(model, args.twin)
    modes = [mode for mode in modes_for(model) if mode in args.modes or not args.modes]
    modes = modes if "fp32" in modes else ["fp32", *modes]  # fp32 eager: the yardstick
    runs = [(network, mode) for mode in modes for network in networks]
    steps = {}
    for network, mode in runs:
        step, batch = make_step(config, mode, networks[network])
        for _ in range(args.warmup):
            step()
        steps[network, mode] = step
    seconds: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for _ in range(args.repeats):
        for run in runs:  # alternating: load drift hits every mode and network alike
            started = time.perf_counter()
            for _ in range(args.steps):
                steps[run]()
            seconds[run].append((time.perf_counter() - started) / args.steps)
    per_step = {run: median(times) for run, times in seconds.items()}
    steps_per_epoch = (TRAIN_IMAGES[config.data.dataset] - config.data.val_size) // batch
    rows = []
    for network, mode in runs:
        row = [config_path.name + (f", {network}" if network else ""), mode, str(batch)]
        step_seconds = per_step[network, mode]
        row += [
            f"{1000 * step_seconds:.1f}",
            f"{batch / step_seconds:,.0f}",
            f"{steps_per_epoch * step_seconds:,.0f}",
            f"{per_step[network, 'fp32'] / step_seconds:.2f}x",
        ]
        if len(networks) > 1:
            row.append(f"{step_seconds / per_step[STATIC_TWIN, mode]:.2f}x")
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="tinyvision config files")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [%(default)s]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per mode")
    parser.add_argument("--out", type=Path, default=None, help="append the results to FILE.md")
    parser.add_argument(
        "--modes",
        type=lambda text: [m.strip() for m in text.split(",")],
        default=[],
        help='only these modes, comma-separated, e.g. "bf16,channels-last bf16" [all]',
    )
    parser.add_argument(
        "--twin", action="store_true", help="dynamic-conv configs: also time the static twin"
    )
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
    columns = ["config", "mode", "batch", "ms / step", "images / s", "s / epoch"]
    columns.append("speed vs fp32 eager")
    if any(len(row) > len(columns) for row in rows):
        columns.append("time vs static twin")
    report.add_table(columns, [row + [""] * (len(columns) - len(row)) for row in rows])
    report.add_note(
        f"Median of {args.repeats} blocks of {args.steps} steps after {args.warmup} warm-up "
        "steps, modes alternating block by block; random inputs of the data set's shape."
    )
    report.emit(args.out)


if __name__ == "__main__":
    main()
