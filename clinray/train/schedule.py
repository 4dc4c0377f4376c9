"""The paper's learning-rate schedule: linear warm-up from 0.1 x max over 1% of steps, then cosine.

A pure function of the step (no optimizer state), so the schedule is identical after a resume, easy to
test against the formula, and wrapped in a ``LambdaLR`` for the loop. The trade-off: schedules that
depend on runtime signals (loss plateaus) are out of scope, as in the paper.
"""

from __future__ import annotations

import math

__all__ = ["num_warmup_steps", "lr_at", "build_scheduler"]


def num_warmup_steps(total_steps: int, *, warmup_fraction: float) -> int:
    """Warm-up length: ``ceil(warmup_fraction * total_steps)``, at least 1 when warm-up is on."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_fraction <= 0:
        return 0
    return max(1, math.ceil(warmup_fraction * total_steps))


def lr_at(
    step: int,
    *,
    total_steps: int,
    max_lr: float,
    warmup_fraction: float = 0.01,
    warmup_start_factor: float = 0.1,
    min_lr_ratio: float = 0.1,
) -> float:
    """Learning rate used by optimizer step ``step`` (0-based).

    ``lr(0) = warmup_start_factor * max_lr``; linear up to ``lr(W) = max_lr`` with ``W`` warm-up steps;
    then ``min + (max - min) * (1 + cos(pi * (step - W) / (total - W))) / 2`` down to
    ``lr(total_steps) = min_lr_ratio * max_lr``.
    """
    warmup = num_warmup_steps(total_steps, warmup_fraction=warmup_fraction)
    min_lr = min_lr_ratio * max_lr
    if step < warmup:
        start = warmup_start_factor * max_lr
        return start + (max_lr - start) * step / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, *, total_steps: int, optim_cfg) -> object:
    """A ``LambdaLR`` applying :func:`lr_at`; the optimizer's param groups must hold ``lr = max_lr``."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        return (
            lr_at(
                step,
                total_steps=total_steps,
                max_lr=optim_cfg.max_lr,
                warmup_fraction=optim_cfg.warmup_fraction,
                warmup_start_factor=optim_cfg.warmup_start_factor,
                min_lr_ratio=optim_cfg.min_lr_ratio,
            )
            / optim_cfg.max_lr
        )

    return LambdaLR(optimizer, factor)
