"""The FedAvg schedule the server sets and both sides follow (paper §5): n local steps, learning rate τ, mini-batch
size B. It belongs to neither side: the user runs it, the attacker (who knows the protocol) re-simulates it."""

from __future__ import annotations

import math
from typing import Any


def check_schedule(
    local_steps: Any, local_lr: Any, batch_size: Any, num_images: int, allow_zero_steps: bool
) -> None:
    """Raise ValueError naming the offending value; nothing is computed before this passes."""
    low = 0 if allow_zero_steps else 1
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < low:
        raise ValueError(f"local_steps must be an integer >= {low}, got {local_steps!r}")
    if isinstance(local_lr, bool) or not isinstance(local_lr, (int, float)):
        raise ValueError(f"local_lr must be a positive finite number, got {local_lr!r}")
    if not (math.isfinite(local_lr) and local_lr > 0):
        raise ValueError(f"local_lr must be a positive finite number, got {local_lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an integer >= 0 (0 = full batch), got {batch_size!r}")
    if batch_size > 0 and num_images % batch_size != 0:
        raise ValueError(
            f"batch_size={batch_size} does not divide the number of images num_images={num_images}: "
            "each local step needs a full mini-batch (use a divisor of num_images, or 0 for full batch)"
        )


def minibatch_slices(local_steps: int, batch_size: int, num_images: int) -> list[slice]:
    """Which images step k uses: all (B = 0), else mini-batch k mod (K/B)."""
    if batch_size == 0:
        return [slice(0, num_images)] * local_steps
    batches = num_images // batch_size
    return [slice((k % batches) * batch_size, (k % batches + 1) * batch_size) for k in range(local_steps)]


def local_epochs(local_steps: int, batch_size: int, num_images: int) -> float:
    """Passes over the user's data: n·B/K (n for full batch)."""
    return float(local_steps) if batch_size == 0 else local_steps * batch_size / num_images
