"""Residual MLP (brief C).

The brief asks for a feed-forward MLP with residual connections in the sense of He et al. 2015
("Deep Residual Learning for Image Recognition"), with the residual block its own module whose
fully connected output widths are user parameters. The brief's figure of the exact network is
lost, so this is the natural design, with He et al.'s identity shortcut:

    stem        x_0 = flatten(image) W_s + b_s              W_s: (C*H*W) x w
    block i     x_i = g(x_{i-1} + FC2(g(FC1(x_{i-1}))))     FC1: w x h_i,  FC2: h_i x w
    head        logits = x_n W_h + b_h                      W_h: w x num_classes

``ResidualBlock`` computes one line "block i"; ``ResMLP`` composes stem, blocks and head. With
every option off (``norm="none", dropout=0, drop_path=0``) the module is exactly those formulas.

Two residual blocks, one option (``post_activation``):

- ``post_activation = true`` (the default, and ``resmlp_brief``): He et al. 2015's block, their
  Figure 2, y = g(x + F(x)) with F(x) = FC2(g(FC1(x))): the non-linearity comes *after* the
  addition. This is the paper the brief cites.
- ``post_activation = false`` (the ``resmlp`` recipe): He et al. 2016's identity-mapping block
  ("Identity Mappings in Deep Residual Networks"), y = x + F(x) with nothing after the addition,
  so the shortcut is a clean identity path; it trains deep stacks more easily and is the form
  that pre-activation normalisation (below) goes with.

Design choices, each an extra *around* that core:

- The shortcut is the identity (He et al.'s option A/identity mapping); only when a block changes
  the width (``block_widths``) does it become a linear projection (their option B).
- ``norm`` ("batch" or "layer") goes in *pre-activation* position, at the entrance of the
  residual branch: x + FC2(dropout(g(FC1(norm(x))))). The shortcut stays untouched, and since
  the residual stream is then never normalised, one more norm sits before the head.
- ``dropout`` acts on the hidden activation g(FC1(.)); ``drop_path`` drops the whole branch
  per sample (stochastic depth), rising linearly over the blocks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from tinyvision.models import Brief, register_variant
from tinyvision.models.layers import ACTIVATIONS, DropPath, PerBlockConfig, make_norm

Activation = Literal["gelu", "relu", "silu", "tanh"]
Norm = Literal["none", "batch", "layer"]


class ResMLPConfig(PerBlockConfig):
    PER_BLOCK = ("hidden", "block_widths")

    width: PositiveInt = 256  # w: the stem's output width, kept by every identity shortcut
    depth: PositiveInt = 2  # n residual blocks
    # FC1's output width h_i: one value for every block, or a list with one value per block.
    hidden: PositiveInt | list[PositiveInt] = 256
    # FC2's output width of each block; [] = w everywhere (identity shortcuts only).
    block_widths: list[PositiveInt] = Field(default_factory=list)
    activation: Activation = "relu"  # g; ReLU as in He et al.
    # g after the addition, y = g(x + F(x)): He et al. 2015's block (the brief's citation).
    # false: He et al. 2016's identity-mapping block y = x + F(x).
    post_activation: bool = True
    bias: bool = True  # biases in every linear layer (an MLP's usual form)
    # Extras around the core (all off = the plain design):
    norm: Norm = "none"  # pre-activation norm at each branch's entrance, and before the head
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the hidden activation of each block
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)  # stochastic depth, linearly over blocks


class ResidualBlock(nn.Module):
    """x -> g(shortcut(x) + FC2(g(FC1(x)))): one residual block with user-chosen FC widths.

    ``post_activation=False`` drops the outer g (He et al. 2016's identity-mapping form).

    ``hidden`` is FC1's output width, ``out_dim`` FC2's (default: ``in_dim``, so the shortcut is
    the identity). ``norm``, ``dropout`` and ``drop_path`` are the optional extras.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int | None = None,
        *,
        activation: str = "relu",
        post_activation: bool = True,
        bias: bool = True,
        norm: str = "none",
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.norm = make_norm(norm, in_dim)  # pre-activation placement: branch entrance only
        self.fc1 = nn.Linear(in_dim, hidden, bias=bias)
        self.act = ACTIVATIONS[activation]()
        # He et al. 2015: g after the addition; 2016: nothing (a clean identity path).
        self.post_act = ACTIVATIONS[activation]() if post_activation else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim, bias=bias)
        self.drop_path = DropPath(drop_path)
        # Identity when the width is kept (He et al.'s shortcut); a projection otherwise.
        self.shortcut = (
            nn.Identity() if out_dim == in_dim else nn.Linear(in_dim, out_dim, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))  # FC2(g(FC1(x)))
        return self.post_act(self.shortcut(x) + self.drop_path(branch))


class ResMLP(nn.Module):
    """flatten -> linear to w -> n residual blocks -> (norm) -> linear to num_classes."""

    Config = ResMLPConfig
    brief = Brief(
        "C",
        "Residual MLP",
        "flatten → linear to width w → residual blocks x + FC₂(act(FC₁(x))) → linear to the "
        "logits.",
    )

    def __init__(
        self, cfg: ResMLPConfig, *, in_chans: int, num_classes: int, image_size: tuple[int, int]
    ) -> None:
        super().__init__()
        in_features = in_chans * math.prod(image_size)  # any image size: the MLP sees a vector
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, cfg.width, bias=cfg.bias))
        dims_out = cfg.block_widths or [cfg.width] * cfg.depth
        dims_in = [cfg.width, *dims_out[:-1]]
        drop_paths = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        blocks = [
            ResidualBlock(
                d_in,
                hidden,
                d_out,
                activation=cfg.activation,
                post_activation=cfg.post_activation,
                bias=cfg.bias,
                norm=cfg.norm,
                dropout=cfg.dropout,
                drop_path=dp,
            )
            for d_in, hidden, d_out, dp in zip(
                dims_in, cfg.per_block("hidden"), dims_out, drop_paths, strict=True
            )
        ]
        self.blocks = nn.Sequential(*blocks)
        self.num_features = dims_out[-1]
        self.norm = make_norm(cfg.norm, self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.stem(images)))  # x_n: [B, w]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


# Variants: names for the configurations people ask for; each only sets arguments.
register_variant(
    "resmlp_brief",
    ResMLP,
    "brief C's plain residual MLP: w=256, 2 blocks of He et al. 2015 (ReLU after the addition), "
    "no norm or dropout",
    width=256,
    depth=2,
    hidden=256,
)
register_variant(
    "resmlp",
    ResMLP,
    "a wider, deeper residual MLP: He et al. 2016 identity blocks with pre-activation "
    "LayerNorm, GELU and dropout",
    width=1024,
    depth=4,
    hidden=1024,
    activation="gelu",
    post_activation=False,
    norm="layer",
    dropout=0.15,
    drop_path=0.1,
)
