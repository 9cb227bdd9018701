"""Learning-rate schedules as multipliers of the base rate, one value per optimizer step.

- ``cosine``: linear warmup to the base rate, then cosine decay to ``min_lr_ratio``.
- ``constant``: linear warmup, then the base rate.
- ``wsd`` (warmup-stable-decay): warmup, a constant plateau, then a linear decay over the last
  ``decay_fraction`` of the steps. A run can be extended by continuing the plateau.
"""

from __future__ import annotations

import math

import torch

from .config import ScheduleConfig


def lr_multiplier(step: int, max_steps: int, config: ScheduleConfig) -> float:
    """Return the learning-rate multiplier for optimizer step ``step`` (counted from 0)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.name == "constant":
        return 1.0
    floor = config.min_lr_ratio
    if config.name == "cosine":
        span = max(max_steps - config.warmup_steps, 1)
        progress = min((step - config.warmup_steps) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd
    decay_steps = max(int(max_steps * config.decay_fraction), 1)
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = min((step - decay_start) / decay_steps, 1.0)
    return floor + (1 - floor) * (1 - progress)


def build_scheduler(
    optimizer: torch.optim.Optimizer, max_steps: int, config: ScheduleConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, max_steps, config))
