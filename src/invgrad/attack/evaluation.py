"""How a group of candidates is evaluated: the objective and its gradient w.r.t. the images (and label logits).

Each restart is a candidate batch ``x_r`` of K images. Its objective needs the *parameter* gradient of the
candidate (the simulated update), then the gradient of the distance w.r.t. ``x_r``: a second-order quantity.
:meth:`Evaluations.path` picks, for a group of E × R candidates, the fastest form that applies:

* **graph-free** — where the simulator's hand-written pass takes the model and labels (:mod:`invgrad.attack.
  handwritten`: LeNetZhu, MLPs, CIFAR ResNets in eval mode, hard labels) and the objective's gradient is written
  out for these layer weights (``Objective.with_gradient``): no autograd graph at all. One candidate too.
* **per-candidate autograd** (:meth:`Evaluations.expanded`) — many candidates, a simulator with per-candidate
  gradients and an objective with a batched form: one plain autograd graph for all candidates
  (:mod:`invgrad.attack.persample`, Conv/Linear/BN models).
* **plain** (:meth:`Evaluations.plain`) — one candidate otherwise: plain autograd on the model, no torch.func.
* **vmap** (:meth:`Evaluations.vmapped`) — everything else: ``vmap(grad_and_value(...))`` over restarts (inner)
  and experiments (outer) with ``torch.func``.

All compute the same mathematics and differ at float rounding only (tested in float64). Every path computes the
reconstruction objective alone; the TV prior and its gradient are added in one place, :class:`Evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.func import grad_and_value, vmap

from .objectives import (
    OBJECTIVES,
    candidate_total_variation,
    candidate_total_variation_and_gradient,
    gradient_distance,
    prepared_distance,
)
from .persample import supports
from .simulator import Simulator, split_parameters

Variables = list[torch.Tensor]  # images [E, R, K, C, H, W] (and label logits [E, R, K, classes])
Gradients = Callable[[Variables], tuple[Variables, torch.Tensor]]

# Below this many multiply-adds per evaluation, ATen's own im2col convolution beat oneDNN's on the 2-core CPU
# (LeNetZhu, one image: 0.69 M MACs, one evaluation 1.42 ms vs 2.30 ms); above it oneDNN wins by far (ResNet20,
# 8 images: 96 ms vs 206 ms). A fixed threshold, not a timing probe, so the choice (and with it the float
# rounding) is the same on every run.
ONEDNN_MIN_MACS = 2_000_000


def convolution_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of the model's convolutions for the input ``x`` (one no-grad forward pass)."""
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        total += output.numel() * module.weight[0].numel()

    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    handles = [m.register_forward_hook(count) for m in convs]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


@contextmanager
def convolution_backend(use_onednn: bool):
    """oneDNN (mkldnn) convolutions on or off for the block; the previous setting is restored."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = use_onednn
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@dataclass(frozen=True)
class Evaluation:
    """A group's evaluation: ``evaluation(variables)`` -> (their gradients, per-candidate objective with TV
    [E, R]); :meth:`values` -> (objective without TV, TV) at the variables.

    ``gradients``: the path's reconstruction objective and its gradients (no TV); ``objective``: that objective's
    value alone. ``traced``: where ``gradients`` is graph-free, an autograd form of it (what the memory probe
    measures: saved-tensor hooks see only autograd's state); None elsewhere."""

    gradients: Gradients
    objective: Callable[[Variables], torch.Tensor]
    tv_weight: float
    traced: Gradients | None = None

    def __call__(self, variables: Variables) -> tuple[Variables, torch.Tensor]:
        return self._with_total_variation(self.gradients, variables)

    def _with_total_variation(self, gradients: Gradients, variables: Variables):
        """The one place the TV prior enters: its value and written-out gradient added to the objective's."""
        grads, rec = gradients(variables)
        if not self.tv_weight:
            return grads, rec
        tv, tv_bar = candidate_total_variation_and_gradient(variables[0])
        return [grads[0].add_(tv_bar, alpha=self.tv_weight), *grads[1:]], rec + self.tv_weight * tv

    def probe(self, variables: Variables) -> tuple[Variables, torch.Tensor]:
        """The evaluation the memory probe runs: the traced form where there is one, else this one."""
        return self._with_total_variation(self.traced or self.gradients, variables)

    def values(self, variables: Variables) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            tv = candidate_total_variation(variables[0])
        return self.objective(variables).detach(), tv


class Evaluations:
    """Builds the evaluation of a group of candidates by the fastest path that applies (see the module)."""

    def __init__(self, model: torch.nn.Module, simulate: Simulator, cfg: dict):
        self.model, self.simulate, self.cfg = model, simulate, cfg
        self.params, self.buffers, _ = split_parameters(model)
        self.objective = OBJECTIVES[cfg["cost_fn"]]
        self.tv_weight = cfg["total_variation"]

        def per_restart(x_r, target, labels, weights):
            return self.objective(self.simulate(self.params, self.buffers, x_r, labels), target, weights)

        over_restarts = (0, None, None, None)
        self._step = vmap(vmap(grad_and_value(per_restart), in_dims=over_restarts))
        self._value = vmap(vmap(per_restart, in_dims=over_restarts))

        def per_restart_soft(x_r, z_r, target, weights):
            """Joint label optimisation: the simulator sees soft labels softmax(z_r) [K, classes]."""
            return per_restart(x_r, target, torch.softmax(z_r, dim=-1), weights)

        over_both = (0, 0, None, None)
        self._step_soft = vmap(vmap(grad_and_value(per_restart_soft, argnums=(0, 1)), in_dims=over_both))
        self._value_soft = vmap(vmap(per_restart_soft, in_dims=over_both))

    def path(self, candidates: int) -> Callable[..., Evaluation]:
        """The builder for a group of ``candidates``: one candidate (graph-free or plain), per-candidate autograd
        (graph-free where it applies) for many when simulator, model and objective allow it, else vmap."""
        if candidates == 1:
            return self.one_candidate
        return self.expanded if self.expandable() else self.vmapped

    def build(self, e_slice: slice, r_slice: slice, targets, labels, weights, learn_labels) -> Evaluation:
        """The evaluation of the group of experiments ``e_slice`` × restarts ``r_slice``."""
        candidates = (e_slice.stop - e_slice.start) * (r_slice.stop - r_slice.start)
        make = self.path(candidates)
        return make([t[e_slice] for t in targets], labels[e_slice], weights[e_slice], learn_labels)

    def expandable(self) -> bool:
        """Whether many candidates can share one autograd graph: the simulator has per-candidate gradients, the
        objective a batched form, and every trainable layer a per-candidate rule."""
        return (
            self.simulate.per_candidate is not None
            and self.objective.prepared is not None
            and supports(self.model)
        )

    def vmapped(self, targets, labels, weights, learn_labels) -> Evaluation:
        """``vmap(grad_and_value(...))`` over restarts and experiments: any simulator, objective and model."""
        if learn_labels is None:

            def images_only(variables):
                grads, loss = self._step(variables[0], targets, labels, weights)
                return [grads], loss

            def value(variables):
                return self._value(variables[0], targets, labels, weights)

            return Evaluation(images_only, value, self.tv_weight)

        def images_and_labels(variables):
            grads, loss = self._step_soft(variables[0], variables[1], targets, weights)
            return list(grads), loss

        def value_soft(variables):
            return self._value_soft(variables[0], variables[1], targets, weights)

        return Evaluation(images_and_labels, value_soft, self.tv_weight)

    def one_candidate(self, targets, labels, weights, learn_labels) -> Evaluation:
        """One candidate: graph-free where every gradient is written out (LeNet (Zhu), one image: 0.87× the plain
        path's time over whole attacks), else :meth:`plain`."""
        plain = self.plain(targets, labels, weights, learn_labels)
        if not self.expandable():
            return plain
        return self.expanded(targets, labels, weights, learn_labels, fallback=plain)

    def _backend(self):
        """A context for the convolution backend, decided at its first use from the group's batch shape."""
        backend = None

        def convolutions(x):
            nonlocal backend
            if backend is None:
                backend = (
                    x.device.type != "cpu"
                    or convolution_macs(self.model, x.flatten(0, 1)[:, 0]) * x.shape[2] >= ONEDNN_MIN_MACS
                )
            return convolution_backend(backend)

        return convolutions

    def expanded(
        self, targets, labels, weights, learn_labels, fallback: Evaluation | None = None
    ) -> Evaluation:
        """E × R candidates without vmap: one forward/backward of all E·R·K images with per-candidate parameter
        gradients (:func:`invgrad.attack.persample.candidate_gradients`). Where every gradient is written out
        (hand-written pass, hard labels, an objective with a written-out gradient for these weights), no graph at
        all, with the traced form (or ``fallback``, an evaluation of the same candidates) kept as ``traced``;
        elsewhere that traced form (or ``fallback``) itself."""
        cfg = self.cfg
        per_candidate = self.simulate.per_candidate
        lead_targets, lead_weights = [t[:, None] for t in targets], weights[:, None]
        distance = prepared_distance(cfg["cost_fn"], lead_targets, lead_weights, lead=2)
        convolutions = self._backend()

        def traced_objective(variables, values=False):
            leaves = [v.detach().requires_grad_(True) for v in variables]
            x = leaves[0]  # [E, R, K, C, H, W]
            e, r, k = x.shape[:3]
            flat_x = x.reshape(e * r, *x.shape[2:])
            if learn_labels is None:
                soft = labels[:, None].expand(e, r, k).reshape(e * r, k)
            else:
                soft = torch.softmax(leaves[1], dim=-1).reshape(e * r, k, -1)
            with convolutions(x), torch.enable_grad():
                trial = [g.reshape(e, r, *g.shape[1:]) for g in per_candidate(flat_x, soft)]
                rec = distance(trial)
                if values:
                    return rec.detach()
                grads = torch.autograd.grad(rec.sum(), leaves)
            return list(grads), rec.detach()

        traced = fallback or Evaluation(
            traced_objective, lambda variables: traced_objective(variables, values=True), self.tv_weight
        )
        if learn_labels is not None or not self.simulate.hand_written(labels):
            return traced
        written = gradient_distance(cfg["cost_fn"], lead_targets, lead_weights, lead=2)
        if written is None:
            return traced

        def graph_free(variables):
            """The objective's value and images' gradient with every gradient written out (hand-written pass
            and objective): no autograd graph, engine or Function per evaluation."""
            x = variables[0]
            e, r, k = x.shape[:3]
            with convolutions(x), torch.no_grad():
                hard = labels[:, None].expand(e, r, k).reshape(e * r, k)
                trial, pullback = self.simulate.pullback(x.reshape(e * r, *x.shape[2:]), hard)
                total, bars = written([g.reshape(e, r, *g.shape[1:]) for g in trial])
                x_bar = pullback([b.reshape(e * r, *b.shape[2:]) for b in bars]).reshape(x.shape)
            return [x_bar], total

        return Evaluation(graph_free, traced.objective, self.tv_weight, traced=traced.gradients)

    def plain(self, targets, labels, weights, learn_labels) -> Evaluation:
        """One candidate with plain autograd: no vmap, no functional_call, the target's share of the objective
        precomputed, and ATen's convolutions where they are faster (small models, see ``ONEDNN_MIN_MACS``).
        A simulator without a ``plain`` form (e.g. a ``custom`` one) runs functionally, still without vmap."""
        functional = self.simulate
        simulate = functional.plain or (lambda x, lab: functional(self.params, self.buffers, x, lab))
        target, w = [t[0] for t in targets], weights[0]
        distance = prepared_distance(self.cfg["cost_fn"], target, w) or (
            lambda trial: self.objective(trial, target, w)
        )
        y = labels[0]
        backend = None

        def objective(variables, values=False):
            nonlocal backend
            leaves = [v.detach()[0, 0].requires_grad_(True) for v in variables]
            x = leaves[0]
            if backend is None:  # decided once per attack, from the candidate's shape
                backend = x.device.type != "cpu" or convolution_macs(self.model, x) >= ONEDNN_MIN_MACS
            soft = y if learn_labels is None else torch.softmax(leaves[1], dim=-1)
            with convolution_backend(backend), torch.enable_grad():
                rec = distance(simulate(x, soft))
                if values:
                    return rec.detach().reshape(1, 1)
                grads = torch.autograd.grad(rec, leaves)
            return [g[None, None] for g in grads], rec.detach().reshape(1, 1)

        return Evaluation(objective, lambda variables: objective(variables, values=True), self.tv_weight)
