"""Train one victim on a decoded training split, measure it on held-out test images, or record why it could not.

python scripts/train_victim.py --spec '<json>' --out results/victims/CIFAR10/LeNetZhu_e15.pt
Inputs: data/cache/<dataset>-train.pt and -test.pt (scripts/decode_split.py). Accuracy is measured on
``eval_images`` test images drawn with the seed, none of them a copy of an image any experiment attacks
(invgrad.data.trainset.held_out). Without training data the checkpoint holds no weights and meta.status == "not run".
The metadata (also in the .json beside the checkpoint) records architecture, epochs, schedule, seed, the training
source actually used (training_data, training_data_origin: a local folder or torchvision's download) and the
decoded training data's sha256, the held-out accuracy and the floor the config sets for this model.
An optional spec key ``eval_every`` (k > 0) also measures the held-out accuracy after every k-th epoch of the same
run and records it as ``accuracy_curve: [[epoch, accuracy], ...]`` (scripts/victim_curve.py plots it).
"""

from __future__ import annotations

import sys
import time

import torch
from _common import log, stage_args

from invgrad import data
from invgrad.attack.engine import flushed_denormals
from invgrad.data import trainset
from invgrad.victim import training
from invgrad.victim.models import build_model


def _attacked_images(spec) -> torch.Tensor:
    """The first images of the attacked validation source (uint8): held-out images must not be copies of them."""
    source = spec["val_source"]
    val = data.load_dataset(
        source, split="val", root=data.source_root(source, spec["data_root"]), stats=spec["dataset"]
    )
    images, _ = trainset.decode(val, tuple(val.info.image_shape[1:]), count=spec["attacked_images"])
    return images


def main(argv=None) -> int:
    args = stage_args(__doc__, argv)
    spec = args.spec
    info = data.dataset_info(spec["dataset"])
    train_x, train_y, train_meta = trainset.load_split(spec["train_cache"])
    meta = {
        "architecture": spec["model"],
        "dataset": spec["dataset"],
        "epochs": spec["epochs"],
        "schedule": spec["schedule"],
        "seed": spec["seed"],
        "recipe": training.RECIPE,
        "milestones": training.milestones(),
        # The source decode_split resolved (data.resolve_training_source), not merely the configured one.
        "training_data": train_meta.get("source"),
        "training_data_origin": train_meta.get("origin"),
        "batch_size": spec["batch_size"],
        "floor": spec["floor"],
        "torch": str(torch.__version__),
    }
    if train_meta.get("status") != "ok":
        log(train_meta["reason"])
        training.save_checkpoint(
            args.out, None, {**meta, "status": training.NOT_RUN, "reason": train_meta["reason"]}
        )
        return 0
    if spec["max_images"] is not None and spec["max_images"] < len(train_x):
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(spec["seed"]))[
            : spec["max_images"]
        ]
        train_x, train_y = train_x[keep], train_y[keep]
    meta["training_data_sha256"] = train_meta["sha256"]
    test_x, test_y, test_meta = trainset.load_split(spec["test_cache"])
    held, dropped = trainset.held_out(
        test_y, test_x, spec["eval_images"], _attacked_images(spec), spec["seed"]
    )
    log(f"training on {len(train_x)} images ({train_meta['source']}, sha256 {train_meta['sha256'][:16]}…)")
    model = build_model(spec["model"], num_classes=info.num_classes, seed=spec["seed"])
    mean_std = tuple(t.view(-1) for t in data.mean_std(spec["dataset"]))
    eval_every = spec.get("eval_every", 0)

    def held_out_accuracy(trained) -> float:
        return training.accuracy_tensors(trained, test_x[held], test_y[held], mean_std)

    start = time.perf_counter()
    with flushed_denormals():  # saturated sigmoids (LeNet (Zhu)) are 5-10x slower with subnormal floats
        history = training.train_tensors(
            model,
            train_x,
            train_y,
            mean_std,
            spec["epochs"],
            spec["seed"],
            spec["schedule"],
            spec["batch_size"],
            log,
            evaluate=held_out_accuracy if eval_every else None,
            eval_every=eval_every,
        )
        accuracy = held_out_accuracy(model)
    verdict = "meets" if spec["floor"] is None or accuracy >= spec["floor"] else "is BELOW"
    log(f"held-out accuracy {accuracy:.4f} on {len(held)} test images ({verdict} the floor {spec['floor']})")
    meta.update(
        status="ok",
        training_images=len(train_x),
        train_loss=history["loss"],
        val_accuracy=accuracy,
        val_source=f"{test_meta['source']} (test split): {len(held)} images drawn with seed {spec['seed']}, "
        f"{dropped} copies of attacked images excluded",
        val_images=len(held),
        val_test_sha256=test_meta["sha256"],
        seconds=time.perf_counter() - start,
    )
    if "accuracy_curve" in history:
        meta.update(accuracy_curve=history["accuracy_curve"], eval_every=eval_every)
    training.save_checkpoint(args.out, model, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
