"""Victim training with the paper's "conservative" recipe (PAPER §7), and crash-safe checkpoints.

Recipe: SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4, batch 128 (drop_last), cross-entropy, MultiStepLR
γ = 0.1 at epochs ``120//2.667, 120//1.6, 120//1.142`` = 44, 74, 105 — fixed to the 120-epoch schedule whatever the
number of epochs trained (so a 10-epoch victim never decays), as the paper's code did.

A checkpoint is ``{"state_dict": ..., "meta": {...}}`` written with :func:`invgrad.io.save_tensors` and read with
:func:`invgrad.io.load_tensors` (``weights_only=True``). When no training data is available the checkpoint holds no
weights and ``meta["status"] == "not run"`` with the reason: trained cells downstream are then reported as not run,
never attacked with untrained weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from .io import load_tensors, save_json, save_tensors
from .user import training_loss

RECIPE: dict[str, Any] = dict(
    name="conservative",
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    batch_size=128,
    schedule_epochs=120,
    gamma=0.1,
)
NOT_RUN = "not run"


def milestones(schedule_epochs: int = 120) -> list[int]:
    """Epochs at which the learning rate drops ×0.1 (the paper's float floor-divisions: 44, 74, 105 for 120)."""
    return [int(schedule_epochs // divisor) for divisor in (2.667, 1.6, 1.142)]


def _subset(dataset, max_images: int | None, seed: int):
    if max_images is None or max_images >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:max_images].tolist())


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, max_images: int | None = None, batch_size: int = 256) -> float:
    """Top-1 accuracy on (a fixed, seeded subset of) ``dataset`` in eval mode."""
    model.eval()
    loader = DataLoader(_subset(dataset, max_images, seed=0), batch_size=batch_size, shuffle=False)
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


def train(
    model: torch.nn.Module,
    dataset,
    epochs: int,
    seed: int = 0,
    max_images: int | None = None,
    batch_size: int = RECIPE["batch_size"],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model`` in place with the conservative recipe; returns the history (loss per epoch, seconds)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    data = _subset(dataset, max_images, seed)
    if len(data) < batch_size:
        raise ValueError(f"{len(data)} training images are fewer than one batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=RECIPE["lr"],
        momentum=RECIPE["momentum"],
        nesterov=RECIPE["nesterov"],
        weight_decay=RECIPE["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=milestones(RECIPE["schedule_epochs"]), gamma=RECIPE["gamma"]
    )
    history, start = [], time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            running, batches = 0.0, 0
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = training_loss(model(x), y)
                loss.backward()
                optimizer.step()
                running, batches = running + float(loss.detach()), batches + 1
            scheduler.step()
            history.append(running / max(batches, 1))
            log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} ({time.perf_counter() - start:.0f} s)")
            if not math.isfinite(history[-1]):
                raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {history[-1]})")
    model.eval()
    return {"loss": history, "seconds": time.perf_counter() - start, "images_per_epoch": len(data)}


def save_checkpoint(path: str | Path, model: torch.nn.Module | None, meta: dict[str, Any]) -> Path:
    """``{"state_dict", "meta"}`` via an atomic rename, plus a human-readable ``.json`` sidecar of ``meta``."""
    state = {} if model is None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_tensors({"state_dict": state, "meta": meta}, path)
    save_json(meta, Path(path).with_suffix(".json"))
    return Path(path)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of a checkpoint written by :func:`save_checkpoint`, loaded with weights_only=True."""
    blob = load_tensors(path)
    if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not an invgrad checkpoint (expected keys 'state_dict' and 'meta')")
    return blob["state_dict"], blob["meta"]
