"""The defense as an informed attacker simulates it: the deterministic, differentiable parts of the user's defense
(clipping, top-k pruning), applied to the attacker's own simulated update. Noise cannot be simulated and
quantisation has no useful derivative, so those stay unmodelled.

Written on the attacker's side from the defense's settings alone (``clip``, ``prune``), vmap-safe; it matches the
user's :meth:`invgrad.user.defenses.Defense.apply` without noise or quantisation (tested). :func:`defended_simulator`
wraps a :class:`~invgrad.attack.simulator.Simulator` in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .simulator import Simulator


def _top_fraction_mask(t: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 where |t| is among the ⌈p·n⌉ largest magnitudes (ties at the threshold kept), else 0."""
    flat = t.reshape(-1)
    k = max(1, math.ceil(fraction * flat.numel()))
    threshold = torch.topk(flat.abs(), k).values[-1]
    return (t.abs() >= threshold).to(t.dtype)


def is_defense(defense: Any) -> bool:
    """Whether ``defense`` carries the settings this simulation reads."""
    return all(hasattr(defense, name) for name in ("clip", "prune"))


def simulate_defense(defense: Any, update: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Clip (whole update to ℓ2 ≤ C) then prune (per tensor) ``update`` as the user's defense would."""
    out = list(update)
    if defense.clip is not None:
        norm_ = torch.sqrt(sum(t.pow(2).sum() for t in out))
        scale = torch.clamp(defense.clip / (norm_ + 1e-12), max=1.0)
        out = [t * scale for t in out]
    if defense.prune is not None:
        out = [t * _top_fraction_mask(t, defense.prune) for t in out]
    return out


def defended_simulator(simulate: Simulator, defense: Any) -> Simulator:
    """``simulate`` as an attacker aware of ``defense`` sees it: its functional and plain forms defended alike.
    The per-candidate and graph-free forms are dropped (the defense is not written out), so a defended attack
    evaluates through torch.func, or plain autograd for one candidate. Named ``defense`` in :meth:`describe`."""
    plain = simulate.plain

    def functional(params, buffers, x, labels):
        return simulate_defense(defense, simulate(params, buffers, x, labels))

    def defended_plain(x, labels):
        return simulate_defense(defense, plain(x, labels))

    return Simulator(
        functional,
        simulate.kind,
        plain=defended_plain if plain is not None else None,
        settings=simulate.settings,
        defense={"clip": defense.clip, "prune": defense.prune},
    )
