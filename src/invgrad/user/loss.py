"""The training loss: the one definition the user and the attacker share (the attacker imports it from here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def training_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy: the one loss both the user and the attacker use (never 0.5·CE on one side)."""
    return F.cross_entropy(logits, labels)
