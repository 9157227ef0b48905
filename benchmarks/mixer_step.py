"""Training-step throughput: tinyvision's Mixer vs timm's MlpMixer set to the same shapes.

One step = forward, cross-entropy, backward and an AdamW step, the same loop for both models,
so the ratio measures the models alone. Both models get:

- the same shapes: patch size, width (timm ``embed_dim`` = tinyvision ``dim``), depth and both
  hidden widths (timm takes them as ``mlp_ratio = (token_hidden / dim, channel_hidden / dim)``),
  read from the ``[model]`` section of a tinyvision config; the script checks that the two
  models have the same number of parameters;
- the same input: random Fashion-MNIST-shaped (1x28x28) and CIFAR-shaped (3x32x32) batches
  (throughput does not depend on pixel values);
- the same precision: fp32 on the CPU, bf16 autocast on CUDA (tinyvision's default there);
- the same compile setting (``--compile``), optimiser (AdamW, fused on CUDA) and no dropout or
  stochastic depth (random masks would add noise, not signal, to a timing).

Timing: warm-up steps first (compilation happens there), then ``--repeats`` timed blocks of
``--steps`` steps each, the two models alternating block by block so that drift in the
machine's load or clocks hits both alike; CUDA is synchronised at the ends of each block.
Reported: the median block's images per second, and the ratio tinyvision / timm (target >= 1).

    python benchmarks/mixer_step.py                       # CPU here, both input shapes
    python benchmarks/mixer_step.py --compile --out results.md   # on a GPU machine
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _report import LoadMeter, Report, median
from torch import nn

from tinyvision.config import load_config
from tinyvision.device import resolve_device
from tinyvision.models import create_model

ROOT = Path(__file__).resolve().parent.parent
INPUTS = {"fmnist": (1, 28, 28), "cifar": (3, 32, 32)}  # (C, H, W) of each data set
NUM_CLASSES = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "configs/fmnist-mixer.toml",
        help="tinyvision config whose [model] section gives the shapes [%(default)s]",
    )
    parser.add_argument(
        "--inputs",
        default="fmnist,cifar",
        help=f"comma-separated input shapes, from {sorted(INPUTS)} [%(default)s]",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if present), cpu, cuda [%(default)s]"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step [default: the config's data.batch_size]",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per timed block [default: 20 GPU, 2 CPU]"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed blocks per model [default: 7 GPU, 5 CPU]"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first [default: 10 GPU, 1 CPU]"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto = bf16 autocast on CUDA, fp32 on the CPU, as tinyvision trains [%(default)s]",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads; 0 = torch's default [%(default)s]"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of weights and data [%(default)s]"
    )
    parser.add_argument("--out", type=Path, default=None, help="append the results to FILE.md")
    return parser.parse_args()


# --- the two models ---------------------------------------------------------------------------


def mixer_shapes(config_path: Path) -> tuple[str, dict]:
    """The tinyvision variant and architecture options to measure, without dropout."""
    config = load_config(config_path)
    params = dict(config.model_params)
    params.update(dropout=0.0, drop_path=0.0)
    return config.model_name, params


def timm_equivalent(params: dict) -> tuple[dict | None, str]:
    """Keyword arguments for timm's MlpMixer with the same shapes, or None and why not.

    timm's MlpMixer is one fixed design: a patch stem with bias, pre-norm LayerNorm blocks with
    skip connections, GELU MLPs with biases, a final norm, mean over patches and a linear head.
    Only tinyvision Mixers configured that way have a timm counterpart.
    """
    dim = params["dim"]
    per_block = {}
    for name in ("token_hidden", "channel_hidden"):
        value = params[name]
        widths = set(value) if isinstance(value, list) else {value}
        if len(widths) != 1:
            return None, f"{name} differs between blocks; timm uses one width for all blocks"
        per_block[name] = widths.pop()
    required = {
        "bias": True,
        "norm": "layer",
        "skip": True,
        "activation": "gelu",
        "stem_hidden": 0,
        "head_hidden": 0,
        "block_dims": [],
    }
    wrong = [f"{k}={params.get(k)!r}" for k, v in required.items() if params.get(k) != v]
    if wrong:
        return None, "timm's MlpMixer has no counterpart for " + ", ".join(wrong)
    ratios = (per_block["token_hidden"] / dim, per_block["channel_hidden"] / dim)
    # timm computes each width as int(ratio * dim): check the round trip is exact.
    if [int(r * dim) for r in ratios] != [per_block["token_hidden"], per_block["channel_hidden"]]:
        return None, f"hidden widths {per_block} are not representable as int(ratio * {dim})"
    return {
        "patch_size": params["patch_size"],
        "embed_dim": dim,
        "num_blocks": params["depth"],
        "mlp_ratio": ratios,
    }, ""


def import_timm_mixer() -> tuple[type | None, str]:
    """timm's MlpMixer class and version, or None and what is missing (timm is optional)."""
    try:
        import timm
        from timm.models.mlp_mixer import MlpMixer
    except Exception as err:  # ImportError, or torchvision failing to load beside this torch
        missing = getattr(err, "name", None)  # set by ModuleNotFoundError
        what = f"{missing} is not installed" if missing else "timm does not import"
        return None, (
            f"{what} ({type(err).__name__}: {str(err).splitlines()[0]}); timm needs torchvision "
            "built for this torch"
        )
    return MlpMixer, timm.__version__


def build_timm(mixer_cls: type, kwargs: dict, shape: tuple[int, int, int]) -> nn.Module:
    chans, height, _ = shape
    wanted = {
        **kwargs,
        "num_classes": NUM_CLASSES,
        "img_size": height,
        "in_chans": chans,
        "drop_rate": 0.0,
        "proj_drop_rate": 0.0,
        "drop_path_rate": 0.0,
    }
    # Older timm releases lack proj_drop_rate: pass only what this version accepts.
    accepted = inspect.signature(mixer_cls.__init__).parameters
    return mixer_cls(**{k: v for k, v in wanted.items() if k in accepted})


def display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it, so tables read the same anywhere."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --- timing -----------------------------------------------------------------------------------

Step = Callable[[torch.Tensor, torch.Tensor], None]  # one training step on (images, labels)


def make_step(
    model: nn.Module,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> Step:
    """One training step, as tinyvision's engine takes it (fused AdamW on CUDA)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, weight_decay=0.05, fused=device.type == "cuda"
    )

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    steps: dict[str, Step],
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, list[float]]:
    """Images per second of each timed block, per model; models alternate block by block."""
    for step in steps.values():
        for _ in range(args.warmup):
            step(images, labels)
    synchronize(device)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(images, labels)
            synchronize(device)
            rates[name].append(args.steps * images.shape[0] / (time.perf_counter() - start))
    return rates


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    args.steps = args.steps or (20 if on_gpu else 2)
    args.repeats = args.repeats or (7 if on_gpu else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and on_gpu)
    precision = "bf16 autocast" if use_bf16 else "fp32"

    def autocast() -> contextlib.AbstractContextManager:
        if use_bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # As tinyvision's engine configures torch (device.configure_torch).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    variant, params = mixer_shapes(args.config)
    batch_size = args.batch_size or load_config(args.config).data.batch_size
    timm_kwargs, no_timm = timm_equivalent(params)
    timm_cls, timm_version = import_timm_mixer()
    if timm_cls is None:
        no_timm, timm_version = timm_version, "not importable"

    report = Report(
        f"Mixer training step: tinyvision vs timm ({device.type}, {precision}, "
        f"compile {'on' if args.compile else 'off'})",
        device,
        versions={"timm": timm_version},
        context=[
            f"shapes: {variant} from {display_path(args.config)}: "
            f"patch {params['patch_size']}, dim {params['dim']}, depth {params['depth']}, "
            f"token_hidden {params['token_hidden']}, channel_hidden {params['channel_hidden']} "
            "(dropout and drop_path off)",
            f"step: forward + cross-entropy + backward + AdamW{' (fused)' if on_gpu else ''}, "
            f"batch {batch_size}; {args.warmup} warm-up steps, then {args.repeats} blocks of "
            f"{args.steps} steps per model, alternating; median block reported; seed {args.seed}",
        ],
    )
    columns = ["input", "model", "parameters", "images/s (median)", "range", "tinyvision / timm"]
    rows = []
    with LoadMeter() as load:
        for key in args.inputs.split(","):
            shape = INPUTS[key.strip()]
            torch.manual_seed(args.seed)
            models: dict[str, nn.Module] = {
                "tinyvision": create_model(
                    variant,
                    in_chans=shape[0],
                    num_classes=NUM_CLASSES,
                    image_size=shape[1:],
                    **params,
                )
            }
            if timm_cls is not None and timm_kwargs is not None:
                models["timm"] = build_timm(timm_cls, timm_kwargs, shape)
            counts = {}
            for name, model in models.items():
                model.to(device).train()
                counts[name] = sum(p.numel() for p in model.parameters())
                if args.compile:
                    model.compile()
            if len(set(counts.values())) > 1:
                print(f"WARNING: parameter counts differ for {key}: {counts}")
            images = torch.randn(batch_size, *shape, device=device)
            labels = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
            steps = {name: make_step(model, device, autocast) for name, model in models.items()}
            rates = measure(steps, images, labels, device, args)
            medians = {name: median(values) for name, values in rates.items()}
            label = f"{key} {'x'.join(map(str, shape))}"
            for name, values in rates.items():
                ratio = "—"
                if name == "tinyvision" and "timm" in medians:
                    ratio = f"**{medians['tinyvision'] / medians['timm']:.2f}x**"
                rows.append(
                    [
                        label,
                        name,
                        f"{counts[name]:,}",
                        f"{medians[name]:,.0f}",
                        f"{min(values):,.0f}–{max(values):,.0f}",
                        ratio,
                    ]
                )
            if "timm" not in models:
                rows.append([label, "timm", "—", f"not measured: {no_timm}", "—", "—"])
            print(f"{label}: " + ", ".join(f"{n} {m:,.0f} img/s" for n, m in medians.items()))
            del models, steps
            torch._dynamo.reset()  # the next input shape compiles from scratch, not as a recompile
    if device.type == "cpu":
        report.context.append(load.describe())
    report.add_table(columns, rows)
    report.add_note("Target: tinyvision / timm >= 1.0x at the same shapes, precision and compile.")
    report.emit(args.out)


if __name__ == "__main__":
    main()
