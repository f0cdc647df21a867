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


LABEL_STRATEGIES = ("known", "idlg", "joint", "last-layer")


def last_layer_labels(update: Sequence[torch.Tensor], num_images: int) -> torch.Tensor:
    """K labels of a batch with unique labels: the K most negative row sums of ∂L/∂W_fc (sorted by class).

    For the mean cross-entropy, Σ_j ∂L/∂W_cj = (1/K) Σ_k (p_kc − 1[y_k = c]) s_k with s_k = Σ_j h_kj ≥ 0 (the
    features after a ReLU/sigmoid are non-negative). A class present in the batch gets the negative term
    −(1 − p_kc)·s_k of its image; an absent class only positive terms. Taking the K smallest row sums is the rule
    of Yin et al. (2021, GradInversion, there on the row minima) for non-repeating labels; unlike iDLG it handles
    K > 1. It assumes unique labels (it never returns a repeated class); the count-aware variant of Wainakh et
    al. (LLG), which also estimates repeats, needs an estimate of the softmax outputs and is not implemented.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    sums = last_layer_weight_gradient(update).sum(dim=-1)
    if num_images > sums.numel():
        raise ValueError(
            f"cannot recover num_images={num_images} unique labels: the last layer has only {sums.numel()} classes"
        )
    return torch.sort(torch.topk(sums, num_images, largest=False).indices).values
