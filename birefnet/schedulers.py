"""Learning-rate schedules beyond torch's (the reference's MultiStepLR at epoch 1e5 never decayed)."""

from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine"]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_epochs: int, max_epochs: int, min_lr_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``1/(warmup_epochs+1)`` of the LR, then cosine decay to ``min_lr_ratio`` of it."""

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        progress = min(1.0, (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
