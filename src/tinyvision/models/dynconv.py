"""Dynamic-convolution CNN (brief B).

The brief, for a block on input X with d channels (one set of mixing weights per image):

    mixing weights  a = g(SpatialAveragePool(X) W)          W: d x K          (``KernelMixing``)
    block output    O = a_1 Conv_1(X) + ... + a_K Conv_K(X)  K convs d -> d', k x k, padding k//2
                                                                              (``DynamicConv2d``)
    classifier      logits = head(SpatialAveragePool(O_N))   softmax regression or an MLP
                                                                   (``DynConvNet.forward_head``)

``KernelMixing.forward`` computes a (with a temperature T: a = g(pool(X) W / T), T = 1 is the
brief; ``set_temperature`` lets a training loop anneal it, as Chen et al. 2020 do for softmax).
``DynamicConv2d`` holds the K kernels as one parameter ``weight`` of shape [K, d', d, k, k]
(W_1..W_K) and computes O with the operator ``tinyvision.ops.dynamic_conv.dynamic_conv2d``:
``impl="naive"`` is the brief's formula term by term (K convolutions and the weighted sum, the
reference); ``impl="fast"`` (``"auto"`` picks it) uses the linearity of convolution, one
convolution per image with the mixed kernel sum_k a_bk W_k, and a hand-written backward. How
it works and how fast it is: ``ops/dynamic_conv.py`` and docs/benchmarks.md
("Dynamic-convolution layer").

Extras around the core, all optional: a bias in the mixing layer or an MLP with a reduction
(``gate_bias``, ``gate_reduction``); per-kernel biases mixed like the weights (``conv_bias``);
batch norm and an activation after each dynamic convolution; down-sampling at the start of each
stage (max/avg pooling after the stage's first convolution, as airbench does, or a strided first
convolution); skip connections around pairs of convolutions; a plain-conv stem; an MLP head and
dropout. With them all off, every convolution of the network is a dynamic convolution of the
brief, and the network is: stem block -> stages of blocks -> average pool -> linear.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from tinyvision.models import Brief, register_variant
from tinyvision.models.layers import ACTIVATIONS
from tinyvision.ops.dynamic_conv import Impl, Method, dynamic_conv2d

Gate = Literal["softmax", "sigmoid", "relu", "identity"]


class DynConvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The dynamic convolution (every convolution of the network is one):
    num_kernels: PositiveInt = 4  # K
    kernel_size: PositiveInt = 3  # k; padding k // 2 keeps H x W at stride 1
    gate: Gate = "softmax"  # g
    temperature: float = Field(1.0, gt=0.0)  # a = g(z / T); set_temperature() can anneal it
    impl: Impl = "auto"  # naive = K convs and the sum; fast/auto = per fast_method
    # How the fast path computes (per-image kernels, or "sum" of K convs); auto = the measured
    # choice per device and layer shape.
    fast_method: Literal["auto", "grouped", "hybrid", "bmm", "nhwc", "sum"] = "auto"
    # The network: a stem block, then stages of blocks with one width each.
    stem: Literal["dynamic", "plain"] = "dynamic"  # plain = an ordinary conv (an extra)
    stem_width: PositiveInt = 32
    widths: list[PositiveInt] = Field(default=[64, 128, 256], min_length=1)  # d' of each stage
    depths: PositiveInt | list[PositiveInt] = 1  # dynamic convs per stage: one value or a list
    # Down-sampling factor of each stage (applied at its first conv); [] = 1, then 2, 2, ...
    strides: list[PositiveInt] = []
    downsample: Literal["maxpool", "avgpool", "stride"] = "maxpool"
    activation: Literal["none", "relu", "gelu", "silu", "tanh"] = "relu"  # after each conv
    # Extras around the core (all off = the brief's minimum):
    norm: Literal["none", "batch"] = "none"  # batch norm after each dynamic conv
    # Residual connections around each pair of convs after a stage's first (a lone last one
    # gets its own), as in airbench96 and ResNet's basic block:
    skip: bool = False
    gate_bias: bool = False  # a bias in the mixing layer: a = g(pool(X) W + c)
    gate_reduction: NonNegativeInt = 0  # > 0: the mixing layer is an MLP d -> d/r -> K
    conv_bias: bool = False  # per-kernel biases, mixed like the kernels: sum_k a_k b_k
    head_hidden: NonNegativeInt = 0  # 0 = softmax regression; > 0 = MLP classifier
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # before the classifier

    @model_validator(mode="after")
    def _check(self) -> DynConvConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so padding k//2 keeps the size (got {self.kernel_size})"
            )
        for name in ("depths", "strides"):
            value = getattr(self, name)
            if isinstance(value, list) and value and len(value) != len(self.widths):
                raise ValueError(
                    f"{name} has {len(value)} entries but there are {len(self.widths)} stages"
                )
        return self

    def stage_depths(self) -> list[int]:
        value = self.depths
        return list(value) if isinstance(value, list) else [value] * len(self.widths)

    def stage_strides(self) -> list[int]:
        return list(self.strides) or [1] + [2] * (len(self.widths) - 1)


# --- modules ---------------------------------------------------------------------------------

GATES = {
    "softmax": lambda z: torch.softmax(z, dim=-1),
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": lambda z: z,
}


class KernelMixing(nn.Module):
    """a = g(SpatialAveragePool(X) W / T): K mixing weights per image."""

    def __init__(
        self,
        in_chans: int,
        num_kernels: int,
        *,
        gate: Gate = "softmax",
        temperature: float = 1.0,
        bias: bool = False,
        reduction: int = 0,
    ) -> None:
        super().__init__()
        self.gate = gate
        if reduction:  # an extra: an MLP d -> d/r -> K (Chen et al. 2020 use r = 4)
            hidden = max(4, in_chans // reduction)
            self.proj: nn.Module = nn.Sequential(
                nn.Linear(in_chans, hidden), nn.ReLU(), nn.Linear(hidden, num_kernels, bias=bias)
            )
        else:  # the brief: W is d x K (nn.Linear stores W^T, [K, d])
            self.proj = nn.Linear(in_chans, num_kernels, bias=bias)
        # A buffer, so annealing it neither recompiles a compiled model nor is lost on resume.
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # SpatialAveragePool(X): [B, d]
        logits = self.proj(pooled) / self.temperature  # pool(X) W / T: [B, K]
        # a = g(...), in at least float32: under autocast the gate's input arrives in bf16.
        return GATES[self.gate](logits.to(torch.promote_types(logits.dtype, torch.float32)))

    def extra_repr(self) -> str:
        return f"gate={self.gate}, temperature={self.temperature.item():g}"


class DynamicConv2d(nn.Module):
    """O = a_1 Conv_1(X) + ... + a_K Conv_K(X) with a = KernelMixing(X), per image."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        *,
        num_kernels: int = 4,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        gate: Gate = "softmax",
        temperature: float = 1.0,
        gate_bias: bool = False,
        gate_reduction: int = 0,
        impl: Impl = "auto",
        method: Method | None = None,
    ) -> None:
        super().__init__()
        self.in_chans, self.out_chans = in_chans, out_chans
        self.num_kernels, self.kernel_size = num_kernels, kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.impl: Impl = impl
        self.method = method  # the fast path's per-image convs; None = choose_method()
        self.mixing = KernelMixing(
            in_chans,
            num_kernels,
            gate=gate,
            temperature=temperature,
            bias=gate_bias,
            reduction=gate_reduction,
        )
        # W_1..W_K, each d' x d x k x k, stacked: [K, d', d, k, k]
        self.weight = nn.Parameter(
            torch.empty(num_kernels, out_chans, in_chans, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(num_kernels, out_chans)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He-normal kernels, scaled so the kernel mixed with the initial weights has He's scale:
        # softmax starts near a_k = 1/K (sum_k a_k^2 = 1/K), sigmoid near 1/2 (sum = K/4).
        fan_in = self.in_chans * self.kernel_size**2
        mix = {"softmax": self.num_kernels**0.5, "sigmoid": 2 / self.num_kernels**0.5}
        std = (2.0 / fan_in) ** 0.5 * mix.get(self.mixing.gate, 1.0)
        nn.init.normal_(self.weight, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def macs(self, x: torch.Tensor, out: torch.Tensor) -> int:
        """Multiply-accumulates of one call (for the model summary): each image's kernel
        sum_k a_k W_k (K d' d k^2 an image; none for one kernel, which is W_1 itself) and the
        convolution with it. The gate's linear map counts on its own row; how the fast path
        computes (e.g. K convolutions and a sum) does not change what the layer is."""
        kernel = self.in_chans * self.kernel_size**2
        per_image = self.num_kernels * self.out_chans * kernel if self.num_kernels > 1 else 0
        return out.numel() * kernel + x.shape[0] * per_image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_kernels == 1 and self.mixing.gate == "softmax":
            # The static twin: softmax over one kernel is exactly 1 for every image (and its
            # gradient 0), so O = Conv_1(X), an ordinary convolution; skipping the pool, the
            # gate and the product by 1 keeps the twin as fast as a plain CNN.
            bias = None if self.bias is None else self.bias[0]
            return F.conv2d(x, self.weight[0], bias, self.stride, self.padding)
        a = self.mixing(x)  # [B, K]
        return dynamic_conv2d(
            x,
            a,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            impl=self.impl,
            method=self.method,
        )

    def set_temperature(self, temperature: float) -> None:
        self.mixing.temperature.fill_(temperature)

    def extra_repr(self) -> str:
        return (
            f"{self.in_chans}, {self.out_chans}, num_kernels={self.num_kernels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}, impl={self.impl}"
        )


class ConvUnit(nn.Module):
    """One block of the brief plus its extras: dynamic conv -> [pool] -> [BN] -> [activation]."""

    def __init__(
        self, in_chans: int, out_chans: int, cfg: DynConvConfig, *, factor: int = 1
    ) -> None:
        super().__init__()
        strided = factor > 1 and cfg.downsample == "stride"
        self.conv = _dynamic_conv(in_chans, out_chans, cfg, stride=factor if strided else 1)
        # Pooling follows the conv (airbench's order: the conv sees the finer grid).
        if factor > 1 and cfg.downsample == "maxpool":
            self.pool: nn.Module = nn.MaxPool2d(factor)
        elif factor > 1 and cfg.downsample == "avgpool":
            self.pool = nn.AvgPool2d(factor)
        else:
            self.pool = nn.Identity()
        self.norm = nn.BatchNorm2d(out_chans) if cfg.norm == "batch" else nn.Identity()
        self.act = nn.Identity() if cfg.activation == "none" else ACTIVATIONS[cfg.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.pool(self.conv(x))))


class Residual(nn.Sequential):
    """x + units(x): a skip connection around consecutive conv units (an extra)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _dynamic_conv(
    in_chans: int, out_chans: int, cfg: DynConvConfig, *, stride: int = 1
) -> DynamicConv2d:
    return DynamicConv2d(
        in_chans,
        out_chans,
        num_kernels=cfg.num_kernels,
        kernel_size=cfg.kernel_size,
        stride=stride,
        bias=cfg.conv_bias,
        gate=cfg.gate,
        temperature=cfg.temperature,
        gate_bias=cfg.gate_bias,
        gate_reduction=cfg.gate_reduction,
        impl=cfg.impl,
        method=None if cfg.fast_method == "auto" else cfg.fast_method,
    )


def _stage(in_chans: int, width: int, depth: int, factor: int, cfg: DynConvConfig) -> nn.Sequential:
    """The first unit changes the width and down-samples; skips pair up the units after it."""
    units: list[nn.Module] = [ConvUnit(in_chans, width, cfg, factor=factor)]
    rest = [ConvUnit(width, width, cfg) for _ in range(depth - 1)]
    if cfg.skip:
        units += [Residual(*rest[i : i + 2]) for i in range(0, len(rest), 2)]
    else:
        units += rest
    return nn.Sequential(*units)


class DynConvNet(nn.Module):
    """stem block -> stages of dynamic-conv blocks -> spatial average pool -> classifier."""

    Config = DynConvConfig
    brief = Brief(
        "B",
        "Dynamic-convolution CNN",
        "blocks of K convolutions mixed per image by a = g(SpatialAveragePool(X) W) → spatial "
        "average pooling → softmax regression.",
    )

    def __init__(
        self, cfg: DynConvConfig, *, in_chans: int, num_classes: int, image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        _check_image_size(cfg, image_size)
        if cfg.stem == "plain":  # an extra: an ordinary conv in place of the first dynamic one
            conv: nn.Module = nn.Conv2d(
                in_chans,
                cfg.stem_width,
                cfg.kernel_size,
                padding=cfg.kernel_size // 2,
                bias=cfg.norm == "none",  # a batch norm's shift makes a bias redundant
            )
            norm = nn.BatchNorm2d(cfg.stem_width) if cfg.norm == "batch" else nn.Identity()
            act = nn.Identity() if cfg.activation == "none" else ACTIVATIONS[cfg.activation]()
            self.stem: nn.Module = nn.Sequential(conv, norm, act)
        else:
            self.stem = ConvUnit(in_chans, cfg.stem_width, cfg)
        stages, channels = [], cfg.stem_width
        for width, depth, factor in zip(
            cfg.widths, cfg.stage_depths(), cfg.stage_strides(), strict=True
        ):
            stages.append(_stage(channels, width, depth, factor, cfg))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.num_features = channels
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.head_hidden:
            act = ACTIVATIONS["relu" if cfg.activation == "none" else cfg.activation]
            self.head: nn.Module = nn.Sequential(
                nn.Linear(channels, cfg.head_hidden),
                act(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.head_hidden, num_classes),
            )
        else:
            self.head = nn.Linear(channels, num_classes)  # softmax regression

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))  # O_N: [B, d_N, h, w]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features.mean(dim=(2, 3))))  # f = SpatialAveragePool(O_N)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def dynamic_convs(self) -> list[DynamicConv2d]:
        return [m for m in self.modules() if isinstance(m, DynamicConv2d)]

    def set_temperature(self, temperature: float) -> None:
        """Set the gate temperature T of every dynamic conv (for annealing schedules)."""
        for conv in self.dynamic_convs():
            conv.set_temperature(temperature)


def _check_image_size(cfg: DynConvConfig, image_size: tuple[int, int]) -> None:
    height, width = image_size
    for i, factor in enumerate(cfg.stage_strides()):
        if factor > 1 and min(height, width) < factor:
            raise ValueError(
                f"a {image_size[0]}x{image_size[1]} image is too small for the down-sampling: "
                f"stage {i + 1} would get {height}x{width} input and down-sample it by {factor}"
            )
        # Pools floor the size; a conv of stride s with padding k//2 rounds it up.
        if cfg.downsample == "stride":
            height, width = -(-height // factor), -(-width // factor)
        else:
            height, width = height // factor, width // factor


# Variants: names for the configurations people ask for; each only sets arguments.
register_variant(
    "dynconv_brief",
    DynConvNet,
    "brief B's minimum: every conv dynamic (K=4, softmax), ReLU, max-pool, no BN/skip, linear head",
    stem_width=32,
    widths=[64, 128, 256],
    depths=1,
)
register_variant(
    "dynconv",
    DynConvNet,
    "airbench-like: dynamic convs 64/256/256 with BN-GELU, max-pool after each stage's first conv",
    stem_width=32,
    widths=[64, 256, 256],
    depths=2,
    strides=[2, 2, 2],
    norm="batch",
    activation="gelu",
)
