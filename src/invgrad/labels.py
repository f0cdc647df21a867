"""Label recovery from a shared update, for threat models where labels are not granted."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def last_layer_weight_gradient(update: Sequence[torch.Tensor]) -> torch.Tensor:
    """The classifier's weight gradient: the paper takes the second-to-last tensor (weight, then bias)."""
    weight = update[-2]
    if weight.dim() != 2:
        raise ValueError(
            f"label recovery needs a final Linear layer (weight then bias); the second-to-last tensor has shape "
            f"{tuple(weight.shape)}"
        )
    return weight


def idlg_label(update: Sequence[torch.Tensor]) -> torch.Tensor:
    """iDLG (Zhao et al. 2020): for one image, only the true class row of ∂L/∂W_fc sums to a negative value.

    ∂L/∂W_c = (softmax_c − 1[c = y]) · h with h ≥ 0 (post-ReLU/sigmoid features), so argmin of row sums is y.
    """
    return torch.argmin(last_layer_weight_gradient(update).sum(dim=-1))
