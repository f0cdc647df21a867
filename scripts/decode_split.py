"""Decode one split of a training source once into a uint8 tensor file (data/cache/<dataset>-<split>.pt).

python scripts/decode_split.py --spec '{"dataset": "CIFAR10", "source": "image-folder:data/raw/cifar10-jpeg",
    "split": "train", "data_root": "data/raw"}' --out data/cache/CIFAR10-train.pt
Without the source the file records why (meta.status == "not run"), and the victims that need it say so.
"""

from __future__ import annotations

import sys
import time

import torch
from _common import log, stage_args

from invgrad import data, trainset
from invgrad.experiments import NO_TRAINING_DATA
from invgrad.training import NOT_RUN


def main(argv=None) -> int:
    args = stage_args(__doc__, argv)
    spec = args.spec
    source, split = spec["source"], spec["split"]
    meta = {"dataset": spec["dataset"], "source": source, "split": split}
    start = time.perf_counter()
    try:
        if source is None:
            raise FileNotFoundError("no training source configured")
        root = None if source.startswith("image-folder:") else spec["data_root"]
        dataset = data.load_dataset(
            source, split="val" if split == "test" else split, root=root, stats=spec["dataset"]
        )
    except (FileNotFoundError, data.DataUnavailableError) as error:
        reason = NO_TRAINING_DATA.format(dataset=spec["dataset"])
        log(f"{reason} ({error})")
        empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
        trainset.save_split(
            args.out, empty, torch.zeros(0, dtype=torch.int64), {**meta, "status": NOT_RUN, "reason": reason}
        )
        return 0
    images, labels = trainset.decode(dataset, tuple(dataset.info.image_shape[1:]))
    saved = trainset.save_split(args.out, images, labels, {**meta, "status": "ok"})
    log(
        f"decoded {saved['images']} images of {source} ({split}) in {time.perf_counter() - start:.1f} s, sha256 {saved['sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
