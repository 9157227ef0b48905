"""How fast a config's model evaluates at each evaluation batch size (``data.eval_batch_size``).

An evaluation is forward passes only, so the batch size that trains fastest says little about
the one that evaluates fastest. On a CPU a large batch is not free: brief B's dynamic
convolutions build one kernel per image, and a batch of 2,048 images' kernels and activations
leaves the caches. For each config given, the script builds the config's model in eval mode,
in the config's precision (bf16 autocast or fp32) and memory layout (channels-last where the
config asks for it), and times forward passes over ``--images`` random images of the data
set's shape at every batch size of ``--batches``, the sizes alternating block by block so that
drift in the machine's load hits each alike. The table gives images per second (median block)
and the speed relative to the config's own ``eval_batch_size``.

    python benchmarks/eval_batch.py configs/cifar10-dynconv-cpu.toml --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _report import LoadMeter, Report, median
from cpu_fast_path import SHAPES, build_model

from tinyvision.config import load_config
from tinyvision.device import autocast_for, convs_to_channels_last
from tinyvision.engine import channels_last_for


def measure(config_path: Path, args: argparse.Namespace) -> list[list[str]]:
    config = load_config(config_path)
    model = build_model(config).eval()
    images = torch.randn(args.images, *SHAPES[config.data.dataset])
    # The layout and precision the engine would choose for this config on the CPU.
    cpu = torch.device("cpu")
    layout = "channels-first"
    if channels_last_for(config, cpu, model):
        model = convs_to_channels_last(model)
        images = images.contiguous(memory_format=torch.channels_last)
        layout = "channels-last"
    autocast = autocast_for(config, cpu)
    bf16 = isinstance(autocast, torch.autocast)
    own = config.data.eval_batch_size
    batches = sorted({*args.batches, own}, reverse=True)

    def evaluate(batch: int) -> None:
        with torch.inference_mode(), autocast:
            for start in range(0, len(images), batch):
                model(images[start : start + batch])

    for batch in batches:  # warm-up: oneDNN picks its kernels for each new shape
        evaluate(batch)
    seconds: dict[int, list[float]] = {batch: [] for batch in batches}
    for _ in range(args.repeats):
        for batch in batches:
            started = time.perf_counter()
            evaluate(batch)
            seconds[batch].append(time.perf_counter() - started)
    speed = {batch: args.images / median(times) for batch, times in seconds.items()}
    precision = "bf16 autocast" if bf16 else "fp32"
    return [
        [
            config_path.name,
            f"{precision}, {layout}",
            f"{batch:,}" + (" (the config's)" if batch == own else ""),
            f"{speed[batch]:,.0f}",
            f"{speed[batch] / speed[own]:.2f}x",
        ]
        for batch in batches
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="tinyvision config files")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [%(default)s]")
    parser.add_argument(
        "--batches",
        type=lambda text: [int(b) for b in text.split(",")],
        default=[2048, 1024, 512, 256, 128],
        help="evaluation batch sizes, comma-separated [2048,1024,512,256,128]",
    )
    parser.add_argument("--images", type=int, default=4096, help="images per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per batch size")
    parser.add_argument("--out", type=Path, default=None, help="append the results to FILE.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    report = Report("Evaluation batch size: forward passes per second", torch.device("cpu"))
    rows = []
    with LoadMeter() as load:
        for config_path in args.configs:
            rows += measure(config_path, args)
    report.context.append(load.describe())
    columns = ["config", "precision, layout", "eval batch", "images / s", "vs the config's"]
    report.add_table(columns, rows)
    report.add_note(
        f"Median of {args.repeats} blocks of {args.images:,} random images per batch size, the "
        "sizes alternating block by block, after one untimed block of each; model in eval mode."
    )
    report.emit(args.out)


if __name__ == "__main__":
    main()
