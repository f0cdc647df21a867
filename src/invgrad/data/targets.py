"""Target selection: which images a user holds, chosen on labels alone (no image decoded until the end)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _labels_of(dataset) -> tuple[list[int], int | None]:
    """Labels and class count of a dataset with ``.labels`` (or of a plain label sequence)."""
    if hasattr(dataset, "labels"):
        info = getattr(dataset, "info", None)
        return [int(y) for y in dataset.labels], (info.num_classes if info is not None else None)
    return [int(y) for y in dataset], None


def consecutive_indices(dataset, start: int, count: int) -> list[int]:
    """``start, start+1, ..., start+count-1``; the paper's batches of consecutive validation images."""
    n = len(dataset)
    if count < 1 or start < 0 or start + count > n:
        raise ValueError(
            f"cannot take count={count} consecutive images from start={start}: dataset has len={n}"
        )
    return list(range(start, start + count))


def unique_label_indices(dataset, start: int, count: int) -> list[int]:
    """Walk from ``start`` and keep an image only if its label is new, until ``count`` images.

    Multi-image experiments use distinct labels so that the labels can be recovered from the gradient.
    """
    labels, num_classes = _labels_of(dataset)
    if count < 1 or start < 0 or start >= len(labels):
        raise ValueError(f"invalid request count={count}, start={start} for a dataset of len={len(labels)}")
    if num_classes is not None and count > num_classes:
        raise ValueError(
            f"cannot take count={count} images with unique labels: only {num_classes} classes exist"
        )
    taken: set[int] = set()
    picked: list[int] = []
    for i in range(start, len(labels)):
        if labels[i] not in taken:
            taken.add(labels[i])
            picked.append(i)
            if len(picked) == count:
                return picked
    raise ValueError(
        f"cannot take count={count} images with unique labels from start={start}: "
        f"only {len(picked)} unique labels found before the end (len={len(labels)})"
    )


def load_targets(dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the chosen items: images ``[N,C,H,W]`` and labels ``[N]`` (long)."""
    if len(indices) == 0:
        raise ValueError("load_targets needs at least one index")
    n = len(dataset)
    bad = [i for i in indices if not 0 <= int(i) < n]
    if bad:
        raise ValueError(f"indices {bad} out of range for a dataset of len={n}")
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([img for img, _ in items])
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.long)
    return images, labels


# Label of the jeep demo photo in each label space (CIFAR-100 has no car class; pickup_truck is the closest).
_DEMO_LABELS = {"CIFAR10": 1, "CIFAR100": 58, "ImageNet": 609}


def demo_image(stats="CIFAR10") -> tuple[torch.Tensor, int]:
    """Image and label for the paper CLI's ``--target_id -1`` (a picture from outside the data set).

    The original demo reconstructs a user photo of a car that is in no training set. That photo is not
    redistributable here, so the offline stand-in is the embedded ImageNet photo ``imagenet_06_609.jpg``
    (class 609, jeep): resized bicubic to the data set's shape, labelled automobile (1) for CIFAR-10.
    """
    from .catalog import dataset_info
    from .sources import embedded_data_dir, load_image

    info = dataset_info(stats)
    path = embedded_data_dir() / "imagenet_06_609.jpg"
    return load_image(path, info), _DEMO_LABELS[info.name]
