"""Crash-safe snapshots of an attack, and resuming from them only into the same attack.

The engine's loop draws no random numbers after initialisation (a pure function of the seed), so each group's
variables, optimizer and scheduler states and its iteration count are the whole state. A state file carries the
:func:`fingerprint` of the attack that wrote it; one of another attack is set aside as ``<state>.stale`` (one
logged line says so) and the attack starts fresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..io import load_tensors, save_tensors

log = logging.getLogger(__name__)


def fingerprint(
    cfg: Mapping[str, Any],
    seed: int,
    targets: Sequence[torch.Tensor],
    labels: torch.Tensor,
    starts: Sequence[torch.Tensor],
    threat: Mapping[str, Any] | None = None,
) -> str:
    """Identifies one attack, so that a state file is never resumed into another: the attack config, the seed,
    the threat model as the attacker simulates it (``threat``: :meth:`Simulator.describe`: kind, its settings,
    the defense it knows of), the observed update (whose bytes also carry everything the attacker is not told,
    e.g. the user's loss scale or an unknown defense), the labels, the starting points (init), and the device and
    dtype they live on."""
    reference = starts[0]
    # Without a schedule the trajectory does not depend on the budget: a longer run continues a shorter one's state
    # (the pipeline's twice-the-budget L-BFGS run does), so the budget is not part of the attack's identity.
    budget = {} if not cfg.get("lr_decay", False) else {"max_iterations": cfg.get("max_iterations")}
    described = {
        **{k: v for k, v in cfg.items() if k != "max_iterations"},
        **budget,
        "seed": seed,
        "threat": dict(threat or {}),
        "device": str(reference.device),
        "dtype": str(reference.dtype),
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    for tensor in [*targets, labels, *starts]:
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class GroupKey(NamedTuple):
    """A group's key in the state file: the flat index of its first candidate (0 for a single group), and its
    span (experiments, restarts), so a state saved under another tiling is never restored into the wrong group."""

    index: int
    span: tuple[int, int, int, int]


def group_key(e_slice: slice, r_slice: slice, restarts: int) -> GroupKey:
    """The key of the group of experiments ``e_slice`` × restarts ``r_slice`` (of ``restarts`` per experiment)."""
    return GroupKey(
        e_slice.start * restarts + r_slice.start, (e_slice.start, e_slice.stop, r_slice.start, r_slice.stop)
    )


class ResumeState:
    """Periodic snapshots of every group's optimisation state in one file, and resuming from them."""

    def __init__(self, path: str | Path | None, key: str, every: int, limit: int | None = None, keep=False):
        """``limit``: the attack's budget (a state saved beyond it is not resumed); ``keep``: leave the final state
        in place when the attack is done (:meth:`finish`), so that a longer run of the same attack continues it."""
        self.path, self.key, self.every = (Path(path) if path else None), key, max(1, int(every))
        self.limit, self.keep = limit, keep
        self.groups: dict[int, dict] = {}
        if self.path is None or not self.path.exists():
            return
        saved = load_tensors(self.path)
        if saved.get("fingerprint") == key:
            self.groups = saved["groups"]
            return
        stale = self.path.with_name(self.path.name + ".stale")
        self.path.replace(stale)
        log.warning(
            "attack state %s belongs to another attack (config, threat model, update, labels, init, seed, device "
            "or dtype differ): set aside as %s, starting fresh",
            self.path,
            stale.name,
        )

    def restore(
        self, group: GroupKey, variables, optimizer, scheduler
    ) -> tuple[int, dict[int, torch.Tensor]]:
        """Load the group's saved state into ``variables``, ``optimizer`` and ``scheduler``: (its iteration, its
        kept iterates); (0, {}) when nothing was saved for it, or under another tiling."""
        saved = self.groups.get(group.index)
        if saved is None or tuple(saved["span"]) != group.span:
            return 0, {}
        if self.limit is not None and int(saved["iteration"]) > self.limit:
            return 0, {}  # a longer run of the same attack: this budget ends before its state
        with torch.no_grad():
            for variable, value in zip(variables, saved["variables"], strict=True):
                variable.copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        return int(saved["iteration"]), dict(saved.get("snapshots", {}))

    def checkpoint(
        self, group: GroupKey, iteration, variables, optimizer, scheduler, kept=None, force=False
    ) -> None:
        """Save the group's state every ``every`` iterations (or now, with ``force``)."""
        if self.path is None or not (force or iteration % self.every == 0):
            return
        self.groups[group.index] = {
            "span": list(group.span),
            "iteration": iteration,
            "variables": [v.detach().clone() for v in variables],
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "snapshots": dict(kept or {}),
        }
        save_tensors({"fingerprint": self.key, "groups": self.groups}, self.path)

    def finish(self) -> None:
        """The attack is done: its state is no longer needed (unless it is kept for a longer run)."""
        if self.path is not None and not self.keep:
            self.path.unlink(missing_ok=True)
