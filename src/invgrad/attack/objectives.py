"""What the attack optimises: distances between a candidate's shared update and the observed one (the official
code's inversefed/reconstruction_algorithms.py), plus the TV prior.

:data:`OBJECTIVES` holds one :class:`Objective` record per ``cost_fn``: its readable ``reference`` definition, and
where they exist a ``prepared`` fast form and a ``with_gradient`` written-out gradient (both tested equal to the
reference in float64). Adding an objective is one :class:`Objective` entry (docs/EXTENDING.md).

Every objective takes two lists of tensors (one entry per parameter) and a weight per entry. Index selection
(``def``, ``topN`` ...) and weighting (``equal``, ``linear``, ``exp``) are folded into that one weight vector,
computed once per experiment from the observed update, so the objectives stay free of data-dependent indexing
and run unchanged under ``torch.func.vmap`` across restarts and experiments.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ..config import INDEX_PATTERN
from . import objective_names

Tensors = Sequence[torch.Tensor]


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


# -- reference forms: the readable definition of each objective ------------------------------------------------
def cosine_distance(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """The reference (readable) definition of ``sim``: 1 − cosine similarity over the concatenation of all
    (weighted) tensors; magnitude-invariant."""
    dot = sum(w[i] * _inner(g, t) for i, (g, t) in enumerate(zip(trial, target, strict=True)))
    trial_norm = sum(w[i] * _inner(g, g) for i, g in enumerate(trial))
    target_norm = sum(w[i] * _inner(t, t) for i, t in enumerate(target))
    return 1 - dot / (trial_norm.sqrt() * target_norm.sqrt())


def local_cosine_distance(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """The reference definition of ``simlocal``: Σ over tensors of w_i · (1 − cos(g_i, t_i)); every layer counts
    on its own."""
    total = 0.0
    for i, (g, t) in enumerate(zip(trial, target, strict=True)):
        cos = _inner(g, t) / (g.pow(2).sum().sqrt() * t.pow(2).sum().sqrt())
        total = total + w[i] * (1 - cos)
    return total


def squared_euclidean(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """The reference definition of ``l2``, DLG's loss: Σ w_i ‖g_i − t_i‖²."""
    return sum(w[i] * (g - t).pow(2).sum() for i, (g, t) in enumerate(zip(trial, target, strict=True)))


def l1_distance(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """The reference definition of ``l1``: Σ w_i ‖g_i − t_i‖₁."""
    return sum(w[i] * (g - t).abs().sum() for i, (g, t) in enumerate(zip(trial, target, strict=True)))


def max_distance(trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
    """The reference definition of ``max``: the largest weighted absolute deviation over all entries (ℓ∞)."""
    per_tensor = [w[i] * (g - t).abs().max() for i, (g, t) in enumerate(zip(trial, target, strict=True))]
    return torch.stack(per_tensor).max()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV of a [..., C, H, W] batch: mean |horizontal diff| + mean |vertical diff| (the official code's inversefed/reconstruction_algorithms.py)."""
    dx = (x[..., :, :, :-1] - x[..., :, :, 1:]).abs().mean()
    dy = (x[..., :, :-1, :] - x[..., :, 1:, :]).abs().mean()
    return dx + dy


class _CandidateTotalVariation(torch.autograd.Function):
    """:func:`total_variation` per candidate with a hand-written gradient: the signs of the differences added
    into shifted slices of one zeroed tensor, then scaled by each candidate's output gradient (6 kernels), where
    autograd's backward pads every slice's gradient into a zero-filled copy of the images (about 20). First
    order."""

    @staticmethod
    def forward(ctx, x):
        value, signs = _tv_forward(x)
        ctx.save_for_backward(*signs)
        ctx.shape = x.shape
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _tv_unit_gradient(ctx.saved_tensors, ctx.shape).mul_(grad.reshape(*grad.shape, 1, 1, 1, 1))


def _tv_forward(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Each candidate's TV, and the signs of its horizontal and vertical differences."""
    dx, dy = x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :]
    axes = (-4, -3, -2, -1)
    return dx.abs().mean(axes) + dy.abs().mean(axes), (dx.sign(), dy.sign())


def _tv_unit_gradient(signs, shape) -> torch.Tensor:
    """Each candidate's TV gradient (unit output gradient), from :func:`_tv_forward`'s signs."""
    sx, sy = signs
    nx, ny = math.prod(sx.shape[-4:]), math.prod(sy.shape[-4:])  # entries per candidate
    out = sx.new_zeros(shape)
    out[..., :, :-1].add_(sx, alpha=1 / nx)
    out[..., :, 1:].sub_(sx, alpha=1 / nx)
    out[..., :-1, :].add_(sy, alpha=1 / ny)
    out[..., 1:, :].sub_(sy, alpha=1 / ny)
    return out


def candidate_total_variation(x: torch.Tensor) -> torch.Tensor:
    """:func:`total_variation` of each candidate of [..., K, C, H, W] (means over its K images): shape [...];
    of a [K, C, H, W] batch, a scalar equal to :func:`total_variation`'s. Not for torch.func's transforms (a
    classic autograd Function): the vmap path uses :func:`total_variation`."""
    return _CandidateTotalVariation.apply(x)


def candidate_total_variation_and_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`candidate_total_variation` and the gradient of their sum, without autograd."""
    value, signs = _tv_forward(x)
    return value, _tv_unit_gradient(signs, x.shape)


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


# -- prepared and written-out forms (the engine's fast paths) ---------------------------------------------------------
# The observed update is fixed for a whole attack, so its flattened, weighted form and its norm are computed once.
# Small models: one concatenation and two dot products per evaluation instead of a few ops per tensor. Large ones
# (above CONCAT_MAX_ENTRIES): dot products per tensor, since copying millions of gradient entries into one vector
# (and back in the backward pass) cost ResNet20-4 about a tenth of an evaluation. ``lead`` leading dimensions of
# every tensor (and of the weights, before their last one) index independent problems.
PreparedDistance = Callable[[Tensors], torch.Tensor]
GradientDistance = Callable[[Tensors], tuple[torch.Tensor, list[torch.Tensor]]]
CONCAT_MAX_ENTRIES = 100_000


def _pieces(tensors: Tensors, lead: int, concat: bool) -> list[torch.Tensor]:
    flat = [t.reshape(*t.shape[:lead], -1) for t in tensors]
    return [torch.cat(flat, dim=-1)] if concat else flat


def _unpieces(pieces: list[torch.Tensor], like: Tensors, lead: int) -> list[torch.Tensor]:
    """The inverse of :func:`_pieces`: views of the pieces shaped as the tensors ``like``."""
    if len(pieces) == len(like):
        return [p.reshape(t.shape) for p, t in zip(pieces, like, strict=True)]
    sizes = [t[(0,) * lead].numel() for t in like]
    return [p.reshape(t.shape) for p, t in zip(pieces[0].split(sizes, dim=-1), like, strict=True)]


def _weight_pieces(target: Tensors, w: torch.Tensor, lead: int, concat: bool) -> list[torch.Tensor] | None:
    """Each piece's entry weights (broadcastable), or None when every tensor weighs 1 (weighting skipped)."""
    if bool((w == 1).all()):
        return None
    per_tensor = [w[..., i, None] for i in range(len(target))]
    if not concat:
        return per_tensor
    sizes = [t[(0,) * lead].numel() for t in target]
    return [torch.cat([v.expand(*v.shape[:-1], n) for v, n in zip(per_tensor, sizes, strict=True)], dim=-1)]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.linalg.vecdot(x, y) for x, y in zip(a, b, strict=True))


def _weighted_square(v: list[torch.Tensor], weight: list[torch.Tensor] | None) -> torch.Tensor:
    return _dot(v, v if weight is None else [x * c for x, c in zip(v, weight, strict=True)])


def _concat(target: Tensors, lead: int) -> bool:
    return sum(t[(0,) * lead].numel() for t in target) <= CONCAT_MAX_ENTRIES


ROW_DOT_MIN_ENTRIES = 32_768  # pieces this long per row: one BLAS dot per row, no product tensor


def _rowdot(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """<g, t> over the last dimension (``t`` broadcast over ``g``'s leading ones). Long rows: one ``torch.dot``
    per row, since the product tensor of a vecdot is a fresh allocation the size of ``g`` that the CPU pays for
    in page faults (ResNet20-4 × 4: a quarter of an evaluation). Either way every row is reduced by the same
    kernel whatever the number of rows, so one candidate and many round alike."""
    if g.shape[-1] < ROW_DOT_MIN_ENTRIES:
        return torch.linalg.vecdot(g, t)
    g, t = torch.broadcast_tensors(g, t)  # a broadcast target (one for every restart) is indexed, not copied
    index = itertools.product(*map(range, g.shape[:-1]))
    return torch.stack([torch.dot(g[i], t[i]) for i in index]).reshape(g.shape[:-1])


class _UnweightedCosine(torch.autograd.Function):
    """1 − <g, t>/(|g| |t|) over pieces of g and t, with a hand-written gradient: a norm and a dot product per
    piece forward, a·t + b·g per piece backward written over g itself (no longer needed by then), where
    autograd's version makes about five products over every gradient entry and the plain version a new tensor
    per piece (fresh gradient-sized allocations cost a CPU page faults; ResNet20's evaluation spent a third of
    its time there). Differentiable once, which is all the attack needs (the images' gradient goes through g,
    not through this gradient); an in-place write over a g that autograd saved elsewhere would raise, never
    pass silently."""

    @staticmethod
    def forward(ctx, target_norm, count, *pieces):
        g, t = pieces[:count], pieces[count:]
        value, dot, norm = _cosine_forward(target_norm, g, t)
        ctx.save_for_backward(target_norm, dot, norm, *pieces)
        ctx.count = count
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        target_norm, dot, norm, *pieces = ctx.saved_tensors
        g, t = pieces[: ctx.count], pieces[ctx.count :]
        return None, None, *_cosine_backward(grad_out, target_norm, dot, norm, g, t), *[None] * len(t)


def _cosine_forward(target_norm, g, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1 − <g, t>/(|g| |t|), <g, t>, |g|) over the pieces."""
    dot = sum(_rowdot(x, y) for x, y in zip(g, t, strict=True))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x, dim=-1) for x in g]), dim=0)
    return 1 - dot / (norm * target_norm), dot, norm


def _cosine_backward(grad_out, target_norm, dot, norm, g, t) -> list[torch.Tensor]:
    """The pieces of g's gradient, written over g."""
    a = (-grad_out / (norm * target_norm))[..., None]
    b = (grad_out * dot / (target_norm * norm**3))[..., None]
    return [x.mul_(b).addcmul_(y, a) for x, y in zip(g, t, strict=True)]


def _prepared_cosine(target: Tensors, w: torch.Tensor, lead: int) -> PreparedDistance:
    concat = _concat(target, lead)
    weight, flat = _weight_pieces(target, w, lead, concat), _pieces(target, lead, concat)
    weighted = flat if weight is None else [t * c for t, c in zip(flat, weight, strict=True)]
    target_norm = _weighted_square(flat, weight).sqrt()

    def distance(trial: Tensors) -> torch.Tensor:
        g = _pieces(trial, lead, concat)
        if weight is None:
            return _UnweightedCosine.apply(target_norm, len(g), *g, *flat)
        return 1 - _dot(g, weighted) / (_weighted_square(g, weight).sqrt() * target_norm)

    return distance


def _cosine_with_gradient(target: Tensors, w: torch.Tensor, lead: int) -> GradientDistance | None:
    """The unweighted cosine's value and gradient w.r.t. the trial, without autograd (None when weighted)."""
    concat = _concat(target, lead)
    if _weight_pieces(target, w, lead, concat) is not None:
        return None
    flat = _pieces(target, lead, concat)
    target_norm = _weighted_square(flat, None).sqrt()

    def with_gradient(trial: Tensors) -> tuple[torch.Tensor, list[torch.Tensor]]:
        g = _pieces(trial, lead, concat)
        value, dot, norm = _cosine_forward(target_norm, g, flat)
        pieces = _cosine_backward(torch.ones_like(value), target_norm, dot, norm, g, flat)
        return value, _unpieces(pieces, trial, lead)

    return with_gradient


class _UnweightedSquaredDistance(torch.autograd.Function):
    """Σ ‖g − t‖² over pieces of g and t, kept per piece (no concatenation) with a hand-written gradient
    2(g − t): one subtraction and one dot product per piece forward, one product backward, and no new
    gradient-sized buffer beyond the differences (fresh large buffers cost page faults on a CPU)."""

    @staticmethod
    def forward(ctx, count, *pieces):
        differences = [g - t for g, t in zip(pieces[:count], pieces[count:], strict=True)]
        ctx.save_for_backward(*differences)
        ctx.count = count
        return _dot(differences, differences)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        scale = (2 * grad_out)[..., None]
        return None, *[d * scale for d in ctx.saved_tensors], *[None] * ctx.count


def _prepared_squared_euclidean(target: Tensors, w: torch.Tensor, lead: int) -> PreparedDistance:
    concat = _concat(target, lead)
    weight = _weight_pieces(target, w, lead, concat)
    if weight is None:
        pieces = _pieces(target, lead, concat=False)

        def unweighted(trial: Tensors) -> torch.Tensor:
            return _UnweightedSquaredDistance.apply(len(pieces), *_pieces(trial, lead, concat=False), *pieces)

        return unweighted
    flat = _pieces(target, lead, concat)

    def distance(trial: Tensors) -> torch.Tensor:
        diff = [g - t for g, t in zip(_pieces(trial, lead, concat), flat, strict=True)]
        return _weighted_square(diff, weight)

    return distance


def _squared_euclidean_with_gradient(target: Tensors, w: torch.Tensor, lead: int) -> GradientDistance | None:
    """The unweighted squared distance's value and gradient 2(g − t), without autograd (None when weighted)."""
    if _weight_pieces(target, w, lead, _concat(target, lead)) is not None:
        return None
    pieces = _pieces(target, lead, concat=False)

    def with_gradient(trial: Tensors) -> tuple[torch.Tensor, list[torch.Tensor]]:
        differences = [g - t for g, t in zip(_pieces(trial, lead, concat=False), pieces, strict=True)]
        value = _dot(differences, differences)
        return value, _unpieces([d.mul_(2) for d in differences], trial, lead)

    return with_gradient


# -- the registry ----------------------------------------------------------------------------------------------
Reference = Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """One objective the attack can optimise (``cost_fn``), in up to three forms.

    ``reference(trial, target, weights)``: the readable definition (one scalar per call; every other form is
    tested equal to it, and torch.func's vmap path uses it). ``prepared(target, weights, lead)``: a fast form with
    the target's share precomputed, ``trial -> distance`` over ``lead`` leading (candidate) dimensions; needed for
    the engine's per-candidate path. ``with_gradient(target, weights, lead)``: ``trial -> (distance, its gradient
    w.r.t. trial)`` without autograd, or None for weights it does not cover; needed for the graph-free path.
    Calling the record calls ``reference``."""

    name: str
    reference: Reference
    prepared: Callable[[Tensors, torch.Tensor, int], PreparedDistance] | None = None
    with_gradient: Callable[[Tensors, torch.Tensor, int], GradientDistance | None] | None = None
    doc: str = ""

    def __call__(self, trial: Tensors, target: Tensors, w: torch.Tensor) -> torch.Tensor:
        return self.reference(trial, target, w)


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "sim", cosine_distance, _prepared_cosine, _cosine_with_gradient, "the paper's cosine distance"
        ),
        Objective("simlocal", local_cosine_distance, doc="the cosine per layer, summed"),
        Objective(
            "l2",
            squared_euclidean,
            _prepared_squared_euclidean,
            _squared_euclidean_with_gradient,
            "DLG's squared Euclidean distance",
        ),
        Objective("l1", l1_distance, doc="the ℓ1 distance"),
        Objective("max", max_distance, doc="the ℓ∞ distance"),
    )
}
if tuple(OBJECTIVES) != objective_names.BUILT_IN:  # the torch-free list the config validates against
    raise ImportError(
        f"objective_names.BUILT_IN {objective_names.BUILT_IN} must list OBJECTIVES' names {tuple(OBJECTIVES)}"
    )


def register_objective(objective: Objective) -> None:
    """Make ``objective`` a valid ``cost_fn`` everywhere (config, CLI, engine) for this process."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} exists already")
    OBJECTIVES[objective.name] = objective
    objective_names.add_name(objective.name)


def unregister_objective(name: str) -> None:
    """Undo :func:`register_objective` (built-in objectives stay)."""
    objective_names.remove_name(name)
    OBJECTIVES.pop(name, None)


def prepared_distance(name: str, target: Tensors, w: torch.Tensor, lead: int = 0) -> PreparedDistance | None:
    """``trial -> distance(trial, target, w)`` with the target's share precomputed, for objectives with a prepared
    form (None for the others). With ``lead`` > 0 the result has that many leading dimensions (broadcast between
    trial and target)."""
    prepared = OBJECTIVES[name].prepared
    return prepared(target, w, lead) if prepared is not None else None


def gradient_distance(name: str, target: Tensors, w: torch.Tensor, lead: int = 0) -> GradientDistance | None:
    """``trial -> (distance(trial, target, w), its gradient w.r.t. trial)`` without autograd, where the objective
    has it written out for these weights; else None."""
    with_gradient = OBJECTIVES[name].with_gradient
    return with_gradient(target, w, lead) if with_gradient is not None else None
