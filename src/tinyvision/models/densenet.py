"""DenseNet (brief D), following Huang et al., "Densely Connected Convolutional Networks".

The brief, for growth rate k (the brief leaves k free; ``growth_rate``, default 12):

    dense layer l   x_l = H_l([x_0, x_1, ..., x_{l-1}])     H_l = BN -> ReLU -> 3x3 conv (pad 1)
                    every layer adds k channels              (``DenseLayer``)
    dense block     output [x_0, x_1, ..., x_L]: c_in + L*k channels, same spatial size
                                                             (``DenseBlock``, L = ``num_layers``)
    transition      BN -> 1x1 conv (c -> c') -> 2x2 average pool, stride 2
                                                             (``Transition``)
    network         3x3 conv (spatial size kept) to 4 channels -> avg pool stride 2, no padding
                    -> DenseBlock(3 layers) -> Transition(back to 4 channels)
                    -> DenseBlock(3 layers) -> global average pool -> FC to 10 logits
                                                             (``DenseNet``, variant densenet_brief)

The brief's questions, for a 28x28 input: block 1 runs at 14x14 with 4 channels in and 4+3k out;
block 2 at 7x7 with 4 in and 4+3k out; the FC layer takes 4+3k features.
:func:`dense_block_answers` (or ``DenseNet.shape_answers()``) answers them for any configuration
from a real forward pass; ``DenseNet.brief`` hands them to the report and ``tinyvision summary``.

Extras, all off by default so the defaults are the brief's network exactly:

- ``bottleneck``: DenseNet-B's 1x1 conv (BN -> ReLU -> 1x1 conv to bottleneck*k channels) in front
  of each layer's 3x3 conv; the 3x3 conv that adds k channels stays.
- ``dropout`` after each dense layer's convolution (Huang et al. use 0.2 without augmentation).
- ``compression``: transition widths as a fraction of their input (DenseNet-C) instead of fixed
  ``transition_channels``.
- ``final_norm``: BN -> ReLU before global pooling. Huang et al.'s implementations have it; the
  brief's network does not, so it is off by default.
- ``stem_pool=false`` drops the stem's pooling (a deeper network on small images keeps its
  resolution longer); the brief's network has it.

Convolutions carry no bias: every one is followed (directly or after pooling) by a batch norm or,
for the last block, by global pooling and the FC layer, whose bias absorbs a constant shift.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from torch import nn

from tinyvision.models import Brief, register_variant


class DenseNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    growth_rate: PositiveInt = 12  # k: channels each dense layer adds (the brief leaves k free)
    stem_channels: PositiveInt = 4  # the stem's 3x3 conv output channels (brief: 4)
    block_layers: list[PositiveInt] = Field(default=[3, 3], min_length=1)  # L of each block
    # Output channels of each transition's 1x1 conv: one value for all, or one per transition.
    transition_channels: PositiveInt | list[PositiveInt] = 4  # brief: "back to 4 channels"
    # Extras (all off = the brief's network):
    compression: float = Field(0.0, ge=0.0, le=1.0)  # > 0: transitions keep this fraction
    bottleneck: NonNegativeInt = 0  # > 0: 1x1 conv to bottleneck*k channels before the 3x3
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # after each dense layer's convolution
    final_norm: bool = False  # BN -> ReLU after the last block
    stem_pool: bool = True  # the brief's average pool after the stem conv

    @model_validator(mode="after")
    def _transitions_match_blocks(self) -> DenseNetConfig:
        value = self.transition_channels
        if isinstance(value, list) and len(value) != len(self.block_layers) - 1:
            raise ValueError(
                f"transition_channels has {len(value)} entries but {len(self.block_layers)} "
                f"blocks have {len(self.block_layers) - 1} transitions between them"
            )
        return self

    def transition_out(self, index: int, in_channels: int) -> int:
        """Output channels of transition ``index`` (0-based) given its input channels."""
        if self.compression > 0:
            return max(1, int(self.compression * in_channels))
        value = self.transition_channels
        return value[index] if isinstance(value, list) else value


class DenseLayer(nn.Module):
    """H_l: BN -> ReLU -> 3x3 conv (padding 1) adding k channels; optional bottleneck, dropout."""

    def __init__(
        self, in_channels: int, growth_rate: int, *, bottleneck: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if bottleneck:  # DenseNet-B: BN -> ReLU -> 1x1 conv shrinks the input first
            width = bottleneck * growth_rate
            self.bottleneck: nn.Module = nn.Sequential(
                nn.BatchNorm2d(in_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_channels, width, kernel_size=1, bias=False),
            )
        else:
            width = in_channels
            self.bottleneck = nn.Identity()
        self.norm = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x is the concatenation [x_0, ..., x_{l-1}]; inplace ReLU acts on the BN's fresh output,
        # never on the concatenation itself.
        return self.drop(self.conv(self.act(self.norm(self.bottleneck(x)))))


class DenseBlock(nn.Module):
    """num_layers dense layers; layer l sees [x_0, ..., x_{l-1}]; output [x_0, ..., x_L]."""

    def __init__(
        self,
        in_channels: int,
        num_layers: int,
        growth_rate: int,
        *,
        bottleneck: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_layers = num_layers
        self.growth_rate = growth_rate
        self.out_channels = in_channels + num_layers * growth_rate  # c_in + L*k
        # Layers are direct children (layer1, layer2, ...) so summaries show them one level down.
        for i in range(num_layers):
            layer = DenseLayer(
                in_channels + i * growth_rate, growth_rate, bottleneck=bottleneck, dropout=dropout
            )
            self.add_module(f"layer{i + 1}", layer)

    @property
    def layers(self) -> list[DenseLayer]:
        return [layer for layer in self.children() if isinstance(layer, DenseLayer)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]  # x_0 = the block input
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))  # x_l = H_l([x_0, ..., x_{l-1}])
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN -> 1x1 conv (in -> out channels) -> 2x2 average pool, stride 2 (halves H and W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_channels),
                conv=nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                pool=nn.AvgPool2d(kernel_size=2, stride=2),
            )
        )
        self.in_channels = in_channels
        self.out_channels = out_channels


class DenseNet(nn.Module):
    """stem conv -> avg pool -> [DenseBlock, Transition]* DenseBlock -> GAP -> FC."""

    Config = DenseNetConfig
    brief = Brief(
        "D",
        "DenseNet",
        "3×3 conv to 4 channels → average pool → dense block (3 layers, growth k) → transition "
        "back to 4 channels → dense block (3 layers) → global average pool → FC.",
        answers=lambda model, input_shape: dense_block_answers(model, input_shape).to_text(),
    )

    def __init__(
        self, cfg: DenseNetConfig, *, in_chans: int, num_classes: int, image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.image_size = tuple(image_size)
        _check_image_size(cfg, image_size)
        # Stem: 3x3 conv with padding 1 keeps H x W; the 2x2 pool (no padding) floors odd sizes.
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_chans, cfg.stem_channels, kernel_size=3, padding=1, bias=False),
                pool=nn.AvgPool2d(kernel_size=2, stride=2) if cfg.stem_pool else nn.Identity(),
            )
        )
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        channels = cfg.stem_channels
        for i, num_layers in enumerate(cfg.block_layers):
            block = DenseBlock(
                channels,
                num_layers,
                cfg.growth_rate,
                bottleneck=cfg.bottleneck,
                dropout=cfg.dropout,
            )
            stages[f"block{i + 1}"] = block
            channels = block.out_channels
            if i < len(cfg.block_layers) - 1:
                transition = Transition(channels, cfg.transition_out(i, channels))
                stages[f"transition{i + 1}"] = transition
                channels = transition.out_channels
        self.features = nn.Sequential(stages)
        self.norm = (
            nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            if cfg.final_norm
            else nn.Identity()
        )
        self.num_features = channels  # the FC layer's input size: the last block's channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # global average pool
        self.head = nn.Linear(channels, num_classes)
        self.apply(_init_weights)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.features(self.stem(images)))  # [B, c_last, h, w]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def shape_answers(self) -> DenseNetAnswers:
        """The brief's questions (block sizes and channels, FC input) from a real forward pass."""
        return dense_block_answers(self, (self.in_chans, *self.image_size))


def _check_image_size(cfg: DenseNetConfig, image_size: tuple[int, int]) -> None:
    # Each 2x2 pool floors the size; refuse an image that would shrink to nothing.
    poolings = int(cfg.stem_pool) + len(cfg.block_layers) - 1
    height, width = image_size
    if min(height, width) < 2**poolings:
        raise ValueError(
            f"a {height}x{width} image is too small for {poolings} 2x2 poolings "
            f"(stem pool and {len(cfg.block_layers) - 1} transitions): "
            f"it needs at least {2**poolings}x{2**poolings}"
        )


def _init_weights(module: nn.Module) -> None:
    """Huang et al.'s initialisation: He-normal convolutions, BN at identity, zero FC bias."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)


# Variants: names for the configurations people ask for; each only sets arguments.
register_variant(
    "densenet_brief",
    DenseNet,
    "brief D's network exactly: 4-channel stem, 2 blocks of 3 layers, transition to 4, k=12",
    growth_rate=12,
    stem_channels=4,
    block_layers=[3, 3],
    transition_channels=4,
)
register_variant(
    "densenet",
    DenseNet,
    "the brief's structure (2 blocks of 3 layers) made wider: k=64, 64-ch stem, final BN-ReLU",
    growth_rate=64,
    stem_channels=64,
    block_layers=[3, 3],
    transition_channels=128,
    final_norm=True,
)
register_variant(
    "densenet_l",
    DenseNet,
    "a DenseNet-BC: 3 blocks of 12 bottleneck layers, k=24, compression 0.5, no stem pool",
    growth_rate=24,
    stem_channels=48,
    block_layers=[12, 12, 12],
    bottleneck=4,
    compression=0.5,
    stem_pool=False,
    final_norm=True,
)


# --- Brief D's questions ----------------------------------------------------------------------


@dataclass(frozen=True)
class DenseBlockShape:
    index: int  # 1-based, as the brief counts
    spatial: tuple[int, int]  # (height, width) the block runs at
    in_channels: int
    out_channels: int
    num_layers: int
    growth_rate: int


@dataclass(frozen=True)
class DenseNetAnswers:
    input_shape: tuple[int, int, int]
    blocks: list[DenseBlockShape]
    fc_in_features: int  # input size of the final fully connected layer

    def to_text(self) -> str:
        """The answers as sentences, each with the closed form c_in + L*k beside the number."""
        c, h, w = self.input_shape
        lines = [f"Brief D's questions, for a {c}x{h}x{w} input (measured by a forward pass):"]
        for block in self.blocks:
            bh, bw = block.spatial
            lines.append(
                f"- Dense block {block.index} runs at {bh}x{bw} (height x width), with "
                f"{block.in_channels} input channels and {block.out_channels} output channels "
                f"({block.in_channels} + {block.num_layers} x {block.growth_rate})."
            )
        last = self.blocks[-1]
        lines.append(
            f"- The final fully connected layer takes {self.fc_in_features} input features "
            f"(global average pooling of dense block {last.index}'s {last.out_channels} "
            f"output channels over its {last.spatial[0]}x{last.spatial[1]} positions)."
        )
        return "\n".join(lines)


def dense_block_answers(model: nn.Module, input_shape: tuple[int, int, int]) -> DenseNetAnswers:
    """Spatial size and channels of every dense block, and the final FC layer's input size.

    Measured by hooks on a real forward pass of a zero image of ``input_shape`` (C, H, W), so
    they hold for any configuration (and any model built of ``DenseBlock``s); the tests check
    them against the brief's closed form.
    """
    blocks: dict[nn.Module, DenseBlockShape] = {}
    linears: list[int] = []  # in_features seen by each Linear call, in call order

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, DenseBlock) and module not in blocks:
            x = inputs[0]
            blocks[module] = DenseBlockShape(
                index=len(blocks) + 1,
                spatial=(x.shape[2], x.shape[3]),
                in_channels=x.shape[1],
                out_channels=output.shape[1],
                num_layers=module.num_layers,
                growth_rate=module.growth_rate,
            )
        elif isinstance(module, nn.Linear):
            linears.append(inputs[0].shape[-1])

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        model.eval()  # batch norm on running statistics: a batch of one image works
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no DenseBlock: not a DenseNet")
    if not linears:
        raise ValueError(f"{type(model).__name__} has no fully connected layer")
    return DenseNetAnswers(tuple(input_shape), list(blocks.values()), linears[-1])
