"""Distances between a candidate's shared update and the observed one (PAPER §4), plus the TV prior.

Every objective takes two lists of tensors (one entry per parameter) and a weight per entry. Index selection
(``def``, ``topN`` ...) and weighting (``equal``, ``linear``, ``exp``) are folded into that one weight vector,
computed once per experiment from the observed update, so the objectives stay free of data-dependent indexing
and run unchanged under ``torch.func.vmap`` across restarts and experiments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .config import INDEX_PATTERN

Tensors = Sequence[torch.Tensor]


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def cosine_distance(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """1 − cosine similarity over the concatenation of all (weighted) tensors: magnitude-invariant."""
    dot = sum(w[i] * _inner(g, t) for i, (g, t) in enumerate(zip(trial, target, strict=True)))
    trial_norm = sum(w[i] * _inner(g, g) for i, g in enumerate(trial))
    target_norm = sum(w[i] * _inner(t, t) for i, t in enumerate(target))
    return 1 - dot / (trial_norm.sqrt() * target_norm.sqrt())


def local_cosine_distance(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """Sum over tensors of w_i · (1 − cos(g_i, t_i)): every layer counts on its own."""
    total = 0.0
    for i, (g, t) in enumerate(zip(trial, target, strict=True)):
        cos = _inner(g, t) / (g.pow(2).sum().sqrt() * t.pow(2).sum().sqrt())
        total = total + w[i] * (1 - cos)
    return total


def squared_euclidean(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """DLG's loss: Σ w_i ‖g_i − t_i‖²."""
    return sum(w[i] * (g - t).pow(2).sum() for i, (g, t) in enumerate(zip(trial, target, strict=True)))


def l1_distance(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    return sum(w[i] * (g - t).abs().sum() for i, (g, t) in enumerate(zip(trial, target, strict=True)))


def max_distance(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """The largest weighted absolute deviation over all entries (an ℓ∞ distance)."""
    per_tensor = [w[i] * (g - t).abs().max() for i, (g, t) in enumerate(zip(trial, target, strict=True))]
    return torch.stack(per_tensor).max()


OBJECTIVES: dict[str, Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor]] = {
    "sim": cosine_distance,
    "simlocal": local_cosine_distance,
    "l2": squared_euclidean,
    "l1": l1_distance,
    "max": max_distance,
}


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV of a [..., C, H, W] batch: mean |horizontal diff| + mean |vertical diff| (PAPER §4)."""
    dx = (x[..., :, :, :-1] - x[..., :, :, 1:]).abs().mean()
    dy = (x[..., :, :-1, :] - x[..., :, 1:, :]).abs().mean()
    return dx + dy


def candidate_total_variation(x: torch.Tensor) -> torch.Tensor:
    """:func:`total_variation` of each candidate of [..., K, C, H, W] (means over its K images): shape [...]."""
    dx = (x[..., :, :, :-1] - x[..., :, :, 1:]).abs().mean((-4, -3, -2, -1))
    dy = (x[..., :, :-1, :] - x[..., :, 1:, :]).abs().mean((-4, -3, -2, -1))
    return dx + dy


def _selection_mask(indices: str, target: Tensors) -> torch.Tensor:
    """Which tensors enter the objective; ``topN`` ranks them by the observed update's norm."""
    count = len(target)
    match = INDEX_PATTERN.match(indices)
    if match is None:
        raise ValueError(f"unknown index selection {indices!r}")
    mask = torch.zeros(count)
    if indices == "def":
        return mask + 1
    kind = match.group(2) or "top"
    k = min(int(match.group(3) or match.group(4)), count)
    if kind == "first":
        mask[:k] = 1
    elif kind == "last":
        mask[count - k :] = 1
    else:
        norms = torch.stack([t.detach().float().norm().cpu() for t in target])
        mask[torch.topk(norms, k).indices] = 1
    return mask


def _scheme(weights: str, count: int) -> torch.Tensor:
    """Layer weights: equal; linear decreasing from 1 (first layer) to 1/L; exp = softmax of the linear ones."""
    linear = torch.arange(count, 0, -1, dtype=torch.float32) / count
    return {"equal": torch.ones(count), "linear": linear, "exp": torch.softmax(linear, dim=0)}[weights]


def layer_weights(indices: str, weights: str, target: Tensors) -> torch.Tensor:
    """One weight per tensor (zero for unselected ones), the form every objective takes."""
    return _selection_mask(indices, target) * _scheme(weights, len(target))


# -- prepared forms (the engine's plain-autograd paths) ------------------------------------------------------------
# The observed update is fixed for a whole attack, so its flattened, weighted form and its norm are computed once;
# each evaluation then costs one concatenation and two dot products instead of a few ops per tensor. ``lead``
# leading dimensions of every tensor (and of the weights, before their last one) index independent problems.
PreparedDistance = Callable[[Tensors], torch.Tensor]


def _flat(tensors: Tensors, lead: int) -> torch.Tensor:
    return torch.cat([t.reshape(*t.shape[:lead], -1) for t in tensors], dim=-1)


def _flat_weights(target: Tensors, w: torch.Tensor, lead: int) -> torch.Tensor | None:
    """One weight per entry, or None when every tensor weighs 1 (the weighting is then skipped)."""
    if bool((w == 1).all()):
        return None
    return torch.cat(
        [w[..., i, None].expand(*t.shape[:lead], t[(0,) * lead].numel()) for i, t in enumerate(target)],
        dim=-1,
    )


def _weighted_square(v: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return torch.linalg.vecdot(v, v if weight is None else v * weight)


def _prepared_cosine(target: Tensors, w: torch.Tensor, lead: int) -> PreparedDistance:
    weight, flat = _flat_weights(target, w, lead), _flat(target, lead)
    weighted = flat if weight is None else weight * flat
    target_norm = _weighted_square(flat, weight).sqrt()

    def distance(trial: Tensors) -> torch.Tensor:
        g = _flat(trial, lead)
        return 1 - torch.linalg.vecdot(g, weighted) / (_weighted_square(g, weight).sqrt() * target_norm)

    return distance


def _prepared_squared_euclidean(target: Tensors, w: torch.Tensor, lead: int) -> PreparedDistance:
    weight, flat = _flat_weights(target, w, lead), _flat(target, lead)

    def distance(trial: Tensors) -> torch.Tensor:
        return _weighted_square(_flat(trial, lead) - flat, weight)

    return distance


PREPARED: dict[str, Callable[[Tensors, torch.Tensor, int], PreparedDistance]] = {
    "sim": _prepared_cosine,
    "l2": _prepared_squared_euclidean,
}


def prepared_distance(name: str, target: Tensors, w: torch.Tensor, lead: int = 0) -> PreparedDistance | None:
    """``trial -> distance(trial, target, w)`` with the target's share precomputed, for the objectives that have
    a prepared form (``sim``, ``l2``; None for the others). With ``lead`` > 0 the result has that many leading
    dimensions (broadcast between trial and target)."""
    return PREPARED[name](target, w, lead) if name in PREPARED else None
