"""The attacker's re-computation of the user's shared update, as one record per threat model.

A :class:`Simulator` holds the functional form every evaluation path can use (``torch.func``-safe, vmapped by the
engine) and the faster forms a path may take where they exist: ``plain`` (one candidate, plain autograd),
``per_candidate`` (many candidates' gradients from one graph), ``pullback`` (the same without any graph, with a
function from their adjoints to the images' gradient) and ``hand_written`` (whether ``pullback`` takes these
labels). ``describe()`` names the threat model, so that a resumed attack is never another attack's
(:func:`invgrad.attack.resume.fingerprint`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from ..user.loss import training_loss  # the one definition shared with the user
from . import handwritten
from .persample import candidate_gradients

# functional(params, buffers, x [K,C,H,W], labels [K] or [K, classes]) -> the shared update, one tensor per parameter
Functional = Callable[[dict, dict, torch.Tensor, torch.Tensor], list[torch.Tensor]]


def _never(_labels: torch.Tensor) -> bool:
    return False


@dataclass(frozen=True)
class Simulator:
    """The user's update as the attacker re-computes it, and the forms of it the engine's paths can use.

    ``functional(params, buffers, x, labels)``: the update of one candidate (always there); ``plain(x, labels)``:
    the same with plain autograd on the model; ``per_candidate(x [N, K, ...], labels [N, K(, classes)])``: the N
    candidates' updates from one autograd graph; ``pullback(x, labels)``: those updates without a graph, and a
    function from their adjoints to ``x``'s, usable where ``hand_written(labels)`` holds. ``kind`` and
    ``settings`` (JSON-able) name the threat model; ``defense`` the clipping/pruning the attacker simulates."""

    functional: Functional
    kind: str
    plain: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]] | None = None
    per_candidate: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]] | None = None
    pullback: Callable | None = None
    hand_written: Callable[[torch.Tensor], bool] = _never
    settings: Mapping[str, Any] = field(default_factory=dict)
    defense: Mapping[str, Any] | None = None

    def __call__(self, params, buffers, x, labels) -> list[torch.Tensor]:
        return self.functional(params, buffers, x, labels)

    def describe(self) -> dict[str, Any]:
        """The threat model as the attacker simulates it: kind, its settings, and the defense it knows of."""
        return {
            "kind": self.kind,
            **dict(self.settings),
            "defense_aware": self.defense is not None,
            "defense": dict(self.defense) if self.defense is not None else None,
        }


def as_simulator(simulate: Simulator | Functional) -> Simulator:
    """A :class:`Simulator` as is; a bare functional update as one of kind ``custom`` with no faster forms."""
    return simulate if isinstance(simulate, Simulator) else Simulator(simulate, kind="custom")


def split_parameters(model: torch.nn.Module) -> tuple[dict, dict, list[str]]:
    """Trainable parameters (what is shared) and everything else functional_call needs, detached."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return params, {**frozen, **buffers}, list(params)


def gradient_simulator(model: torch.nn.Module) -> Simulator:
    """The FedSGD user as the attacker re-computes it: ∇θ of the mean cross-entropy."""

    def functional(params, buffers, x, labels):
        def loss(p):
            return training_loss(functional_call(model, (p, buffers), (x,)), labels)

        g = grad(loss)(params)
        return [g[n] for n in params]

    trainable = [p for p in model.parameters() if p.requires_grad]

    def plain(x, labels):
        """The same update with plain autograd on the model itself (one candidate: no vmap to pay for)."""
        loss = training_loss(model(x), labels)
        return list(torch.autograd.grad(loss, trainable, create_graph=True))

    written_out: list[bool | None] = [None]

    def hand_written(labels) -> bool:
        """Whether the hand-written pass takes these labels on this model (hard labels only)."""
        if written_out[0] is None:  # decided once per simulator (per attack)
            written_out[0] = handwritten.supports(model)
        return written_out[0] and not labels.is_floating_point()

    def per_candidate(x, labels):
        """[N, K, ...] candidates -> per-candidate gradients [N, *p.shape]: written out by hand for the
        models :mod:`invgrad.attack.handwritten` knows, with hard labels, else one plain autograd graph (no
        vmap). Σ over candidates of each one's mean cross-entropy (training_loss) is the summed CE over K."""
        if hand_written(labels):
            return handwritten.candidate_gradients(model, x, labels)
        k = x.shape[1]
        return candidate_gradients(
            model, x, labels, lambda logits, y: F.cross_entropy(logits, y, reduction="sum") / k
        )

    def pullback(x, labels):
        """:func:`per_candidate`'s gradients and a function from their adjoints to ``x``'s, with no autograd
        graph; only where :func:`hand_written` holds."""
        return handwritten.candidate_gradients_and_pullback(model, x, labels)

    return Simulator(functional, "fedsgd", plain, per_candidate, pullback, hand_written)
