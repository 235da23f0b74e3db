"""Learning-rate schedule shared by every stage: linear warmup, then cosine decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from damo_lit.values import is_number, is_whole


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.05,
                  min_lr_ratio: float = 0.0, warmup_steps: int | None = None) -> LambdaLR:
    """LambdaLR that rises linearly for the warmup steps and follows a cosine down to min_lr_ratio.

    `warmup_steps`, when given, wins over `warmup_ratio` (a fraction of `total_steps`).
    """
    if total_steps <= 0:
        raise ValueError(f"stage.scheduler: total_steps must be > 0, got {total_steps}")
    for key, value in (("warmup_ratio", warmup_ratio), ("min_lr_ratio", min_lr_ratio)):
        if not is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"stage.scheduler.{key} must be a number in [0, 1], got {value!r}")
    if warmup_steps is not None and (not is_whole(warmup_steps) or warmup_steps < 0):
        raise ValueError(f"stage.scheduler.warmup_steps must be an integer >= 0 or null, got {warmup_steps!r}")
    warm = warmup_steps if warmup_steps is not None else int(round(warmup_ratio * total_steps))
    warm = max(0, min(warm, total_steps - 1))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
