"""Label recovery from the last layer's gradient: accuracy per model and batch size (untrained victims).

python scripts/labels_table.py --spec '<json>' --out results/labels/table.csv
K = 1: iDLG (invgrad.attack.labels.idlg_label); K > 1: the K most negative row sums (invgrad.attack.labels.last_layer_labels),
batches of K unique labels drawn from the validation source. Accuracy = fraction of the true labels recovered.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch
from _common import log, stage_args

from invgrad import data, metrics
from invgrad.attack import labels
from invgrad.io import save_csv
from invgrad.user import shared_gradient
from invgrad.victim.models import build_model


def main(argv=None) -> int:
    args = stage_args(__doc__, argv)
    spec = args.spec
    dataset = data.load_dataset(
        spec["val_source"], split="val", root=spec["data_root"], stats=spec["dataset"]
    )
    info = data.dataset_info(spec["dataset"])
    rows = []
    for name in spec["models"]:
        for k in spec["batch_sizes"]:
            if k > info.num_classes:
                continue
            for t in range(spec["trials"]):
                model = build_model(name, num_classes=info.num_classes, seed=spec["seed"] + t).eval()
                order = torch.randperm(
                    len(dataset), generator=torch.Generator().manual_seed(spec["seed"] + t)
                )
                try:
                    picked = data.unique_label_indices([dataset.labels[i] for i in order], 0, k)
                except ValueError:
                    continue
                x, y = data.load_targets(dataset, [int(order[i]) for i in picked])
                update = shared_gradient(model, x, y)
                guess = (
                    labels.idlg_label(update).reshape(1) if k == 1 else labels.last_layer_labels(update, k)
                )
                rows.append(
                    {
                        "model": name,
                        "batch_size": k,
                        "trial": t,
                        "rule": "idlg" if k == 1 else "last-layer",
                        "accuracy": metrics.label_accuracy(guess, y),
                    }
                )
        log(f"{name}: done")
    frame = pd.DataFrame(rows)
    save_csv(frame, args.out.replace("table.csv", "trials.csv"))
    table = (
        frame.groupby(["model", "batch_size", "rule"], sort=False)
        .agg(
            trials=("accuracy", "size"), accuracy_mean=("accuracy", "mean"), accuracy_min=("accuracy", "min")
        )
        .reset_index()
    )
    save_csv(table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
