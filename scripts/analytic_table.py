"""Analytic input recovery of a biased fully-connected layer (arXiv 2003.14053, the fully-connected-layer proposition): relative error table.

python scripts/analytic_table.py --spec '<json>' --out results/analytic/table.csv
For each model's first biased Linear layer (the whole image for an MLP, the feature vector otherwise): random
inputs, one shared gradient, the recovered input vs the true one (K = 1) or vs the predicted weighted combination
of the batch's inputs (K > 1), in float32 and float64.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch
from _common import log, stage_args

from invgrad.attack import analytic
from invgrad.io import save_csv
from invgrad.user import training_loss
from invgrad.victim.models import build_model


def layer_inputs(model, layer, x):
    """The inputs of ``layer`` on ``x`` (a forward hook: ground truth, used for scoring only)."""
    seen = {}
    module = dict(model.named_modules())[layer]

    def hook(module, args, output):
        seen.setdefault("x", args[0].detach())

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return seen["x"]


def one_trial(name, k, dtype, seed):
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, seed=seed).to(dtype).eval()
    layer = analytic.linear_layers(model)[0]
    x = torch.rand(k, 3, 32, 32, dtype=dtype)
    y = torch.randperm(10)[:k] if k <= 10 else torch.randint(0, 10, (k,))
    params = [p for p in model.parameters() if p.requires_grad]
    update = torch.autograd.grad(training_loss(model(x), y), params)
    recovered = analytic.recover_layer_input(model, update, layer)
    inputs = layer_inputs(model, layer, x).flatten(1)
    if k == 1:
        expected = inputs[0]
    else:  # per-sample bias gradients δ_k (sum-loss of each sample) give the predicted combination
        bias = dict(model.named_parameters())[f"{layer}.bias"]
        deltas = torch.stack(
            [torch.autograd.grad(training_loss(model(x[i : i + 1]), y[i : i + 1]), bias)[0] for i in range(k)]
        )
        expected = analytic.batch_combination_weights(deltas) @ inputs
    relative = float((recovered - expected).norm() / expected.norm())
    nearest = float(min((recovered - inputs[i]).norm() / inputs[i].norm() for i in range(k)))
    return {
        "model": name,
        "layer": layer,
        "batch_size": k,
        "dtype": str(dtype).removeprefix("torch."),
        "trial": seed,
        "rel_error": relative,
        "rel_error_nearest_single_input": nearest,
        "input_dim": int(inputs.shape[1]),
    }


def main(argv=None) -> int:
    args = stage_args(__doc__, argv)
    spec = args.spec
    rows = []
    for name in spec["models"]:
        for k in spec["batch_sizes"]:
            for dtype in spec["dtypes"]:
                for t in range(spec["trials"]):
                    rows.append(one_trial(name, k, getattr(torch, dtype), spec["seed"] + t))
        log(f"{name}: done")
    frame = pd.DataFrame(rows)
    save_csv(frame, args.out.replace("table.csv", "trials.csv"))
    table = (
        frame.groupby(["model", "layer", "input_dim", "batch_size", "dtype"], sort=False)
        .agg(
            trials=("rel_error", "size"),
            rel_error_median=("rel_error", "median"),
            rel_error_max=("rel_error", "max"),
            rel_error_nearest_single_input=("rel_error_nearest_single_input", "median"),
        )
        .reset_index()
    )
    save_csv(table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
