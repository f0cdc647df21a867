"""Wall time of the engine vs a plain PyTorch reference (benchmarks/reference.py) on the same attacks.

Each workload runs both sides in one process, alternating, from the same starting points; the table gives
seconds (best of ``--repeats``), reference/ours, and the mean PSNR each side reaches (a gap above
``PSNR_TOLERANCE`` dB is flagged: the two must solve the same problem).

    python benchmarks/bench.py                  # default budgets, 2 threads
    python benchmarks/bench.py --quick          # a seconds-long smoke run
    python benchmarks/bench.py --device cuda --resnet

On a machine whose cores are busy with other work, prefer ``--threads 1``: with 2 intra-op threads on 2 shared
cores, OpenMP waits made both sides 10–100× slower, erratically (the ratios then mean nothing).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

from invgrad import GradientReconstructor, data, make_config, shared_gradient  # noqa: E402
from invgrad.metrics import psnr_per_image, to_unit_range  # noqa: E402
from invgrad.victim.models import build_model  # noqa: E402

PSNR_TOLERANCE = 1.0  # dB between the mean PSNRs of the two sides
SEED = 1
TV = 1e-4  # the "ours" preset's TV weight


@dataclass
class Workload:
    name: str
    model: str
    kind: str  # "ours" (signed Adam, cosine) or "zhu" (DLG, L-BFGS)
    experiments: int  # independent updates (one user each)
    images: int  # images per update
    restarts: int


def workloads(args) -> list[Workload]:
    dlg_images = 4 if args.quick else 20
    table = [
        Workload("LeNetZhu 1 img, 1 restart", "LeNetZhu", "ours", 1, 1, 1),
        Workload("LeNetZhu 1 img, 8 restarts", "LeNetZhu", "ours", 1, 1, 8),
        Workload(f"LeNetZhu DLG, {dlg_images} imgs", "LeNetZhu", "zhu", dlg_images, 1, 1),
    ]
    if args.resnet:
        table.append(Workload("ResNet20 8-img batch", "ResNet20", "ours", 1, 8, 1))
    return table


def run_ours(workload, model, updates, labels, stats, budget):
    preset = {"ours": dict(total_variation=TV, max_iterations=budget), "zhu": dict(max_iterations=budget)}
    cfg = make_config(workload.kind, restarts=workload.restarts, seed=SEED, **preset[workload.kind])
    attacker = GradientReconstructor(model, stats, cfg, num_images=workload.images)
    images, _ = attacker.reconstruct_many(updates, [y for y in labels])
    return images


def run_reference(workload, model, updates, labels, stats, budget):
    cfg = {"ours": dict(kind="ours", iterations=budget, tv=TV), "zhu": dict(kind="zhu", steps=budget)}
    dm, ds = stats
    return reference.attack(model, updates, labels, dm, ds, cfg[workload.kind], workload.restarts, SEED)


def mean_psnr(images, truths, stats) -> float:
    dm, ds = stats
    values = [
        psnr_per_image(to_unit_range(rec, dm, ds), to_unit_range(truth, dm, ds)).mean()
        for rec, truth in zip(images, truths, strict=True)
    ]
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else math.nan


def measure(workload, budget, repeats, device) -> dict:
    model = build_model(workload.model, seed=0).to(device).eval()
    stats = data.mean_std("CIFAR10", device=device)
    dataset = data.load_dataset("embedded-CIFAR10")
    count = workload.experiments * workload.images
    images, labels = data.load_targets(dataset, list(range(count)))
    truths = images.to(device).reshape(workload.experiments, workload.images, *images.shape[1:])
    labels = labels.to(device).reshape(workload.experiments, workload.images)
    updates = [shared_gradient(model, x, y) for x, y in zip(truths, labels, strict=True)]
    sides = {"reference": run_reference, "ours": run_ours}
    run_ours(workload, model, updates[:1], labels[:1], stats, 1)  # warm-up (allocator, kernels)
    seconds = {side: math.inf for side in sides}
    psnr = {}
    for _ in range(repeats):
        for side, run in sides.items():
            _sync(device)
            start = time.perf_counter()
            out = run(workload, model, updates, labels, stats, budget)
            _sync(device)
            seconds[side] = min(seconds[side], time.perf_counter() - start)
            psnr[side] = mean_psnr(out.cpu(), truths.cpu(), (stats[0].cpu(), stats[1].cpu()))
    return dict(seconds=seconds, psnr=psnr)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, help="Adam iterations of the 'ours' workloads")
    parser.add_argument("--dlg-steps", type=int, default=10, help="LBFGS.step() calls (≤20 iterations each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="best of N alternating runs")
    parser.add_argument("--resnet", action="store_true", help="add the ResNet20 8-image workload")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available to torch on this machine; use --device cpu")
        raise SystemExit(2)
    if args.quick:
        args.iterations, args.dlg_steps = 10, 2
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(
        True
    )  # both sides alike: saturated sigmoids make slow subnormals (see engine.py)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    print(f"'ours' workloads: {args.iterations} Adam iterations; DLG: {args.dlg_steps} LBFGS steps")
    header = f"{'workload':<30}| {'reference s':>11} | {'ours s':>8} | {'ratio':>6} | {'PSNR ref':>8} | {'PSNR ours':>9}"
    print(header)
    print("-" * len(header))
    mismatches = 0
    for workload in workloads(args):
        budget = args.dlg_steps if workload.kind == "zhu" else args.iterations
        r = measure(workload, budget, args.repeats, args.device)
        ref_s, ours_s = r["seconds"]["reference"], r["seconds"]["ours"]
        ref_p, ours_p = r["psnr"]["reference"], r["psnr"]["ours"]
        flag = "" if abs(ref_p - ours_p) <= PSNR_TOLERANCE else "  PSNR MISMATCH"
        mismatches += bool(flag)
        print(
            f"{workload.name:<30}| {ref_s:>11.2f} | {ours_s:>8.2f} | {ref_s / ours_s:>5.2f}× | {ref_p:>8.2f} | "
            f"{ours_p:>9.2f}{flag}"
        )
    if mismatches:
        print(f"{mismatches} workload(s) reached a different PSNR (> {PSNR_TOLERANCE} dB apart)")


if __name__ == "__main__":
    main()
