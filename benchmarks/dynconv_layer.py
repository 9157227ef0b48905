"""Time one dynamic-convolution layer against one ordinary convolution of the same shape.

For every dynamic-conv layer shape of a model config (default: the CIFAR-10 recipe), times
forward + backward (input and weights requiring grad) of:

- ``conv``: one ``F.conv2d`` of the same shape, the yardstick (ratio 1.00);
- ``naive``: the brief's formula, K convolutions and the weighted sum;
- ``fast/<method>``: one convolution per image with the mixed kernel, for each method of
  ``tinyvision.models.dynconv`` (``auto`` = the method ``choose_method`` picks);

and prints a Markdown table of the conv's median time and every variant's ratio to it (issue 5's
target: fast <= 1.3x). The dynamic layers include their mixing (pool, linear, softmax).

    python benchmarks/dynconv_layer.py                        # CUDA if available, else CPU
    python benchmarks/dynconv_layer.py --device cuda --amp    # bf16 autocast, as training
    python benchmarks/dynconv_layer.py --device cpu --threads 1 --clock cpu   # on a busy CPU
    python benchmarks/dynconv_layer.py --config configs/cifar10-dynconv-cpu.toml --device cpu \
        --amp --channels-last --batch 128        # as the CPU recipe trains: bf16, NHWC
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _report import LoadMeter, Report

from tinyvision.config import load_config
from tinyvision.models import create_model
from tinyvision.models.dynconv import DynamicConv2d
from tinyvision.ops import dynamic_conv
from tinyvision.ops.dynamic_conv import choose_method

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("grouped", "hybrid", "bmm", "nhwc")
CPU_DEFAULT_BATCH = 64  # the recipe's batch of 512 takes minutes per shape on a small CPU


def layer_shapes(config_path: Path) -> list[tuple[int, ...]]:
    """(d, d', H, W, k, stride, padding, K) of every DynamicConv2d of the config's model."""
    config = load_config(config_path)
    in_chans, size = (3, 32) if config.data.dataset == "cifar10" else (1, 28)
    model = create_model(
        config.model_name,
        in_chans=in_chans,
        num_classes=10,
        image_size=(size, size),
        **config.model_params,
    )
    shapes: list[tuple[int, ...]] = []

    def record(module: DynamicConv2d, inputs: tuple[torch.Tensor, ...]) -> None:
        height, width = inputs[0].shape[2:]
        shapes.append(
            (
                module.in_chans,
                module.out_chans,
                height,
                width,
                module.kernel_size,
                module.stride,
                module.padding,
                module.num_kernels,
            )
        )

    for module in model.modules():
        if isinstance(module, DynamicConv2d):
            module.register_forward_pre_hook(record)
    with torch.no_grad():
        model.eval()(torch.zeros(2, in_chans, size, size))
    return shapes


def timer(device: torch.device, clock: str) -> Callable[[Callable[[], None]], float]:
    """A function that times one call of a function, in seconds."""
    # cpu: CPU seconds used by this process, which time-sharing with other jobs on a busy machine
    # does not inflate (wall-clock time does); meaningful with --threads 1.
    now = time.process_time if clock == "cpu" else time.perf_counter

    def measure(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = now()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return now() - start

    return measure


def bench_shape(
    shape: tuple[int, ...], batch: int, device: torch.device, args: argparse.Namespace
) -> dict[str, float]:
    d_in, d_out, height, width, kernel, stride, padding, num_kernels = shape
    # Channels-last as the engine feeds convolutions (a leaf in that layout, then grad on).
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(batch, d_in, height, width, device=device).contiguous(memory_format=layout)
    weight = torch.randn(d_out, d_in, kernel, kernel, device=device)
    x.requires_grad_()
    weight = weight.contiguous(memory_format=layout).requires_grad_()
    layer = DynamicConv2d(
        d_in, d_out, num_kernels=num_kernels, kernel_size=kernel, stride=stride, padding=padding
    ).to(device)

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def conv() -> None:
        with autocast():
            y = F.conv2d(x, weight, None, stride, padding)
        y.backward(torch.ones_like(y))

    def dynamic(impl: str, method: str | None) -> Callable[[], None]:
        def run() -> None:
            layer.impl, layer.method = impl, method
            with autocast():
                y = layer(x)
            y.backward(torch.ones_like(y))

        return run

    variants: dict[str, Callable[[], None]] = {"conv": conv, "naive": dynamic("naive", None)}
    for method in METHODS:
        variants[f"fast/{method}"] = dynamic("fast", method)
    measure = timer(device, args.clock)
    for fn in variants.values():
        for _ in range(args.warmup):
            fn()
    # Rounds of every variant in turn; each ratio is to the conv of its own round, so a machine
    # whose load drifts over seconds skews all variants of a round alike.
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(measure(fn))
    result = {"conv": statistics.median(times["conv"])}  # seconds; the others: ratios
    for name in list(variants)[1:]:
        ratios = [t / c for t, c in zip(times[name], times["conv"], strict=True)]
        result[name] = statistics.median(ratios)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "configs/cifar10-dynconv.toml",
        help="tinyvision config whose model's dynamic-conv layers are timed [%(default)s]",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help=f"default: the config's ({CPU_DEFAULT_BATCH} on CPU)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds [%(default)s]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first [%(default)s]")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time, for a busy shared CPU (with --threads 1)",
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast, as train.precision=bf16")
    parser.add_argument(
        "--channels-last", action="store_true", help="NHWC inputs, as the engine trains convs"
    )
    parser.add_argument(
        "--nhwc-group",
        type=int,
        default=dynamic_conv.NHWC_GROUP,
        help="images per grouped convolution of the nhwc method [%(default)s]",
    )
    parser.add_argument("--out", type=Path, default=None, help="append the table to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.clock == "cpu" and device.type == "cuda":
        parser.error("--clock cpu measures CPU work: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    dynamic_conv.NHWC_GROUP = args.nhwc_group  # the method reads it at every call
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the engine does
    config = load_config(args.config)
    batch, note = args.batch, ""
    if batch is None and device.type == "cpu":
        batch = CPU_DEFAULT_BATCH
        note = f" (a CPU default: the recipe trains at {config.data.batch_size}, see --batch)"
    elif batch is None:
        batch = config.data.batch_size

    counts: dict[tuple[int, ...], int] = {}
    for shape in layer_shapes(args.config):
        counts[shape] = counts.get(shape, 0) + 1
    names = ["naive", *[f"fast/{m}" for m in METHODS]]
    rows = []
    with LoadMeter() as load:
        for shape, count in counts.items():
            d_in, d_out, height, width, kernel, stride, padding, num_kernels = shape
            result = bench_shape(shape, batch, device, args)
            out_positions = ((height + 2 * padding - kernel) // stride + 1) * (
                (width + 2 * padding - kernel) // stride + 1
            )
            rows.append(
                [
                    f"{d_in} -> {d_out} @ {height}x{width}, k{kernel}, s{stride}",
                    str(num_kernels),
                    str(count),
                    f"{result['conv'] * 1e3:.1f}",
                    *(f"{result[n]:.2f}" for n in names),
                    choose_method(device.type, d_in, out_positions, args.channels_last),
                ]
            )
            print(" | ".join(rows[-1]), flush=True)

    clock = "CPU time of this process" if args.clock == "cpu" else "wall-clock time"
    report = Report(
        f"Dynamic-conv layer vs one conv2d, forward + backward ({args.config.name})",
        device,
        context=[
            f"batch {batch}{note}; {'bf16 autocast' if args.amp else 'float32'}; "
            f"{'channels-last' if args.channels_last else 'channels-first'}; {clock}; "
            f"nhwc method: {args.nhwc_group} images per grouped convolution; "
            f"{args.repeats} rounds of every variant in turn after {args.warmup} warm-up runs",
            load.describe(),
        ],
    )
    report.add_table(
        [
            "layer: d -> d' @ HxW, k, stride",
            "K",
            "count",
            "conv ms",
            *(f"{n} x" for n in names),
            "auto",
        ],
        rows,
    )
    report.add_note(
        "conv ms: median time of one `F.conv2d` (input and weight requiring grad). x: median over "
        "rounds of the variant's time / that round's conv time (target for fast: <= 1.3). "
        "auto: the method the fast path picks for this device and shape."
    )
    report.emit(args.out)


if __name__ == "__main__":
    main()
