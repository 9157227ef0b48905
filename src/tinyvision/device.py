"""Where and how precisely tensors are computed: the device, autocast and torch's settings.

A leaf module (at run time it imports nothing of tinyvision's but the errors; the config only
for annotations), so the engine, the evaluation of a saved model and the benchmarks all choose
devices and precision the same way.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from tinyvision.errors import TinyVisionError

if TYPE_CHECKING:  # for the annotations only: the config is handed in, never imported
    from tinyvision.config import Config


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; anything else must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TinyVisionError(
            f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinyVisionError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TinyVisionError(f"device {name!r} asked for, but Apple MPS is not available here")
    return device


def autocast_for(config: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (``precision = auto`` or ``bf16``); full fp32 elsewhere by default."""
    use_bf16 = config.train.precision == "bf16" or (
        config.train.precision == "auto" and device.type == "cuda"
    )
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def convs_to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``nn.Conv2d`` weight in channels-last (NHWC) memory, in place.

    Layer by layer rather than ``model.to(memory_format=...)``: brief B's dynamic convolutions
    keep their K kernels in one 5-D tensor, which has no channels-last layout (``model.to``
    raises on it), and convert their input to the layout they compute in themselves.
    """
    for conv in model.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.to(memory_format=torch.channels_last)
    return model


def cpu_has_native_bf16() -> bool:
    """Whether torch's CPU kernels have bf16 instructions here (AVX512-BF16 or AMX).

    Only there does ``train.precision = "bf16"`` speed a CPU up: on the project's AMD EPYC
    (AVX512-BF16) 6 epochs of the Mixer CPU recipe's model took 173 s instead of 290 s
    (docs/results.md, trials t1 and t2). Elsewhere torch emulates bf16, usually more slowly
    than fp32. The probes are private to torch, so their absence counts as "no".
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def configure_torch(config: Config) -> None:
    """Threads, determinism and TF32, as ``[train]`` says; called once before training."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
