"""What the offline ImageNet substitute needs to beat the mean-colour prior: the default's ImageNet cell
(EfficientNet-Lite0, pretrained, one embedded ImageNet photo) run through the pipeline's own cell code at other
resolutions, iteration budgets and restart counts, one row per setting.

python scripts/imagenet_budget.py --out figures/imagenet_budget.csv --setting 48:40:1 --setting 48:800:1 ...

A setting is SIZE:ITERATIONS:RESTARTS. Every other value (image, TV, learning rate, schedule, seed) is the
config's experiments.imagenet block.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch
import yaml

from invgrad.replication import cells, plan


def setting(text: str) -> tuple[int, int, int]:
    try:
        size, iterations, restarts = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE:ITERATIONS:RESTARTS, got {text!r}") from None
    if min(size, iterations, restarts) < 1:
        raise argparse.ArgumentTypeError(f"every part must be positive, got {text!r}")
    return size, iterations, restarts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--setting", type=setting, action="append", required=True, help="SIZE:ITERATIONS:RESTARTS"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    (base,) = plan.plan(config)["imagenet"].values()
    rows = []
    for size, iterations, restarts in args.setting:
        spec = {**base, "image_size": size, "attack": {**base["attack"], "max_iterations": iterations}}
        spec["attack"]["restarts"] = restarts
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            (record,) = cells.run_cell(spec, base["cell"], out, log=lambda _: None)
        seconds = time.perf_counter() - start
        row = {
            "model": base["model"],
            "image": record["target"],
            "image_size": size,
            "iterations": iterations,
            "restarts": restarts,
            "psnr": round(record["psnr"], 2),
            "psnr_prior": round(record["psnr_prior"], 2),
            "beats_prior": record["psnr"] > record["psnr_prior"],
            "seconds": round(seconds, 1),
        }
        rows.append(row)
        print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} settings, {args.threads} thread(s), torch {torch.__version__}")


if __name__ == "__main__":
    main()
