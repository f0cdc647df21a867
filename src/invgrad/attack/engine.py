"""The batched reconstruction engine: all restarts of all experiments optimised together.

Each restart is an independent candidate batch ``x_r`` of K images. Its objective needs the *parameter*
gradient of the candidate (a per-restart gradient), then the gradient of the distance w.r.t. ``x_r``: a
second-order quantity. A group of candidates is evaluated one of three ways (:meth:`Engine._path`):

* one candidate: plain autograd on the model (``create_graph``), no torch.func — the single-image default;
* many, for FedSGD simulators and the ``sim``/``l2`` objectives: each candidate's parameter gradient assembled from
  the layer signals — written out by hand, no autograd graph, for the models :mod:`invgrad.attack.handwritten`
  knows (LeNetZhu, MLPs, CIFAR ResNets) with hard labels; else one plain autograd graph for all
  (:mod:`invgrad.attack.persample`, Conv/Linear/BN models);
* otherwise ``vmap(grad_and_value(...))`` over restarts (inner) and experiments (outer) with ``torch.func``.

All three compute the same mathematics; they differ at float rounding only. Adam and SGD act element-wise, so one
optimizer over the stacked tensor is exactly R·E independent optimizers. L-BFGS is not element-wise (its curvature
history mixes every coordinate), so it runs as :class:`~invgrad.attack.lbfgs.BatchedLBFGS`: one history and stopping state
per (experiment, restart), vectorised. Groups are sized to fit the device's memory (:func:`tile`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, grad_and_value, vmap
from tqdm.auto import tqdm

from ..allocator import retain_freed_memory
from ..config import lr_milestones
from ..io import load_tensors, save_tensors
from ..user.loss import training_loss  # the one definition shared with the user
from . import handwritten
from .lbfgs import BatchedLBFGS
from .objectives import (
    OBJECTIVES,
    candidate_total_variation,
    candidate_total_variation_and_gradient,
    prepared_distance,
    total_variation,
)
from .persample import candidate_gradients, supports

# simulate(params, buffers, x [K,C,H,W], labels [K] or [K, classes]) -> the shared update, one tensor per parameter
MEDIAN_FILTER_EVERY = 500  # iterations between 3×3 median filter passes (the official code's inversefed/reconstruction_algorithms.py)

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

    trainable = [p for p in model.parameters() if p.requires_grad]

    def plain(x, labels):
        """The same update with plain autograd on the model itself (one candidate: no vmap to pay for; the
        hand-written pass of :mod:`invgrad.attack.handwritten` measured no faster here over a whole attack)."""
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

    def per_candidate_and_pullback(x, labels):
        """:func:`per_candidate`'s gradients and a function from their adjoints to ``x``'s, with no autograd
        graph; only where :func:`hand_written` holds."""
        return handwritten.candidate_gradients_and_pullback(model, x, labels)

    simulate.plain = plain
    simulate.per_candidate = per_candidate
    simulate.hand_written = hand_written
    simulate.per_candidate_and_pullback = per_candidate_and_pullback
    return simulate


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


@dataclass
class EngineResult:
    candidates: torch.Tensor  # [E, R, K, C, H, W], final iterates
    reconstruction_loss: torch.Tensor  # [E, R], objective without TV at the final iterate
    total_variation: torch.Tensor  # [E, R]
    seconds: float
    iterations: int
    label_logits: torch.Tensor | None = None  # [E, R, K, classes] when labels were learned jointly (DLG)
    # iteration -> [E, R, K, C, H, W] iterates kept on the way (Engine.run's snapshot_at)
    snapshots: dict[int, torch.Tensor] | None = None


def snapshot_iterations(
    max_iterations: int, fractions: Sequence[float] = (1 / 8, 1 / 4, 1 / 2, 1)
) -> list[int]:
    """Iterations at which to keep the iterates (default 1/8, 1/4, 1/2 and all of the budget): scored after the
    attack, they show whether the budget was enough (the attacker never sees them scored)."""
    return sorted({max(1, round(f * max_iterations)) for f in fractions})


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


def _fusable(tensors) -> bool:
    """torch's fused Adam (one kernel per step; a third of the step's time on the CPU) where it exists: floating
    tensors on CPU or CUDA. Its arithmetic equals the unfused step up to float rounding."""
    return all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)


def _make_optimizer(cfg: dict, x: torch.Tensor, *extra: torch.Tensor) -> torch.optim.Optimizer:
    tensors = [x, *extra]
    factories = {
        "adam": lambda: torch.optim.Adam(tensors, lr=cfg["lr"], fused=_fusable(tensors)),
        "sgd": lambda: torch.optim.SGD(tensors, lr=cfg["lr"], momentum=0.9, nesterov=True),
        "lbfgs": lambda: BatchedLBFGS(tensors, lr=cfg["lr"], batch_dims=2),  # per (experiment, restart)
    }
    return factories[cfg["optim"]]()


MEMORY_SAFETY = 3.0  # bytes autograd saves per candidate × this = what its evaluation is assumed to need
# a CUDA evaluation's measured peak (temporaries included) × this = what it is assumed to need
PEAK_SAFETY = 1.5
# copies of a candidate that its optimizer keeps (gradient and state; L-BFGS: 100 (s, y) pairs and a few vectors)
OPTIMIZER_COPIES = {"adam": 4, "sgd": 3, "lbfgs": 2 * 100 + 6}


def device_free_memory(device: torch.device) -> int | None:
    """Bytes a group of candidates may use: the free memory of a CUDA device; None (no limit) elsewhere."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def saved_bytes(evaluate: Callable, variables: list[torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves during one evaluation (the bulk of its peak memory)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        evaluate(variables)
    return total


def evaluation_bytes(evaluate: Callable, variables: list[torch.Tensor]) -> float | None:
    """Bytes one evaluation of these candidates is assumed to need. On CUDA: the allocator's peak above what was
    in use before (saved tensors, workspaces, temporaries; the device's peak statistics are reset). Elsewhere: the
    tensors autograd saves. None where that cannot be seen: torch.func's transforms refuse saved-tensor hooks."""
    device = variables[0].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        evaluate(variables)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) * PEAK_SAFETY
    try:
        return saved_bytes(evaluate, variables) * MEMORY_SAFETY
    except RuntimeError as error:
        if "saved tensor hooks" not in str(error):
            raise
        return None


def tile(
    experiments: int, restarts: int, restart_chunk: int | None, largest: int | None
) -> list[tuple[slice, slice]]:
    """(experiments, restarts) tiles of at most ``largest`` candidates (None: any), restarts at most
    ``restart_chunk`` at a time: all restarts of as many experiments as fit, else fewer restarts of one."""
    per_row = min(restarts, max(1, restart_chunk) if restart_chunk else restarts, largest or restarts)
    rows = max(1, (largest or experiments * per_row) // per_row)
    return [
        (slice(e, min(e + rows, experiments)), slice(r, min(r + per_row, restarts)))
        for e in range(0, experiments, rows)
        for r in range(0, restarts, per_row)
    ]


def split_group(e_slice: slice, r_slice: slice) -> list[tuple[slice, slice]] | None:
    """Two halves of a group that did not fit (experiments first); None for a single candidate."""
    (e0, e1), (r0, r1) = (e_slice.start, e_slice.stop), (r_slice.start, r_slice.stop)
    if e1 - e0 > 1:
        mid = (e0 + e1) // 2
        return [(slice(e0, mid), r_slice), (slice(mid, e1), r_slice)]
    if r1 - r0 > 1:
        mid = (r0 + r1) // 2
        return [(e_slice, slice(r0, mid)), (e_slice, slice(mid, r1))]
    return None


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
        state_path: str | Path | None = None,
        save_every: int = 500,
        snapshot_at: Sequence[int] = (),
        memory_limit: int | None = None,
    ) -> EngineResult:
        """targets: one tensor per parameter with a leading experiment axis E; labels [E, K]; weights [E, L].

        ``learn_labels=C``: labels are unknown; each restart also optimises label logits [K, C] (DLG), drawn
        N(0, 1) per experiment from the seed, stepped by the same optimizer (signed too when ``signed``), and fed
        to the simulator as softmax soft labels; ``labels`` is then ignored. The logits come back in
        ``EngineResult.label_logits``.

        ``state_path``: save the full optimisation state there every ``save_every`` iterations (crash-safe) and
        resume from it when it exists, ending bit-identical (CPU) to an uninterrupted run; deleted on success.

        ``snapshot_at``: iterations (1-based counts) after which the image iterates of every restart are kept;
        they come back in ``EngineResult.snapshots``.

        ``memory_limit``: bytes a group of candidates may use (default: the free memory of a CUDA device, no limit
        on CPU). Restarts × experiments are cut into groups that fit (per-candidate need measured by
        :func:`evaluation_bytes`, plus the optimizer's state); a group that still runs out of memory is split in
        half and redone. Groups change a result only at float rounding (different batch shapes), never otherwise.
        """
        cfg = self.cfg
        retain_freed_memory()  # no page faults on the tensors each iteration frees and re-allocates
        experiments, restarts = labels.shape[0], cfg["restarts"]
        reference = targets[0]
        like = dict(device=reference.device, dtype=reference.dtype)
        starts = [
            initial_candidates(cfg["init"], experiments, (restarts, num_images, *img_shape), seed).to(**like)
        ]
        if learn_labels is not None:
            starts.append(
                initial_label_logits(experiments, (restarts, num_images, learn_labels), seed).to(**like)
            )
        finals = [torch.empty_like(v) for v in starts]
        keep = sorted({int(i) for i in snapshot_at if 0 < int(i) <= cfg["max_iterations"]})
        snapshots = {i: torch.empty_like(starts[0]) for i in keep}
        resume = ResumeState(state_path, fingerprint(cfg, seed, targets, labels, starts), save_every)
        limit = memory_limit if memory_limit is not None else device_free_memory(like["device"])
        with flushed_denormals():
            largest = self._largest_group(limit, targets, labels, weights, learn_labels, starts)
        groups = deque(tile(experiments, restarts, restart_chunk, largest))
        rec, tv = (torch.empty(experiments, restarts, **like) for _ in range(2))
        start = time.perf_counter()
        bar = tqdm(
            total=len(groups) * cfg["max_iterations"], disable=not progress, desc="reconstruct", unit="it"
        )
        failed = False
        with bar, flushed_denormals():
            while groups:
                e_slice, r_slice = groups.popleft()
                group = [v[e_slice, r_slice] for v in starts]
                try:
                    evaluate = self._group_gradients(e_slice, r_slice, targets, labels, weights, learn_labels)
                    results, kept = self._optimise(
                        group,
                        evaluate,
                        bar,
                        resume,
                        GroupKey(e_slice.start * restarts + r_slice.start, _span(e_slice, r_slice)),
                        keep,
                    )
                    if getattr(evaluate, "values", None) is not None:  # the group's own (plain) path
                        rec[e_slice, r_slice], tv[e_slice, r_slice] = evaluate.values(results)
                    else:
                        with torch.no_grad():
                            rec[e_slice, r_slice], tv[e_slice, r_slice] = self._final_values(
                                results, [t[e_slice] for t in targets], labels[e_slice], weights[e_slice]
                            )
                except torch.OutOfMemoryError as error:
                    halves = split_group(e_slice, r_slice)
                    if halves is None:
                        raise torch.OutOfMemoryError(
                            f"one candidate ({num_images} image(s) of shape {tuple(img_shape)}) does not fit in "
                            f"the memory of {like['device']}: fewer images per attack, or a larger device"
                        ) from error
                    groups.extendleft(reversed(halves))
                    bar.total += cfg["max_iterations"]
                    failed = True
                if failed:  # outside the handler: the error's traceback no longer holds the group's tensors
                    failed = False
                    gc.collect()  # what the failed evaluation left in reference cycles
                    if like["device"].type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                for final, result in zip(finals, results, strict=True):
                    final[e_slice, r_slice] = result
                for iteration, image in kept.items():
                    snapshots[iteration][e_slice, r_slice] = image
        resume.finish()
        return EngineResult(
            finals[0],
            rec.detach(),
            tv.detach(),
            time.perf_counter() - start,
            cfg["max_iterations"],
            finals[1] if learn_labels is not None else None,
            snapshots,
        )

    def _gradients(self, targets, labels, weights, learn_labels) -> Callable:
        """variables -> (their gradients, per-restart losses): images only, or images and label logits."""
        if learn_labels is None:

            def images_only(variables):
                grads, (loss, _) = self._step(variables[0], targets, labels, weights)
                return [grads], loss

            return images_only

        def images_and_labels(variables):
            grads, (loss, _) = self._step_soft(variables[0], variables[1], targets, weights)
            return list(grads), loss

        return images_and_labels

    def _path(self, candidates: int) -> Callable:
        """How a group of candidates is evaluated: plain autograd for one, one plain graph with per-candidate
        gradients for many when the simulator, model and objective allow it (see :mod:`invgrad.attack.persample`),
        else vmap over torch.func."""
        if candidates == 1:
            return self._one_candidate_gradients
        return self._expanded_gradients if self._expandable() else self._gradients

    def _expandable(self) -> bool:
        return (
            getattr(self.simulate, "per_candidate", None) is not None
            and self.cfg["cost_fn"] in ("sim", "l2")
            and supports(self.model)
        )

    def _one_candidate_gradients(self, targets, labels, weights, learn_labels) -> Callable:
        """One candidate: graph-free where every gradient is written out (see :meth:`_expanded_gradients`; LeNet
        (Zhu), one image: 0.87× the plain path's time over whole attacks), else :meth:`_plain_gradients`."""
        plain = self._plain_gradients(targets, labels, weights, learn_labels)
        if not self._expandable():
            return plain
        return self._expanded_gradients(targets, labels, weights, learn_labels, fallback=plain)

    def _expanded_gradients(self, targets, labels, weights, learn_labels, fallback=None) -> Callable:
        """:meth:`_gradients` for E × R candidates without vmap: one forward/backward of all E·R·K images with
        per-candidate parameter gradients (:func:`invgrad.attack.persample.candidate_gradients`); equal to the vmap path
        up to float rounding. Where every gradient is written out (hand-written pass, hard labels, an objective with
        ``with_gradient``), no graph at all: ``graph_free``, with the traced form (or ``fallback``, an evaluation of
        the same candidates) kept as ``.traced``; elsewhere that traced form (or ``fallback``) itself."""
        cfg = self.cfg
        per_candidate = self.simulate.per_candidate
        distance = prepared_distance(cfg["cost_fn"], [t[:, None] for t in targets], weights[:, None], lead=2)
        tv_weight = cfg["total_variation"]
        backend = None

        def convolutions(x):
            """The convolution backend, decided once per group from the batch's shape."""
            nonlocal backend
            if backend is None:
                backend = (
                    x.device.type != "cpu"
                    or convolution_macs(self.model, x.flatten(0, 1)[:, 0]) * x.shape[2] >= ONEDNN_MIN_MACS
                )
            return convolution_backend(backend)

        def graph_free(variables):
            """:func:`evaluate` with every gradient written out (hand-written pass, objective and TV): no
            autograd graph, engine or Function per evaluation."""
            x = variables[0]
            e, r, k = x.shape[:3]
            with convolutions(x), torch.no_grad():
                hard = labels[:, None].expand(e, r, k).reshape(e * r, k)
                trial, pullback = self.simulate.per_candidate_and_pullback(
                    x.reshape(e * r, *x.shape[2:]), hard
                )
                total, bars = distance.with_gradient([g.reshape(e, r, *g.shape[1:]) for g in trial])
                x_bar = pullback([b.reshape(e * r, *b.shape[2:]) for b in bars]).reshape(x.shape)
                if tv_weight:
                    tv, tv_bar = candidate_total_variation_and_gradient(x)
                    total = total + tv_weight * tv
                    x_bar.add_(tv_bar, alpha=tv_weight)
            return [x_bar], total

        def evaluate(variables, values=False):
            """(gradients, per-candidate losses with TV); with ``values``: (objective without TV, TV)."""
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
                    return rec.detach(), candidate_total_variation(x).detach()
                total = rec + tv_weight * candidate_total_variation(x) if tv_weight else rec
                grads = torch.autograd.grad(total.sum(), leaves)
            return list(grads), total.detach()

        evaluate.values = lambda variables: evaluate(variables, values=True)
        traced = fallback or evaluate
        written_out = getattr(self.simulate, "hand_written", None)
        if (
            learn_labels is not None
            or written_out is None
            or not written_out(labels)
            or not hasattr(distance, "with_gradient")
        ):
            return traced
        graph_free.values = traced.values
        graph_free.traced = traced  # what the memory probe measures: saved-tensor hooks see its state
        return graph_free

    def _plain_gradients(self, targets, labels, weights, learn_labels) -> Callable:
        """The same as :meth:`_gradients` for a group of one candidate, with plain autograd: no vmap, no
        functional_call, the target's share of the objective precomputed, and ATen's convolutions where they are
        faster (small models, see ``ONEDNN_MIN_MACS``). Equal to the batched path up to float rounding only.
        Simulators without a ``plain`` form (FedAvg's) run functionally, still without vmap."""
        cfg = self.cfg
        functional = self.simulate
        simulate = getattr(functional, "plain", None) or (
            lambda x, lab: functional(self.params, self.buffers, x, lab)
        )
        target, w = [t[0] for t in targets], weights[0]
        distance = prepared_distance(cfg["cost_fn"], target, w) or (
            lambda trial: self.distance(trial, target, w)
        )
        y, tv_weight = labels[0], cfg["total_variation"]
        backend = None

        def evaluate(variables, values=False):
            """(gradients, loss with TV); with ``values``: (objective without TV, TV), each [1, 1]."""
            nonlocal backend
            leaves = [v.detach()[0, 0].requires_grad_(True) for v in variables]
            x = leaves[0]
            if backend is None:  # decided once per attack, from the candidate's shape
                backend = x.device.type != "cpu" or convolution_macs(self.model, x) >= ONEDNN_MIN_MACS
            soft = y if learn_labels is None else torch.softmax(leaves[1], dim=-1)
            with convolution_backend(backend), torch.enable_grad():
                rec = distance(simulate(x, soft))
                if values:
                    return rec.detach().reshape(1, 1), candidate_total_variation(x).detach().reshape(1, 1)
                total = rec + tv_weight * candidate_total_variation(x) if tv_weight else rec
                grads = torch.autograd.grad(total, leaves)
            return [g[None, None] for g in grads], total.detach().reshape(1, 1)  # with TV, as _gradients

        evaluate.values = lambda variables: evaluate(variables, values=True)
        return evaluate

    def _group_gradients(self, e_slice, r_slice, targets, labels, weights, learn_labels) -> Callable:
        make = self._path((e_slice.stop - e_slice.start) * (r_slice.stop - r_slice.start))
        return make([t[e_slice] for t in targets], labels[e_slice], weights[e_slice], learn_labels)

    def _final_values(self, results, targets, labels, weights) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective without TV and TV of a group's final iterates, [E_g, R_g]."""
        if len(results) == 1:
            _, (rec, tv) = self._value(results[0], targets, labels, weights)
        else:
            _, (rec, tv) = self._value_soft(results[0], results[1], targets, weights)
        return rec.detach(), tv.detach()

    def _largest_group(self, limit, targets, labels, weights, learn_labels, starts) -> int | None:
        """How many candidates one group may hold within ``limit`` bytes (None: no limit). A candidate needs what
        one evaluation of two candidates measures (:func:`evaluation_bytes`, halved) plus its optimizer's copies."""
        experiments, restarts = starts[0].shape[:2]
        if limit is None or experiments * restarts == 1:
            return None
        pair = (slice(0, 1), slice(0, 2)) if restarts > 1 else (slice(0, 2), slice(0, 1))
        variables = [v[pair] for v in starts]
        try:
            evaluate = self._group_gradients(*pair, targets, labels, weights, learn_labels)
            measured = evaluation_bytes(getattr(evaluate, "traced", evaluate), variables)
        except torch.OutOfMemoryError:
            return 1
        if measured is None:
            warnings.warn(
                "memory_limit: this model's evaluation path (torch.func) cannot be measured off CUDA; "
                "candidates run one at a time to stay within the limit",
                stacklevel=4,
            )
            return 1
        state = sum(v.numel() * v.element_size() for v in variables) * OPTIMIZER_COPIES[self.cfg["optim"]]
        return max(1, int(limit // max((measured + state) / 2, 1)))

    def _optimise(
        self, starts, gradients, bar, resume: ResumeState, group: GroupKey, keep: Sequence[int] = ()
    ) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """The paper's loop over the first variable (the images; boxed, filtered) and any extra ones (label
        logits): (signed) gradients, optimizer step, schedule step, box projection, median filter. Returns the
        final variables and the image iterates after each iteration count in ``keep``."""
        cfg = self.cfg
        variables = [v.clone().requires_grad_(True) for v in starts]
        x = variables[0]
        optimizer = _make_optimizer(cfg, *variables)
        scheduler = None
        if cfg["lr_decay"]:
            milestones = lr_milestones(cfg["max_iterations"])
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        first, kept = resume.restore(group, variables, optimizer, scheduler)
        bar.update(first)

        def closure():
            grads, loss = gradients([v.detach() for v in variables])
            for variable, grad_ in zip(variables, grads, strict=True):
                variable.grad = grad_.sign() if cfg["signed"] else grad_
            return loss  # [E, R]: batched L-BFGS needs each element's loss; Adam/SGD ignore it

        for iteration in range(first, cfg["max_iterations"]):
            optimizer.step(closure)
            if scheduler is not None:
                scheduler.step()
            with torch.no_grad():
                if cfg["boxed"]:
                    x.clamp_(min=self.lower, max=self.upper)
                if cfg["filter"] == "median" and (iteration + 1) % MEDIAN_FILTER_EVERY == 0:
                    x.copy_(median_filter3(x))
                if iteration + 1 in keep:
                    kept[iteration + 1] = x.detach().clone()
            resume.checkpoint(group, iteration + 1, variables, optimizer, scheduler, kept)
            bar.update(1)
        resume.checkpoint(group, cfg["max_iterations"], variables, optimizer, scheduler, kept, force=True)
        return [v.detach() for v in variables], kept


def fingerprint(cfg: dict, seed: int, targets, labels, starts) -> str:
    """Identifies one attack (config, seed, observed update, labels, shapes) so a state file is never resumed
    into a different attack."""
    digest = hashlib.sha256(json.dumps({**cfg, "seed": seed}, sort_keys=True, default=str).encode())
    for tensor in [*targets, labels, *starts]:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class GroupKey(NamedTuple):
    """A group's key in the state file: the flat index of its first candidate (0 for a single group), and its
    span (experiments, restarts), so a state saved under another tiling is never restored into the wrong group."""

    index: int
    span: tuple[int, int, int, int] | None


def _span(e_slice: slice, r_slice: slice) -> tuple[int, int, int, int]:
    return (e_slice.start, e_slice.stop, r_slice.start, r_slice.stop)


def _key(group) -> GroupKey:
    """A GroupKey, or a bare index (span unknown: never checked)."""
    return group if isinstance(group, GroupKey) else GroupKey(int(group), None)


def _key_span(saved: dict, group: GroupKey):
    span = saved.get("span")
    return group.span if span is None or group.span is None else tuple(span)


class ResumeState:
    """Periodic, crash-safe snapshots of every restart group's optimisation state, and resuming from them.

    The loop draws no random numbers after initialisation (which is a pure function of the seed), so variables,
    optimizer and scheduler states plus the iteration count are the whole state.
    """

    def __init__(self, path: str | Path | None, key: str, every: int):
        self.path, self.key, self.every = (Path(path) if path else None), key, max(1, int(every))
        self.groups: dict[int, dict] = {}
        if self.path is not None and self.path.exists():
            saved = load_tensors(self.path)
            if saved.get("fingerprint") != key:
                raise ValueError(
                    f"attack state {self.path} belongs to a different attack (config, seed or update changed); "
                    "delete it to start over"
                )
            self.groups = saved["groups"]

    def restore(self, group, variables, optimizer, scheduler) -> tuple[int, dict[int, torch.Tensor]]:
        group = _key(group)
        saved = self.groups.get(group.index)
        if (
            saved is None or _key_span(saved, group) != group.span
        ):  # saved under another tiling: redo the group
            return 0, {}
        with torch.no_grad():
            for variable, value in zip(variables, saved["variables"], strict=True):
                variable.copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        return int(saved["iteration"]), dict(saved.get("snapshots", {}))

    def checkpoint(self, group, iteration, variables, optimizer, scheduler, kept=None, force=False) -> None:
        if self.path is None or not (force or iteration % self.every == 0):
            return
        group = _key(group)
        self.groups[group.index] = {
            "span": list(group.span) if group.span is not None else None,
            "iteration": iteration,
            "variables": [v.detach().clone() for v in variables],
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "snapshots": dict(kept or {}),
        }
        save_tensors({"fingerprint": self.key, "groups": self.groups}, self.path)

    def finish(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
