"""Patch-MLP "Mixer" (brief A).

The brief, for an image split into N_p non-overlapping K x K patches:

    stem        X = f(patches)             X in R^(N_p x d); f linear or one-hidden-layer MLP
    block i     O_1 = (g(X^T W_1) W_2)^T    W_1: N_p x h_1, W_2: h_1 x N_p  (across patches)
                O_2 = g(O_1 W_3) W_4        W_3: d x h_2,   W_4: h_2 x d_o  (across features)
    classifier  logits = head(mean over patches of O_2);  head: softmax regression or an MLP

With every option off (``bias=False, norm="none", skip=False, dropout=0``) this module is exactly
those formulas: ``TokenMixing`` computes O_1, ``ChannelMixing`` computes O_2. The options are
extras *around* that core (biases, pre-norm LayerNorm, skip connections, dropout, stochastic
depth), each switched on independently; they never replace the two MLPs.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from tinyvision.models import Brief, register_variant
from tinyvision.models.layers import ACTIVATIONS, DropPath, PerBlockConfig, make_norm

Activation = Literal["gelu", "relu", "silu", "tanh"]


class MixerConfig(PerBlockConfig):
    PER_BLOCK = ("token_hidden", "channel_hidden", "block_dims")

    patch_size: PositiveInt = 4  # K
    dim: PositiveInt = 128  # d, the stem's output width
    depth: PositiveInt = 2  # N blocks
    # Per-block widths: one value for every block, or a list with one value per block.
    token_hidden: PositiveInt | list[PositiveInt] = 64  # h_1
    channel_hidden: PositiveInt | list[PositiveInt] = 256  # h_2
    block_dims: list[PositiveInt] = Field(
        default_factory=list
    )  # d_o of each block; [] = keep d in every block
    stem_hidden: int = Field(0, ge=0)  # 0 = f is linear; > 0 = f is an MLP with this hidden width
    head_hidden: int = Field(0, ge=0)  # 0 = softmax regression; > 0 = MLP classifier
    activation: Activation = "gelu"  # g
    # Extras around the core (all off = the brief's minimum):
    bias: bool = False
    norm: Literal["none", "layer"] = "none"  # pre-norm before each MLP and before the head
    skip: bool = False  # residual connection around each MLP
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # after each hidden activation and output
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)  # stochastic depth, linearly over blocks
    init: Literal["default", "normal"] = "default"  # normal: N(0, 0.02) weights, zero biases


class Mlp(nn.Module):
    """x -> g(x W_a) W_b, over the last dimension (plus optional bias and dropout)."""

    def __init__(
        self, in_dim: int, hidden: int, out_dim: int, *, activation: str, bias: bool, dropout: float
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim, bias=bias)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class PatchStem(nn.Module):
    """Split into K x K patches, flatten each (K*K*C values), map to d features with f."""

    def __init__(self, cfg: MixerConfig, in_chans: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        height, width = image_size
        k = cfg.patch_size
        if height % k or width % k:
            raise ValueError(
                f"patch_size {k} does not divide the {height}x{width} image; "
                f"choose a divisor of {height} and {width}"
            )
        self.patch_size = k
        self.num_patches = (height // k) * (width // k)
        patch_values = k * k * in_chans
        if cfg.stem_hidden:
            self.proj: nn.Module = Mlp(
                patch_values,
                cfg.stem_hidden,
                cfg.dim,
                activation=cfg.activation,
                bias=cfg.bias,
                dropout=0.0,
            )
        else:
            self.proj = nn.Linear(patch_values, cfg.dim, bias=cfg.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        k = self.patch_size
        # [B, C, H, W] -> [B, N_p, K*K*C]: patches in row-major order, each flattened (K, K, C).
        patches = images.reshape(b, c, h // k, k, w // k, k).permute(0, 2, 4, 3, 5, 1)
        return self.proj(patches.reshape(b, self.num_patches, k * k * c))  # X: [B, N_p, d]


class TokenMixing(nn.Module):
    """O_1 = (g(X^T W_1) W_2)^T: an MLP applied along the patch axis."""

    def __init__(self, num_patches: int, dim: int, hidden: int, cfg: MixerConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg.norm, dim)
        self.mlp = Mlp(
            num_patches,
            hidden,
            num_patches,
            activation=cfg.activation,
            bias=cfg.bias,
            dropout=cfg.dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, N_p, d]; x^T: [B, d, N_p]; W_1: N_p x h_1; W_2: h_1 x N_p; back to [B, N_p, d]
        return self.mlp(self.norm(x).transpose(1, 2)).transpose(1, 2)


class ChannelMixing(nn.Module):
    """O_2 = g(O_1 W_3) W_4: an MLP applied along the feature axis of every patch."""

    def __init__(self, dim: int, hidden: int, out_dim: int, cfg: MixerConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg.norm, dim)
        self.mlp = Mlp(
            dim, hidden, out_dim, activation=cfg.activation, bias=cfg.bias, dropout=cfg.dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))  # [B, N_p, d] -> [B, N_p, d_o]


class MixerBlock(nn.Module):
    """B_i: token mixing then channel mixing, each optionally wrapped in a skip connection."""

    def __init__(
        self,
        num_patches: int,
        dim: int,
        out_dim: int,
        token_hidden: int,
        channel_hidden: int,
        cfg: MixerConfig,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.skip = cfg.skip
        self.token_mixing = TokenMixing(num_patches, dim, token_hidden, cfg)
        self.channel_mixing = ChannelMixing(dim, channel_hidden, out_dim, cfg)
        self.drop_path = DropPath(drop_path)
        # A skip across a width change needs a projection (He et al.'s option B).
        self.shortcut = (
            nn.Linear(dim, out_dim, bias=False) if cfg.skip and out_dim != dim else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.skip:
            return self.channel_mixing(self.token_mixing(x))
        x = x + self.drop_path(self.token_mixing(x))
        return self.shortcut(x) + self.drop_path(self.channel_mixing(x))


class Mixer(nn.Module):
    Config = MixerConfig
    brief = Brief(
        "A",
        "Patch-MLP (Mixer)",
        "K×K patches → linear or MLP stem → blocks of a patch-mixing MLP and a feature-mixing "
        "MLP → mean over patches → softmax regression.",
    )

    def __init__(
        self, cfg: MixerConfig, *, in_chans: int, num_classes: int, image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.stem = PatchStem(cfg, in_chans, image_size)
        num_patches = self.stem.num_patches
        dims_out = cfg.block_dims or [cfg.dim] * cfg.depth
        dims_in = [cfg.dim, *dims_out[:-1]]
        drop_paths = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.Sequential(
            *[
                MixerBlock(num_patches, d_in, d_out, h1, h2, cfg, dp)
                for d_in, d_out, h1, h2, dp in zip(
                    dims_in,
                    dims_out,
                    cfg.per_block("token_hidden"),
                    cfg.per_block("channel_hidden"),
                    drop_paths,
                    strict=True,
                )
            ]
        )
        self.norm = make_norm(cfg.norm, dims_out[-1])
        self.num_features = dims_out[-1]
        if cfg.head_hidden:
            self.head: nn.Module = Mlp(
                self.num_features,
                cfg.head_hidden,
                num_classes,
                activation=cfg.activation,
                bias=True,
                dropout=cfg.dropout,
            )
        else:
            self.head = nn.Linear(self.num_features, num_classes)  # softmax regression
        if cfg.init == "normal":
            self.apply(_init_normal)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.stem(images)))  # last O_2: [B, N_p, d_o]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean(dim=1))  # average over patches, then classify

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def _init_normal(module: nn.Module) -> None:
    """Report 1's initialisation: normal weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# Variants: names for the configurations people ask for; each only sets arguments.
register_variant(
    "mixer_brief",
    Mixer,
    "brief A's minimum: linear stem, no bias/norm/skip, softmax regression",
    patch_size=4,
    dim=128,
    depth=2,
    token_hidden=64,
    channel_hidden=256,
)
register_variant(
    "mixer",
    Mixer,
    "the brief's core with pre-norm, skips and biases (the default recipe)",
    patch_size=4,
    dim=128,
    depth=4,
    token_hidden=64,
    channel_hidden=256,
    bias=True,
    norm="layer",
    skip=True,
)
register_variant(
    "mixer_l",
    Mixer,
    "a wider, deeper Mixer for top accuracy",
    patch_size=2,
    dim=256,
    depth=8,
    token_hidden=256,
    channel_hidden=1024,
    bias=True,
    norm="layer",
    skip=True,
    drop_path=0.1,
)
