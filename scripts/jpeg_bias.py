"""How much a JPEG copy of a target changes the attack's PSNR: the 20 exact embedded CIFAR-10 test images against
their JPEG copies in the image-folder archive (files 0000–0003 of their classes), attacked alike.

Why: offline, more than 20 CIFAR-10 targets exist only as lossy JPEGs (``first-per-class:``). A reconstruction is
scored against its own target, so what matters is whether the attack recovers a JPEG target better or worse than
the exact image it came from. Both sets are attacked with the same victim, attack and seed (one user per image,
batched), and the paired per-image difference is reported with a 95% t interval.

python scripts/jpeg_bias.py --folder data/raw/cifar10-jpeg --method ours --out figures/jpeg_bias_ours.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from scipy import stats as scipy_stats

from invgrad import GradientReconstructor, data, make_config, shared_gradient
from invgrad.data.per_class import embedded_exact_files
from invgrad.data.sources import EvalTransform
from invgrad.metrics import psnr_per_image, to_unit_range
from invgrad.victim.models import build_model

# Table 1's settings of the two attacks (config/config.yaml, experiments.table1.methods)
METHODS = {
    "ours": {"max_iterations": 4800, "restarts": 1, "total_variation": 0.01, "lr": 0.1},
    "zhu": {"max_iterations": 500, "restarts": 1, "total_variation": 0.0, "lr": 1.0},
}


def pairs(folder: Path) -> list[tuple[int, int, Path, Path]]:
    """(label, number within class, exact PNG, JPEG copy) of every embedded CIFAR-10 test image."""
    info = data.dataset_info("CIFAR10")
    split = folder / "test" if (folder / "test").is_dir() else folder
    out = []
    for (label, number), exact in sorted(embedded_exact_files("CIFAR10").items(), key=lambda kv: kv[1].name):
        files = sorted((split / info.class_names[label]).glob("*.jpg"))
        if len(files) <= number:
            raise SystemExit(
                f"error: {split / info.class_names[label]} lacks file {number:04d}: is it the test split?"
            )
        out.append((label, number, exact, files[number]))
    return out


def attack(model, images: torch.Tensor, labels: torch.Tensor, stats, cfg) -> torch.Tensor:
    updates = [shared_gradient(model, images[i : i + 1], labels[i : i + 1]) for i in range(len(images))]
    attacker = GradientReconstructor(model, stats, cfg, num_images=1)
    rec, _ = attacker.reconstruct_many(updates, [labels[i : i + 1] for i in range(len(images))])
    dm, ds = stats
    return psnr_per_image(to_unit_range(rec.reshape(images.shape), dm, ds), to_unit_range(images, dm, ds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="the extracted cifar10-jpeg image folder")
    parser.add_argument("--out", type=Path, required=True, help="per-image CSV; the summary goes to stdout")
    parser.add_argument("--method", choices=sorted(METHODS), default="ours", help="Table 1's attack settings")
    parser.add_argument("--iterations", type=int, default=None, help="override the method's Table-1 budget")
    parser.add_argument("--seed", type=int, default=0, help="victim init and attack seed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    method = dict(METHODS[args.method])
    if args.iterations is not None:
        method["max_iterations"] = args.iterations
    if method["max_iterations"] < 1:
        parser.error(f"--iterations must be positive, got {method['max_iterations']}")
    torch.set_num_threads(args.threads)
    info = data.dataset_info("CIFAR10")
    transform = EvalTransform(info)
    found = pairs(args.folder)
    exact = torch.stack([transform(Image.open(e).convert("RGB")) for _, _, e, _ in found])
    jpeg = torch.stack([transform(Image.open(j).convert("RGB")) for _, _, _, j in found])
    labels = torch.tensor([label for label, *_ in found])
    stats = data.mean_std("CIFAR10")
    dm, ds = stats
    loss_db = psnr_per_image(to_unit_range(jpeg, dm, ds), to_unit_range(exact, dm, ds))
    model = build_model("LeNetZhu", num_classes=10, seed=args.seed).eval()
    cfg = make_config(args.method, **method, seed=args.seed)
    start = time.perf_counter()
    on_exact = attack(model, exact, labels, stats, cfg)
    on_jpeg = attack(model, jpeg, labels, stats, cfg)
    seconds = time.perf_counter() - start
    diff = (on_jpeg - on_exact).numpy().astype(float)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["exact_file", "jpeg_file", "label", "jpeg_vs_exact_db", "attack_exact_db", "attack_jpeg_db"]
        )
        rows = zip(found, loss_db.tolist(), on_exact.tolist(), on_jpeg.tolist(), strict=True)
        for (label, _, e, j), a, b, c in rows:
            writer.writerow(
                [e.name, f"{info.class_names[label]}/{j.name}", label, f"{a:.3f}", f"{b:.3f}", f"{c:.3f}"]
            )
    n = len(diff)
    half = scipy_stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n)
    p = scipy_stats.ttest_rel(on_jpeg.numpy(), on_exact.numpy()).pvalue
    print(
        f"{n} pairs; JPEG copy vs exact image: {loss_db.mean():.2f} dB (min {loss_db.min():.2f}, max {loss_db.max():.2f})"
    )
    print(
        f"attack PSNR, {args.method}, untrained LeNet (Zhu) seed {args.seed}, {method['max_iterations']} "
        f"iterations: exact "
        f"{on_exact.mean():.2f} dB, JPEG {on_jpeg.mean():.2f} dB; JPEG − exact {diff.mean():+.2f} dB, "
        f"95% CI [{diff.mean() - half:+.2f}, {diff.mean() + half:+.2f}], paired t p = {p:.3f}"
    )
    print(
        f"{seconds:.0f} s wall on {args.threads} thread(s), torch {torch.__version__}, {platform.machine()}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
