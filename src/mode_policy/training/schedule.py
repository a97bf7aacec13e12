"""Learning-rate schedule: linear warmup from 0, then cosine decay to ``min_lr_ratio * lr``."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based), for ``LambdaLR``.

    Warmup: (step + 1) / warmup_steps, so the very first step already moves the weights.
    Decay: cosine from 1 at the end of warmup to ``min_lr_ratio`` at ``total_steps``; constant after.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
