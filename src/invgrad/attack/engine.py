"""The batched reconstruction engine: all restarts of all experiments optimised together.

Each restart is an independent candidate batch of K images. :meth:`Engine.run` draws every starting point from the
seed, cuts experiments × restarts into groups that fit the device (:mod:`invgrad.attack.memory`), evaluates each
group by the fastest path that applies (:mod:`invgrad.attack.evaluation`: graph-free, per-candidate autograd,
plain autograd for one candidate, or vmap) and runs the paper's loop on it, snapshotting the state for resumes
(:mod:`invgrad.attack.resume`). Adam and SGD act element-wise, so one optimizer over the stacked tensor is exactly
R·E independent optimizers. L-BFGS is not element-wise (its curvature history mixes every coordinate), so it runs
as :class:`~invgrad.attack.lbfgs.BatchedLBFGS`: one history and stopping state per (experiment, restart),
vectorised.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..allocator import retain_freed_memory
from ..config import lr_milestones
from .evaluation import Evaluation, Evaluations
from .lbfgs import BatchedLBFGS
from .memory import device_free_memory, halves_or_raise, largest_group, release_failed, tile
from .resume import GroupKey, ResumeState, fingerprint, group_key
from .simulator import Simulator, as_simulator, gradient_simulator, split_parameters

__all__ = [
    "Engine",
    "EngineResult",
    "Simulator",
    "gradient_simulator",
    "split_parameters",
]  # simulator's, re-exported

MEDIAN_FILTER_EVERY = 500  # iterations between 3×3 median filter passes (the official code's inversefed/reconstruction_algorithms.py)


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


class Engine:
    """Optimises candidates for E experiments × R restarts against E observed updates."""

    def __init__(
        self, model: torch.nn.Module, simulate: Simulator, cfg: dict, dm: torch.Tensor, ds: torch.Tensor
    ):
        self.model, self.cfg = model, cfg
        self.simulate = as_simulator(simulate)
        self.evaluations = Evaluations(model, self.simulate, cfg)
        self.lower = (-dm / ds).unsqueeze(0)  # [1, C, 1, 1]: the box of valid [0, 1] images
        self.upper = ((1 - dm) / ds).unsqueeze(0)

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
        keep_state: bool = False,
    ) -> EngineResult:
        """targets: one tensor per parameter with a leading experiment axis E; labels [E, K]; weights [E, L].

        ``learn_labels=C``: labels are unknown; each restart also optimises label logits [K, C] (DLG), drawn
        N(0, 1) per experiment from the seed, stepped by the same optimizer (signed too when ``signed``), and fed
        to the simulator as softmax soft labels; ``labels`` is then ignored. The logits come back in
        ``EngineResult.label_logits``.

        ``state_path``: save the full optimisation state there every ``save_every`` iterations (crash-safe) and
        resume from it when it exists, ending bit-identical (CPU) to an uninterrupted run; deleted on success. A
        state of another attack (:func:`~invgrad.attack.resume.fingerprint`: config, threat model, update, labels,
        init, seed, device, dtype) is set aside as ``<state>.stale`` with one logged line, and the attack starts
        fresh.

        ``keep_state``: leave the final state at ``state_path`` (instead of deleting it): without a schedule
        (``lr_decay`` off) a run of the same attack at a larger budget resumes from it, so its iterate at this budget
        is exactly this run's result (the budget is not part of the fingerprint then).

        ``snapshot_at``: iterations (1-based counts) after which the image iterates of every restart are kept;
        they come back in ``EngineResult.snapshots``.

        ``memory_limit``: bytes a group of candidates may use (default: the free memory of a CUDA device, no limit
        on CPU). Restarts × experiments are cut into groups that fit (per-candidate need measured by
        :func:`evaluation_bytes`, plus the optimizer's state); a group that still runs out of memory is split in
        half and redone. Groups of another shape take other kernels and round differently, and thousands of
        iterations grow that into another number: the same group shape reproduces a result bit for bit, another
        shape gives a statistically equivalent one.
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
        key = fingerprint(cfg, seed, targets, labels, starts, self.simulate.describe())
        resume = ResumeState(state_path, key, save_every, limit=cfg["max_iterations"], keep=keep_state)
        limit = memory_limit if memory_limit is not None else device_free_memory(like["device"])

        def build(e_slice, r_slice) -> Evaluation:
            return self.evaluations.build(e_slice, r_slice, targets, labels, weights, learn_labels)

        with flushed_denormals():
            largest = largest_group(limit, lambda pair: build(*pair).probe, starts, cfg["optim"])
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
                    evaluate = build(e_slice, r_slice)
                    key = group_key(e_slice, r_slice, restarts)
                    results, kept = self._optimise(group, evaluate, bar, resume, key, keep)
                    rec[e_slice, r_slice], tv[e_slice, r_slice] = evaluate.values(results)
                except torch.OutOfMemoryError as error:
                    halves = halves_or_raise(e_slice, r_slice, error, num_images, img_shape, like["device"])
                    groups.extendleft(reversed(halves))
                    bar.total += cfg["max_iterations"]
                    failed = True
                if failed:  # outside the handler: the error's traceback no longer holds the group's tensors
                    failed = False
                    release_failed(like["device"])
                    continue
                for final, result in zip(finals, results, strict=True):
                    final[e_slice, r_slice] = result
                for iteration, image in kept.items():
                    if iteration in snapshots:  # a continued state may hold the shorter run's iterates
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
                # contiguous like the variable: torch 2.14's fused CPU Adam silently mis-steps a gradient of other
                # strides (the grouped layout's channels-last one cost a FedAvg cell 5.7 dB over 4,800 iterations)
                grad_ = grad_.contiguous()
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
