"""Optimizers and learning-rate schedules the methods share."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

OPTIMIZERS = ("lars", "sgd", "adamw")


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weights get weight decay; biases and normalisation parameters (one dimension) do not
    (and LARS does not adapt their step, as in BYOL)."""
    decay = [p for _, p in named if p.ndim > 1]
    no_decay = [p for _, p in named if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def optimizer_factory(
    kind: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer]:
    """A factory building the optimizer over a stage's named parameters.

    Args:
        kind: ``lars`` (timm's LARS, BYOL's choice), ``sgd`` (with momentum) or ``adamw``.

    Raises:
        ValueError: for an unknown kind or a negative learning rate or weight decay.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    if lr < 0 or weight_decay < 0:
        raise ValueError(f"lr and weight_decay must be >= 0, got {lr} and {weight_decay}")

    def build(named: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
        groups = param_groups(named, weight_decay)
        if kind == "lars":
            from timm.optim import Lars

            return Lars(groups, lr=lr, momentum=momentum)
        if kind == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=momentum)
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    return build


def warmup_cosine(
    warmup_steps: int, total_steps: int, final: float = 0.0
) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``final`` x the base rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
