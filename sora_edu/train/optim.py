"""The learning-rate schedule every module of the course uses."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> dict:
    """Linear warm-up for ``warmup_steps`` (at most half the run), then cosine decay to zero
    at ``total_steps``; returned in Lightning's ``lr_scheduler`` format (stepped per batch)."""
    total = max(1, int(total_steps))
    warm = min(warmup_steps, total // 2)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"}
