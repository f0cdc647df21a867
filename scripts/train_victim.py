"""Train one victim with the paper's conservative recipe, or record why it could not be trained.

python scripts/train_victim.py --spec '<json>' --out results/victims/CIFAR10/LeNetZhu_e1.pt
Without training data the checkpoint holds no weights and meta.status == "not run" (the run still succeeds).
The metadata (also in the .json beside the checkpoint) records architecture, epochs, seed, the training data's
sha256 (``training_data_sha256``), the validation accuracy, and in the .json the checkpoint's own sha256.
"""

from __future__ import annotations

import sys
import time

import torch
from _common import log, stage_args

from invgrad import data, training
from invgrad.experiments import NO_TRAINING_DATA
from invgrad.models import build_model


def _root(source, root):
    """Image folders are given relative to the project; data.root is the torchvision download folder."""
    return None if str(source).startswith("image-folder:") else root


def main(argv=None) -> int:
    args = stage_args(__doc__, argv)
    spec = args.spec
    info = data.dataset_info(spec["dataset"])
    meta = {
        "architecture": spec["model"],
        "dataset": spec["dataset"],
        "epochs": spec["epochs"],
        "seed": spec["seed"],
        "recipe": training.RECIPE,
        "milestones": training.milestones(),
        "training_data": spec["train_source"],
        "max_images": spec["max_images"],
        "batch_size": spec["batch_size"],
        "torch": str(torch.__version__),
    }
    reason = NO_TRAINING_DATA.format(dataset=spec["dataset"])
    try:
        if spec["train_source"] is None:
            raise FileNotFoundError("no training source configured")
        train = data.load_dataset(
            spec["train_source"],
            split="train",
            root=_root(spec["train_source"], spec["data_root"]),
            stats=spec["dataset"],
            train_augment=True,
        )
        val = data.load_dataset(
            spec["val_source"],
            split="val",
            root=_root(spec["val_source"], spec["data_root"]),
            stats=spec["dataset"],
        )
    except (FileNotFoundError, data.DataUnavailableError) as error:
        log(f"{reason} ({error})")
        training.save_checkpoint(args.out, None, {**meta, "status": training.NOT_RUN, "reason": reason})
        return 0
    meta["training_data_sha256"] = training.dataset_sha256(train)
    log(f"training data {spec['train_source']}: {len(train)} images, sha256 {meta['training_data_sha256']}")
    model = build_model(spec["model"], num_classes=info.num_classes, seed=spec["seed"])
    start = time.perf_counter()
    history = training.train(
        model, train, spec["epochs"], spec["seed"], spec["max_images"], spec["batch_size"], log
    )
    accuracy = training.evaluate(model, val, spec["eval_images"])
    log(
        f"validation accuracy {accuracy:.4f} on {spec['eval_images'] or 'all'} images of {spec['val_source']}"
    )
    meta.update(
        status="ok",
        training_images=history["images_per_epoch"],
        subset=spec["max_images"] is not None and history["images_per_epoch"] < len(train),
        train_loss=history["loss"],
        val_accuracy=accuracy,
        val_source=spec["val_source"],
        val_images=min(spec["eval_images"] or len(val), len(val)),
        seconds=time.perf_counter() - start,
    )
    training.save_checkpoint(args.out, model, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
