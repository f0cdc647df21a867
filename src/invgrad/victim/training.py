"""Victim training with the paper's "conservative" recipe (the official code's inversefed/training defaults), and crash-safe checkpoints.

Recipe: SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4, batch 128 (drop_last), cross-entropy, MultiStepLR
γ = 0.1 at epochs ``120//2.667, 120//1.6, 120//1.142`` = 44, 74, 105 — fixed to the 120-epoch schedule whatever the
number of epochs trained (so a 10-epoch victim never decays), as the paper's code did.

A checkpoint is ``{"state_dict": ..., "meta": {...}}`` written with :func:`invgrad.io.save_tensors` and read with
:func:`invgrad.io.load_tensors` (``weights_only=True``). When no training data is available the checkpoint holds no
weights and ``meta["status"] == "not run"`` with the reason: trained cells downstream are then reported as not run,
never attacked with untrained weights.

Beside ``<name>.pt`` lies ``<name>.json``: the same metadata (architecture, epochs, seed, the training data's
sha256, validation accuracy, ...) plus ``sha256``, the digest of the ``.pt`` file itself. :func:`load_checkpoint`
and :func:`verify_checkpoint` refuse a ``.pt`` whose digest differs from the recorded one (a damaged download,
an edited or swapped file) or that has no readable recorded digest (a missing, empty or broken sidecar) with
:class:`CheckpointMismatchError`, which says how to restore it (``dvc pull``) or retrain it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.catalog import NOT_RUN  # noqa: F401 (a checkpoint without training data records it)
from ..io import load_tensors, save_json, save_tensors
from ..user.loss import training_loss

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
_CHUNK = 1 << 20


class CheckpointMismatchError(ValueError):
    """A checkpoint file whose sha256 differs from the one recorded in its ``.json`` sidecar, or has none recorded."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_sha256(dataset) -> str:
    """Content hash of a training set: every image file's bytes with its label and name (image folders), or the
    raw arrays and targets (torchvision CIFAR). Identifies the data a victim was trained on, whatever its path."""
    digest = hashlib.sha256()
    files = getattr(dataset, "files", None)
    labels = getattr(dataset, "labels", None)
    if files is not None and labels is not None:
        base = os.path.commonpath([str(Path(f).parent) for f in files]) if files else ""
        for file, label in zip(files, labels, strict=True):
            digest.update(f"{os.path.relpath(file, base)}\t{int(label)}\n".encode())
            digest.update(Path(file).read_bytes())
        return digest.hexdigest()
    base = getattr(dataset, "base", dataset)
    if hasattr(base, "data") and hasattr(base, "targets"):
        digest.update(np.ascontiguousarray(base.data).tobytes())
        digest.update(json.dumps([int(t) for t in base.targets]).encode())
        return digest.hexdigest()
    raise TypeError(f"cannot fingerprint a {type(dataset).__name__} (no .files/.labels or .data/.targets)")


def recipe_optimizer(model: torch.nn.Module) -> torch.optim.SGD:
    """The conservative recipe's SGD: lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4."""
    return torch.optim.SGD(
        model.parameters(),
        lr=RECIPE["lr"],
        momentum=RECIPE["momentum"],
        nesterov=RECIPE["nesterov"],
        weight_decay=RECIPE["weight_decay"],
    )


def milestones(schedule_epochs: int = 120) -> list[int]:
    """Epochs at which the learning rate drops ×0.1 (the paper's float floor-divisions: 44, 74, 105 for 120)."""
    return [int(schedule_epochs // divisor) for divisor in (2.667, 1.6, 1.142)]


SCHEDULES = ("paper", "onecycle")


def _scheduler(name: str, optimizer, epochs: int, steps_per_epoch: int):
    """Per-batch learning-rate schedule. ``paper``: the conservative recipe's step decay, fixed to the 120-epoch
    milestones (a short run never decays, as in the paper's code). ``onecycle``: the same peak lr reached by a
    one-cycle warm-up and annealing over the epochs actually trained — a documented substitute that lets a few
    epochs on a CPU reach a useful accuracy."""
    if name == "paper":
        marks = [m * steps_per_epoch for m in milestones(RECIPE["schedule_epochs"])]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=RECIPE["gamma"])
    if name == "onecycle":
        # torch's one-cycle needs a few steps per phase: a tiny run (tests) just stops early in the cycle
        total = max(epochs * steps_per_epoch, 8)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=RECIPE["lr"], total_steps=total, pct_start=0.25
        )
    raise ValueError(f"unknown training schedule {name!r}; choose one of {list(SCHEDULES)}")


def train_tensors(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean_std: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    seed: int = 0,
    schedule: str = "paper",
    batch_size: int = RECIPE["batch_size"],
    log: Callable[[str], None] = print,
    evaluate: Callable[[torch.nn.Module], float] | None = None,
    eval_every: int = 0,
) -> dict[str, Any]:
    """Train ``model`` in place on a decoded split (uint8 [N,3,H,W]) with the conservative recipe's optimiser
    (SGD 0.1, momentum 0.9, Nesterov, weight decay 5e-4, batch 128, drop_last) and crop+flip augmentation on
    tensors; ``schedule`` picks the learning-rate schedule (:data:`SCHEDULES`).

    With ``evaluate`` and ``eval_every`` = k > 0, ``evaluate(model)`` (e.g. held-out accuracy) runs after every
    k-th epoch and after the last, and the result's ``accuracy_curve`` lists ``[epoch, value]``: the curve of this
    one run. The hook runs under ``no_grad`` and touches neither the optimiser nor the data order's generator, so
    the trained weights are the same with or without it (tests/test_training.py)."""
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise ValueError(f"eval_every must be a non-negative integer (0 = off), got {eval_every!r}")
    from ..data.trainset import augment

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if len(images) < batch_size:
        raise ValueError(f"{len(images)} training images are fewer than one batch of {batch_size}")
    mean, std = (t.view(1, -1, 1, 1) for t in mean_std)
    steps = len(images) // batch_size
    optimizer = recipe_optimizer(model)
    scheduler = _scheduler(schedule, optimizer, epochs, steps)
    generator = torch.Generator().manual_seed(seed)
    history, curve, start = [], [], time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(images), generator=generator)
            running = 0.0
            for b in range(steps):
                index = order[b * batch_size : (b + 1) * batch_size]
                x = augment(images[index].float().div_(255), generator)
                optimizer.zero_grad(set_to_none=True)
                loss = training_loss(model((x - mean) / std), labels[index])
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += float(loss.detach())
            history.append(running / steps)
            log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} ({time.perf_counter() - start:.0f} s)")
            if not math.isfinite(history[-1]):
                raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {history[-1]})")
            if evaluate is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                curve.append([epoch + 1, _evaluated(model, evaluate)])
                log(f"epoch {epoch + 1}/{epochs}: held-out {curve[-1][1]:.4f}")
    model.eval()
    result = {"loss": history, "seconds": time.perf_counter() - start, "images_per_epoch": steps * batch_size}
    if evaluate is not None and eval_every:
        result["accuracy_curve"] = curve
    return result


def _evaluated(model: torch.nn.Module, evaluate: Callable[[torch.nn.Module], float]) -> float:
    """``evaluate(model)`` in eval mode without gradients, the model's global RNG state left as it was."""
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        value = float(evaluate(model))
    model.train()
    return value


@torch.no_grad()
def accuracy_tensors(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean_std: tuple[torch.Tensor, torch.Tensor],
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy (eval mode) on decoded uint8 images."""
    model.eval()
    mean, std = (t.view(1, -1, 1, 1) for t in mean_std)
    correct = 0
    for start in range(0, len(images), batch_size):
        x = (images[start : start + batch_size].float() / 255 - mean) / std
        correct += int((model(x).argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(len(images), 1)


def sidecar(path: str | Path) -> Path:
    """The ``.json`` metadata file beside checkpoint ``path``."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | Path, model: torch.nn.Module | None, meta: dict[str, Any]) -> Path:
    """``{"state_dict", "meta"}`` via an atomic rename, plus a human-readable ``.json`` sidecar of ``meta`` and
    ``sha256`` (the digest of the ``.pt`` file, checked on every load)."""
    state = {} if model is None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_tensors({"state_dict": state, "meta": meta}, path)
    save_json({**meta, "sha256": file_sha256(path)}, sidecar(path))
    return Path(path)


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 recorded for checkpoint ``path`` in its sidecar, or None (no sidecar, unreadable, no digest)."""
    try:
        digest = json.loads(sidecar(path).read_text()).get("sha256")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def _remedy(path: Path) -> str:
    return (
        f"Restore both with `dvc pull {path.parent}` (or `dvc checkout {path.parent}`), or train it again with "
        f"`snakemake --forcerun {path}`."
    )


def verify_checkpoint(path: str | Path) -> str:
    """sha256 of checkpoint ``path``; :class:`CheckpointMismatchError` if its sidecar records no readable digest
    (missing, empty, broken, or written before digests existed) or a different one.

    Without a recorded digest nothing tells a swapped or edited file from the trained one, so such a checkpoint is
    refused rather than trusted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    actual, expected = file_sha256(path), recorded_sha256(path)
    if expected is None:
        state = "is missing" if not sidecar(path).is_file() else "records no readable sha256"
        raise CheckpointMismatchError(
            f"checkpoint {path} cannot be verified: its sidecar {sidecar(path)} {state}. Refusing to use it. "
            + _remedy(path)
        )
    if actual != expected:
        raise CheckpointMismatchError(
            f"checkpoint {path} is corrupted or was replaced: its sha256 is {actual[:16]}…, but "
            f"{sidecar(path)} records {expected[:16]}…. Refusing to use it (and to retrain over it). "
            f"Restore it with `dvc pull {path.parent}` (or `dvc checkout {path.parent}`), or delete "
            f"{path} and {sidecar(path)} to train it again."
        )
    return actual


def load_checkpoint(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of a checkpoint written by :func:`save_checkpoint`, loaded with weights_only=True.

    With ``verify`` (default) the file must match the sha256 in its sidecar; ``meta`` then also holds
    ``checkpoint`` (the path) and ``sha256`` (the file's digest), so that every result cites what it used."""
    digest = verify_checkpoint(path) if verify else None
    blob = load_tensors(path)
    if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not an invgrad checkpoint (expected keys 'state_dict' and 'meta')")
    meta = dict(blob["meta"])
    if digest is not None:
        meta.update(checkpoint=str(path), sha256=digest)
    return blob["state_dict"], meta
