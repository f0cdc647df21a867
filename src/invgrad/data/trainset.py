"""A data set split decoded once into one uint8 tensor file, and a held-out evaluation set disjoint from targets.

Decoding 50,000 JPEGs through PIL on every epoch costs more than training LeNet (Zhu) itself; decoding them once
into ``[N, 3, H, W]`` uint8 (plus int64 labels) and augmenting on tensors makes victim training a matter of
minutes on two cores. The file records the source and a content hash, so a victim's metadata can cite exactly the
data it saw, whatever path it came from.

Victim accuracy must be measured on images no experiment attacks. :func:`held_out` draws a seeded subset of the
test split and drops every image that matches an attacked target by content (PSNR above
:data:`SAME_IMAGE_PSNR` against any of them: a lossy JPEG copy of a target still matches, two distinct CIFAR images
never come close), so the check holds whichever order or format the test split is stored in.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..io import load_tensors, save_json, save_tensors
from .cache import status_path

SAME_IMAGE_PSNR = 25.0  # dB between uint8 images: above it, two images are copies of one another


def _uint8(image: Image.Image, hw: tuple[int, int]) -> np.ndarray:
    image = image.convert("RGB")
    if image.size != (hw[1], hw[0]):
        image = image.resize((hw[1], hw[0]), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def decode(
    dataset, hw: tuple[int, int] = (32, 32), count: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` (default all) images of a :class:`invgrad.data.LabelledDataset` as ``uint8
    [N, 3, H, W]`` and ``int64 [N]`` labels, without normalisation or augmentation (image folders: every file
    once; torchvision CIFAR: its arrays)."""
    count = len(dataset.labels) if count is None else min(count, len(dataset.labels))
    base = getattr(dataset, "base", None)
    if base is not None and hasattr(base, "data"):
        array = np.ascontiguousarray(base.data[:count], dtype=np.uint8)  # [N, H, W, 3]
    else:
        array = np.stack([_uint8(Image.open(f), hw) for f in dataset.files[:count]])
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(list(dataset.labels[:count]), dtype=torch.int64)


def content_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def save_split(path: str | Path, images: torch.Tensor, labels: torch.Tensor, meta: dict[str, Any]) -> dict:
    """Write the decoded split atomically, then its status sidecar (:mod:`.cache`); returns the metadata stored
    with it (adds count and sha256)."""
    meta = {**meta, "images": int(images.shape[0]), "sha256": content_sha256(images, labels)}
    save_tensors({"images": images, "labels": labels, "meta": meta}, path)
    save_json(meta, status_path(path))
    return meta


def load_split(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    blob = load_tensors(path)
    return blob["images"], blob["labels"], dict(blob["meta"])


def _psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of every image of ``a`` [N,...] against every image of ``b`` [M,...]: [N, M]."""
    fa = a.flatten(1).float() / 255
    fb = b.flatten(1).float() / 255
    mse = (fa.pow(2).sum(1, keepdim=True) + fb.pow(2).sum(1) - 2 * fa @ fb.T) / fa.shape[1]
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def held_out(
    labels: torch.Tensor, images: torch.Tensor, count: int, exclude: torch.Tensor | None, seed: int
) -> tuple[torch.Tensor, int]:
    """Indices of ``count`` test images drawn with ``seed``, none a copy of an image in ``exclude`` (uint8
    targets [M,3,H,W]), or all that remain when fewer; also returns how many test images are copies of a
    target (excluded)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    if exclude is None or len(exclude) == 0:
        return order[:count], 0
    same = (_psnr_uint8(images[order], exclude) > SAME_IMAGE_PSNR).any(dim=1)
    kept = order[~same]  # a small test split gives fewer than ``count``: the metadata records how many
    return kept[:count], int(same.sum())


def augment(batch: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``padding`` and random horizontal flip, per image, on a float batch
    [B, C, H, W] (the paper's CIFAR training augmentation, done on tensors)."""
    b, c, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).view(b, 1, h, 1).expand(b, c, h, padded.shape[3])
    cols = (dx[:, None] + torch.arange(w)).view(b, 1, 1, w).expand(b, c, h, w)
    cropped = padded.gather(2, rows).gather(3, cols)
    flip = torch.rand(b, generator=generator) < 0.5
    cropped[flip] = cropped[flip].flip(-1)
    return cropped
