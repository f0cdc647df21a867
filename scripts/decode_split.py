"""Decode one split of the training data once into a uint8 tensor file (data/cache/<dataset>-<split>.pt).

python scripts/decode_split.py --spec '{"dataset": "CIFAR10", "source": "image-folder:data/raw/cifar10-jpeg",
    "archive": "data/cifar10-jpeg.tar.gz", "download": true, "split": "train", "data_root": "data/raw"}' \\
    --out data/cache/CIFAR10-train.pt
The source is resolved by invgrad.data.resolve_training_source (the local folder or its archive, else torchvision's
download into data_root); the file's meta records the source used, where it came from and the content sha256.
Without any, the file records why (meta.status == "not run"), and the victims that need it say so.
"""

from __future__ import annotations

import sys
import time

import torch
from _common import log, stage_args

from invgrad import data
from invgrad.data import trainset
from invgrad.data.catalog import NOT_RUN


def main(argv=None) -> int:
    args = stage_args(__doc__, argv)
    spec = args.spec
    split = spec["split"]
    start = time.perf_counter()
    resolved = data.resolve_training_source(
        spec["dataset"],
        spec["source"],
        archive=spec.get("archive"),
        root=spec["data_root"],
        download=spec.get("download", True),
    )
    meta = {"dataset": spec["dataset"], "source": resolved.source, "origin": resolved.origin, "split": split}
    dataset = None
    if resolved.available:
        try:
            dataset = data.load_dataset(
                resolved.source,
                split="val" if split == "test" else split,
                root=data.source_root(resolved.source, spec["data_root"]),
                stats=spec["dataset"],
            )
        except (FileNotFoundError, ValueError, data.DataUnavailableError) as error:
            reason = data.NO_TRAINING_DATA.format(dataset=spec["dataset"])
            resolved = data.TrainingSource(
                spec["dataset"], None, reason=f"{reason} ({resolved.origin}: {error})"
            )
    if dataset is None:
        log(resolved.reason)
        empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
        trainset.save_split(
            args.out,
            empty,
            torch.zeros(0, dtype=torch.int64),
            {**meta, "source": None, "status": NOT_RUN, "reason": resolved.reason},
        )
        return 0
    images, labels = trainset.decode(dataset, tuple(dataset.info.image_shape[1:]))
    saved = trainset.save_split(args.out, images, labels, {**meta, "status": "ok"})
    log(
        f"decoded {saved['images']} images of {resolved.origin} ({split}) in {time.perf_counter() - start:.1f} s, "
        f"sha256 {saved['sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
