"""How many candidates a group may hold on a device, and what to do when one does not fit.

A candidate's need is measured, not modelled: the saved tensors of one autograd evaluation (off CUDA) or the
allocator's peak (CUDA), times a safety factor, plus its optimizer's copies. The engine tiles experiments ×
restarts into groups of at most that many candidates (:func:`tile`), and a group that still runs out of memory is
split in half and redone (:func:`halves_or_raise`).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Sequence

import torch

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


def largest_group(
    limit: int | None,
    measure: Callable[[tuple[slice, slice]], Callable],
    starts: Sequence[torch.Tensor],
    optim: str,
) -> int | None:
    """How many candidates one group may hold within ``limit`` bytes (None: no limit). A candidate needs what
    one evaluation of two candidates measures (:func:`evaluation_bytes` of ``measure(pair)``, halved) plus its
    optimizer's copies (``optim``'s ``OPTIMIZER_COPIES``)."""
    experiments, restarts = starts[0].shape[:2]
    if limit is None or experiments * restarts == 1:
        return None
    pair = (slice(0, 1), slice(0, 2)) if restarts > 1 else (slice(0, 2), slice(0, 1))
    variables = [v[pair] for v in starts]
    try:
        measured = evaluation_bytes(measure(pair), variables)
    except torch.OutOfMemoryError:
        return 1
    if measured is None:
        warnings.warn(
            "memory_limit: this model's evaluation path (torch.func) cannot be measured off CUDA; "
            "candidates run one at a time to stay within the limit",
            stacklevel=4,
        )
        return 1
    state = sum(v.numel() * v.element_size() for v in variables) * OPTIMIZER_COPIES[optim]
    return max(1, int(limit // max((measured + state) / 2, 1)))


def halves_or_raise(
    e_slice: slice, r_slice: slice, error: torch.OutOfMemoryError, num_images: int, img_shape, device
) -> list[tuple[slice, slice]]:
    """The two halves to redo a group that ran out of memory with; one candidate that does not fit raises a
    message naming what to change."""
    halves = split_group(e_slice, r_slice)
    if halves is None:
        raise torch.OutOfMemoryError(
            f"one candidate ({num_images} image(s) of shape {tuple(img_shape)}) does not fit in "
            f"the memory of {device}: fewer images per attack, or a larger device"
        ) from error
    return halves


def release_failed(device: torch.device) -> None:
    """Free what a failed evaluation left behind (reference cycles; CUDA's cached blocks). Call it outside the
    ``except`` block: the error's traceback holds the group's tensors until then."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
