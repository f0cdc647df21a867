"""Federated averaging (FedAvg): the user's multi-step local update and the attack that inverts it (arXiv 2003.14053, Table 2 and Fig. 5).

User: from θ_0, ``local_steps`` plain gradient-descent steps θ_{k+1} = θ_k − τ·∇θ CE(model_θk(x_k), y_k) on its K
images, in eval mode (BatchNorm uses running statistics), mean cross-entropy. ``batch_size`` B = 0 means every
step uses all K images; otherwise step k uses mini-batch k mod (K/B) (images k·B … k·B+B−1 of that cycle), with
its own labels. The shared quantity is the update Δθ = θ_n − θ_0 (not divided by τ), or θ_n itself
(``use_updates=False``); ``local_steps=0`` shares the plain gradient (FedSGD).

Attacker (:class:`FedAvgReconstructor`): knows θ_0, n, τ, B and (by default) the labels; it re-simulates the same n
steps on candidate images — differentiably, through ``torch.func`` so the engine can vmap the unrolled steps over
restarts and experiments — and matches the simulated Δθ(x) to the observed one with the configured objective + TV.
Restarts are scored with that same simulator (mini-batching included; the original code scored full-batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad

from ..protocol import check_schedule, local_epochs, minibatch_slices
from ..user.loss import training_loss  # the one definition the attacker shares with the user (same loss)
from . import grouped
from .reconstructor import GradientReconstructor, Update
from .simulator import Simulator, gradient_simulator, split_parameters


# -- the attacker's re-simulation ----------------------------------------------------------------------------------
def fedavg_simulator(
    model: torch.nn.Module,
    local_steps: int,
    local_lr: float,
    batch_size: int = 0,
    grouped_layout: bool = True,
) -> Simulator:
    """Unrolled, differentiable Δθ(x) = θ_n(x) − θ_0 of the user's local steps, in torch.func form.

    Works under the engine's nested vmap (restarts, experiments) and its outer ``grad`` w.r.t. the images: each
    step is a functional gradient (``torch.func.grad``) of the mean cross-entropy at the current parameters, so
    the whole trajectory stays on the autodiff tape. ``labels`` may be class indices [K] or soft labels [K, classes].
    Where :func:`invgrad.attack.grouped.supports` the model, many candidates run in its grouped layout
    (``grouped_layout=False``: through vmap, as for every other model).
    """

    def functional(params, buffers, x, labels):
        slices = minibatch_slices(local_steps, batch_size, x.shape[0])
        current = dict(params)
        for part in slices:
            xb, yb = x[part], labels[part]

            def loss(p, xb=xb, yb=yb):
                return training_loss(functional_call(model, (p, buffers), (xb,)), yb)

            g = grad(loss)(current)
            current = {n: current[n] - local_lr * g[n] for n in current}
        return [current[n] - params[n] for n in params]

    def plain(x, labels):
        """The same Δθ for one candidate with plain autograd (``create_graph``) instead of torch.func's
        transforms, which cost this workload a tenth of its time (the engine's one-candidate path)."""
        params, buffers, names = split_parameters(model)
        start = [params[n].requires_grad_(True) for n in names]  # detached copies: the model is untouched
        current = start
        for part in minibatch_slices(local_steps, batch_size, x.shape[0]):
            logits = functional_call(
                model, ({**dict(zip(names, current, strict=True)), **buffers}), (x[part],)
            )
            steps = torch.autograd.grad(training_loss(logits, labels[part]), current, create_graph=True)
            current = [c - local_lr * g for c, g in zip(current, steps, strict=True)]
        return [c - s for c, s in zip(current, start, strict=True)]

    def per_candidate(x, labels):
        """N candidates' Δθ [N, *p.shape] from one plain autograd graph in the grouped layout (each candidate
        its own weights after the first step), where :func:`invgrad.attack.grouped.supports` the model."""
        slices = minibatch_slices(local_steps, batch_size, x.shape[1])
        return grouped.unrolled_updates(model, x, labels, slices, local_lr, first_step)

    first_step = gradient_simulator(model).per_candidate
    settings = {"local_steps": local_steps, "local_lr": float(local_lr), "batch_size": batch_size}
    batched = per_candidate if grouped_layout and grouped.supports(model) else None
    return Simulator(functional, "fedavg", plain=plain, per_candidate=batched, settings=settings)


class FedAvgReconstructor(GradientReconstructor):
    """Reconstruct a FedAvg user's images from its update — ``FedAvgReconstructor(model, (dm, ds), local_steps,
    local_lr, config, num_images=1, use_updates=True, batch_size=0)``.

    ``reconstruct(input_parameters, labels, img_shape)`` as in the paper: ``input_parameters`` is the list of
    per-parameter updates Δθ, or the parameters θ_n when ``use_updates=False`` (then the attacker, who sent θ_0,
    subtracts θ_0 itself: matching θ_n directly would bury the update under θ_0 in float32). n, τ, B (and the labels
    unless a label strategy is chosen) are the attacker's knowledge of the protocol.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        mean_std: tuple[Any, Any],
        local_steps: int = 2,
        local_lr: float = 1e-4,
        config: Mapping[str, Any] | str | None = None,
        num_images: int = 1,
        use_updates: bool = True,
        batch_size: int = 0,
        progress: bool = False,
        defense: Any = None,
    ):
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        check_schedule(local_steps, local_lr, batch_size, num_images, allow_zero_steps=False)
        super().__init__(model, mean_std, config, num_images=num_images, progress=progress, defense=defense)
        self.local_steps, self.local_lr, self.batch_size = local_steps, float(local_lr), batch_size
        self.use_updates = bool(use_updates)

    def _simulator(self) -> Simulator:
        return self._defended(fedavg_simulator(self.model, self.local_steps, self.local_lr, self.batch_size))

    def _check_update(self, update: Update, index: int) -> list[torch.Tensor]:
        checked = super()._check_update(update, index)
        if self.use_updates:
            return checked
        start = split_parameters(self.model)[0].values()
        return [t - p.to(t) for t, p in zip(checked, start, strict=True)]

    def _label_evidence(self, update: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Δθ ≈ −τ·Σ_k ∇θ_k: its negative has the gradient's sign structure that the label rules read."""
        return [-u for u in update]

    def describe(self) -> dict[str, Any]:
        return {
            "threat_model": "fedavg",
            "local_steps": self.local_steps,
            "local_lr": self.local_lr,
            "batch_size": self.batch_size,
            "local_epochs": local_epochs(self.local_steps, self.batch_size, self.num_images),
            "use_updates": self.use_updates,
        }
