"""Learning-rate schedules of the towers' training (``module.scheduler`` in conf/train.yaml).

A schedule is a callable ``(optimizer, total_steps) -> torch LR scheduler`` stepped once per
optimiser step; the config passes it ``_partial_`` with its own settings, and
``TwoTowerModule.configure_optimizers`` calls it with the run's step count.
"""

from __future__ import annotations

import math

import torch

from towers.errors import TowerError


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.0,
                  warmup_steps: int = 0, min_lr_ratio: float = 0.0
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` (or ``warmup_ratio`` of ``total_steps``), then a
    cosine decay from each group's lr to ``min_lr_ratio`` of it at ``total_steps``."""
    if not 0.0 <= warmup_ratio < 1.0 or warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise TowerError(f"warmup_cosine needs 0 <= warmup_ratio < 1, warmup_steps >= 0, "
                         f"0 <= min_lr_ratio <= 1; got {warmup_ratio}, {warmup_steps}, "
                         f"{min_lr_ratio}")
    warmup = warmup_steps or int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant(optimizer: torch.optim.Optimizer, total_steps: int
             ) -> torch.optim.lr_scheduler.LambdaLR:
    """The same lr at every step (``module.scheduler._target_=towers.schedules.constant``)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
