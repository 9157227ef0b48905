"""Small layers shared by the model families."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def make_norm(kind: str, dim: int) -> nn.Module:
    """A normalisation over the last dimension, or the identity for ``"none"``."""
    if kind == "none":
        return nn.Identity()
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    raise ValueError(f"unknown norm {kind!r}")


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples (Huang et al. 2016)."""

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class PerBlockConfig(BaseModel):
    """A model config whose widths may be one value for every block or a list, one per block.

    Subclasses name those fields in ``PER_BLOCK`` and have a ``depth`` field. An empty list is
    accepted only where it is the field's default (``block_dims = []``: keep the width in every
    block); for a width that is one number by default, ``[]`` names no width at all.
    """

    model_config = ConfigDict(extra="forbid")
    PER_BLOCK: ClassVar[tuple[str, ...]] = ()
    depth: int

    @model_validator(mode="after")
    def _per_block_lists_match_depth(self) -> PerBlockConfig:
        for name in self.PER_BLOCK:
            value = getattr(self, name)
            if value == []:
                default = type(self).model_fields[name].get_default(call_default_factory=True)
                if default != []:
                    raise ValueError(
                        f"{name} is an empty list: give one width per block ({self.depth} "
                        f"values, as depth is {self.depth}) or one number for every block"
                    )
            elif isinstance(value, list) and len(value) != self.depth:
                raise ValueError(f"{name} has {len(value)} entries but depth is {self.depth}")
        return self

    def per_block(self, name: str) -> list[int]:
        value = getattr(self, name)
        return list(value) if isinstance(value, list) else [value] * self.depth
