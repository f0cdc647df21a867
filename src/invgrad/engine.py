"""The batched reconstruction engine: all restarts of all experiments optimised as one vectorised problem.

Each restart is an independent candidate batch ``x_r`` of K images. Its objective needs the *parameter*
gradient of the candidate (a per-restart gradient), then the gradient of the distance w.r.t. ``x_r``: a
second-order quantity. ``torch.func`` gives both per restart with ``vmap(grad_and_value(...))`` over restarts
(inner) and experiments (outer), so R restarts × E experiments cost one batched forward/backward instead of
R·E Python-level ones. Adam and SGD act element-wise, so one optimizer over the stacked tensor is exactly R·E
independent optimizers. L-BFGS is not element-wise (its curvature history mixes every coordinate), so it runs
each restart of each experiment on its own, through the same vectorised function with a batch of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, grad_and_value, vmap
from tqdm.auto import tqdm

from .config import lr_milestones
from .objectives import OBJECTIVES, total_variation
from .user import training_loss

# simulate(params, buffers, x [K,C,H,W], labels [K] or [K, classes]) -> the shared update, one tensor per parameter
MEDIAN_FILTER_EVERY = 500  # iterations between 3×3 median filter passes (PAPER §4)

Simulator = Callable[[dict, dict, torch.Tensor, torch.Tensor], list[torch.Tensor]]


def split_parameters(model: torch.nn.Module) -> tuple[dict, dict, list[str]]:
    """Trainable parameters (what is shared) and everything else functional_call needs, detached."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return params, {**frozen, **buffers}, list(params)


def gradient_simulator(model: torch.nn.Module) -> Simulator:
    """The FedSGD user as the attacker re-computes it: ∇θ of the mean cross-entropy, functionally."""

    def simulate(params, buffers, x, labels):
        def loss(p):
            return training_loss(functional_call(model, (p, buffers), (x,)), labels)

        g = grad(loss)(params)
        return [g[n] for n in params]

    return simulate


@dataclass
class EngineResult:
    candidates: torch.Tensor  # [E, R, K, C, H, W], final iterates
    reconstruction_loss: torch.Tensor  # [E, R], objective without TV at the final iterate
    total_variation: torch.Tensor  # [E, R]
    seconds: float
    iterations: int
    label_logits: torch.Tensor | None = None  # [E, R, K, classes] when labels were learned jointly (DLG)


def median_filter3(x: torch.Tensor) -> torch.Tensor:
    """3×3 median over each channel (reflect padding), applied to [..., C, H, W]."""
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    padded = F.pad(flat, (1, 1, 1, 1), mode="reflect")
    patches = F.unfold(padded, kernel_size=3)  # [N, 9, H*W]
    return patches.median(dim=1).values.reshape(shape)


@contextmanager
def flushed_denormals():
    """Saturated sigmoids (LeNetZhu) make subnormal floats that slow CPU arithmetic about 7×; flushing them
    to zero changed no result we measured. torch's default (off) is restored afterwards."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def initial_candidates(init: str, experiments: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """[E, *shape] starting points; experiment e draws from seed + e, so it starts exactly where the same
    experiment attacked alone with that seed would (batching never changes a result)."""

    def draw(generator):
        table = {
            "randn": lambda: torch.randn(shape, generator=generator),
            "rand": lambda: torch.rand(shape, generator=generator) * 2 - 1,
            "zeros": lambda: torch.zeros(shape),
        }
        return table[init]()

    return torch.stack([draw(torch.Generator().manual_seed(seed + e)) for e in range(experiments)])


LABEL_SEED_OFFSET = 2**31  # label logits of experiment e draw from seed + e + offset: independent of x0


def initial_label_logits(experiments: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """[E, *shape] N(0, 1) label logits for joint label optimisation (DLG), one generator per experiment, so
    that batching experiments never changes a result (the same scheme as :func:`initial_candidates`)."""
    return torch.stack(
        [
            torch.randn(shape, generator=torch.Generator().manual_seed(seed + e + LABEL_SEED_OFFSET))
            for e in range(experiments)
        ]
    )


def _make_optimizer(cfg: dict, x: torch.Tensor, *extra: torch.Tensor) -> torch.optim.Optimizer:
    tensors = [x, *extra]
    factories = {
        "adam": lambda: torch.optim.Adam(tensors, lr=cfg["lr"]),
        "sgd": lambda: torch.optim.SGD(tensors, lr=cfg["lr"], momentum=0.9, nesterov=True),
        "lbfgs": lambda: torch.optim.LBFGS(tensors, lr=cfg["lr"]),
    }
    return factories[cfg["optim"]]()


class Engine:
    """Optimises candidates for E experiments × R restarts against E observed updates."""

    def __init__(
        self, model: torch.nn.Module, simulate: Simulator, cfg: dict, dm: torch.Tensor, ds: torch.Tensor
    ):
        self.model, self.cfg = model, cfg
        self.params, self.buffers, _ = split_parameters(model)
        self.simulate = simulate
        self.distance = OBJECTIVES[cfg["cost_fn"]]
        self.lower = (-dm / ds).unsqueeze(0)  # [1, C, 1, 1]: the box of valid [0, 1] images
        self.upper = ((1 - dm) / ds).unsqueeze(0)

        def per_restart(x_r, target, labels, weights):
            rec = self.distance(self.simulate(self.params, self.buffers, x_r, labels), target, weights)
            tv = total_variation(x_r)
            return rec + cfg["total_variation"] * tv, (rec, tv)

        over_restarts = (0, None, None, None)
        self._step = vmap(vmap(grad_and_value(per_restart, has_aux=True), in_dims=over_restarts))
        self._value = vmap(vmap(per_restart, in_dims=over_restarts))

        def per_restart_soft(x_r, z_r, target, weights):
            """Joint label optimisation: the simulator sees soft labels softmax(z_r) [K, classes]."""
            return per_restart(x_r, target, torch.softmax(z_r, dim=-1), weights)

        over_both = (0, 0, None, None)
        self._step_soft = vmap(
            vmap(grad_and_value(per_restart_soft, argnums=(0, 1), has_aux=True), in_dims=over_both)
        )
        self._value_soft = vmap(vmap(per_restart_soft, in_dims=over_both))

    def run(
        self,
        targets: list[torch.Tensor],
        labels: torch.Tensor,
        weights: torch.Tensor,
        img_shape: Sequence[int],
        num_images: int,
        seed: int,
        restart_chunk: int | None = None,
        progress: bool = False,
        learn_labels: int | None = None,
    ) -> EngineResult:
        """targets: one tensor per parameter with a leading experiment axis E; labels [E, K]; weights [E, L].

        ``learn_labels=C``: labels are unknown; each restart also optimises label logits [K, C] (DLG), drawn
        N(0, 1) per experiment from the seed, stepped by the same optimizer (signed too when ``signed``), and fed
        to the simulator as softmax soft labels; ``labels`` is then ignored. The logits come back in
        ``EngineResult.label_logits``.
        """
        cfg = self.cfg
        experiments, restarts = labels.shape[0], cfg["restarts"]
        reference = targets[0]
        x0 = initial_candidates(cfg["init"], experiments, (restarts, num_images, *img_shape), seed)
        x0 = x0.to(device=reference.device, dtype=reference.dtype)
        groups = self._groups(experiments, restarts, restart_chunk)
        start = time.perf_counter()
        finals = torch.empty_like(x0)
        z0 = z_finals = None
        if learn_labels is not None:
            z0 = initial_label_logits(experiments, (restarts, num_images, learn_labels), seed)
            z0 = z0.to(device=reference.device, dtype=reference.dtype)
            z_finals = torch.empty_like(z0)
        bar = tqdm(
            total=len(groups) * cfg["max_iterations"], disable=not progress, desc="reconstruct", unit="it"
        )
        with bar, flushed_denormals():
            for e_slice, r_slice in groups:
                group_targets = [t[e_slice] for t in targets]
                if z0 is None:
                    finals[e_slice, r_slice] = self._optimise(
                        x0[e_slice, r_slice], group_targets, labels[e_slice], weights[e_slice], bar
                    )
                else:
                    finals[e_slice, r_slice], z_finals[e_slice, r_slice] = self._optimise_joint(
                        x0[e_slice, r_slice], z0[e_slice, r_slice], group_targets, weights[e_slice], bar
                    )
        with torch.no_grad(), flushed_denormals():
            if z0 is None:
                _, (rec, tv) = self._value(finals, targets, labels, weights)
            else:
                _, (rec, tv) = self._value_soft(finals, z_finals, targets, weights)
        return EngineResult(
            finals,
            rec.detach(),
            tv.detach(),
            time.perf_counter() - start,
            cfg["max_iterations"],
            None if z_finals is None else z_finals.detach(),
        )

    def _groups(self, experiments: int, restarts: int, chunk: int | None) -> list[tuple[slice, slice]]:
        if self.cfg["optim"] == "lbfgs":  # not element-wise: one restart of one experiment at a time
            return [(slice(e, e + 1), slice(r, r + 1)) for e in range(experiments) for r in range(restarts)]
        chunk = restarts if chunk is None else max(1, chunk)
        return [
            (slice(0, experiments), slice(r, min(r + chunk, restarts))) for r in range(0, restarts, chunk)
        ]

    def _optimise(self, x0, targets, labels, weights, bar) -> torch.Tensor:
        cfg = self.cfg
        x = x0.clone().requires_grad_(True)
        optimizer = _make_optimizer(cfg, x)
        scheduler = None
        if cfg["lr_decay"]:
            milestones = lr_milestones(cfg["max_iterations"])
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

        def closure():
            grads, (loss, _) = self._step(x.detach(), targets, labels, weights)
            x.grad = grads.sign() if cfg["signed"] else grads
            return loss.sum()

        for iteration in range(cfg["max_iterations"]):
            optimizer.step(closure)
            if scheduler is not None:
                scheduler.step()
            with torch.no_grad():
                if cfg["boxed"]:
                    x.clamp_(min=self.lower, max=self.upper)
                if cfg["filter"] == "median" and (iteration + 1) % MEDIAN_FILTER_EVERY == 0:
                    x.copy_(median_filter3(x))
            bar.update(1)
        return x.detach()

    def _optimise_joint(self, x0, z0, targets, weights, bar) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`_optimise`, with the label logits as a second optimised tensor (never boxed or filtered)."""
        cfg = self.cfg
        x = x0.clone().requires_grad_(True)
        z = z0.clone().requires_grad_(True)
        optimizer = _make_optimizer(cfg, x, z)
        scheduler = None
        if cfg["lr_decay"]:
            milestones = lr_milestones(cfg["max_iterations"])
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

        def closure():
            (gx, gz), (loss, _) = self._step_soft(x.detach(), z.detach(), targets, weights)
            x.grad, z.grad = (gx.sign(), gz.sign()) if cfg["signed"] else (gx, gz)
            return loss.sum()

        for iteration in range(cfg["max_iterations"]):
            optimizer.step(closure)
            if scheduler is not None:
                scheduler.step()
            with torch.no_grad():
                if cfg["boxed"]:
                    x.clamp_(min=self.lower, max=self.upper)
                if cfg["filter"] == "median" and (iteration + 1) % MEDIAN_FILTER_EVERY == 0:
                    x.copy_(median_filter3(x))
            bar.update(1)
        return x.detach(), z.detach()
