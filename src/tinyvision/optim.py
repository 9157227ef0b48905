"""Optimisers and learning-rate schedules, built from the validated config sections."""

from __future__ import annotations

import math

import torch
from torch import nn

from tinyvision.config import OptimConfig, ScheduleConfig


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, *, fused: bool = False
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW or RAdam over two parameter groups.

    Norm weights and biases (every tensor with fewer than two dimensions) are left out of weight
    decay unless ``decay_norm_and_bias``: decaying them only fights the normalisation.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 or cfg.decay_norm_and_bias else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused/foreach kernels compute the same update with fewer launches (GPU fast path).
    speed = {"fused": True} if fused else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            **speed,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **speed)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **speed)
    if cfg.name == "radam":  # RAdam has no fused kernel
        return torch.optim.RAdam(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)
    raise AssertionError(f"unhandled optimizer {cfg.name}")  # the config type rules this out


def lr_factor(step: int, cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup  # linear warm-up from lr/warmup to lr
    progress = (step - warmup) / max(1, total_steps - warmup)  # 0 -> 1 after the warm-up
    floor = cfg.min_lr_ratio
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
    if cfg.name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "onecycle":  # triangular: warm-up up, then a straight line down
        return floor + (1 - floor) * (1 - progress)
    raise AssertionError(f"unhandled schedule {cfg.name}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule (call ``scheduler.step()`` after every optimiser step)."""
    total = steps_per_epoch * epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, total)
    )
