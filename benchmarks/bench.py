"""Wall time of the engine vs a plain PyTorch reference (benchmarks/reference.py) on the same attacks.

Each workload runs both sides in one process, alternating, from the same starting points; the table gives the
median seconds over ``--repeats``, the median of the per-repeat ratios reference/ours, the goal, and the mean
PSNR each side reaches (a gap above ``PSNR_TOLERANCE`` dB is flagged: the two must solve the same problem).

    python benchmarks/bench.py --threads 1 --repeats 3      # LeNet workloads
    python benchmarks/bench.py --threads 1 --resnet         # + ResNet20 / ResNet20-4
    python benchmarks/bench.py --quick                      # a seconds-long smoke run
    python benchmarks/bench.py --only single restarts8      # some workloads
    python benchmarks/bench.py --device cuda --resnet

On a machine whose cores are busy with other work, prefer ``--threads 1``: with 2 intra-op threads on 2 shared
cores, OpenMP waits made both sides 10–100× slower, erratically (the ratios then mean nothing).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

from invgrad import GradientReconstructor, data, make_config, shared_gradient  # noqa: E402
from invgrad.allocator import retain_freed_memory  # noqa: E402
from invgrad.attack.fedavg import FedAvgReconstructor  # noqa: E402
from invgrad.devices import checked_device  # noqa: E402
from invgrad.metrics import psnr_per_image, to_unit_range  # noqa: E402
from invgrad.user.fedavg import local_update  # noqa: E402
from invgrad.victim.models import build_model  # noqa: E402

PSNR_TOLERANCE = 1.0  # dB between the mean PSNRs of the two sides
SEED = 1
TV = 1e-4  # the "ours" preset's TV weight
FEDAVG = dict(
    steps=5, lr=1e-4
)  # local steps n and local learning rate τ of the FedAvg workload (PAPER Table 2)
TABLE1_ITERATIONS = 4800  # a Table-1 cell's budget: its time is projected from the measured iterations


@dataclass
class Workload:
    key: str
    name: str
    model: str
    kind: str  # "ours" (signed Adam, cosine), "zhu" (DLG, L-BFGS) or "fedavg" (unrolled local steps)
    experiments: int  # independent updates (one user each)
    images: int  # images per update
    restarts: int
    goal: str = ""
    iterations: int | None = None  # fixed budget (else --iterations / --dlg-steps)
    reference_share: int = (
        0  # >0: the reference runs this many experiments only; its time is scaled (linear loop)
    )
    project: bool = False  # print the projected minutes of a Table-1 cell (4,800 iterations)


def workloads(args) -> list[Workload]:
    dlg_images, cell = (4, 8) if args.quick else (20, 100)
    table = [
        Workload("single", "LeNetZhu 1 img, 1 restart", "LeNetZhu", "ours", 1, 1, 1, "≥ 1.5×"),
        Workload("restarts8", "LeNetZhu 1 img, 8 restarts", "LeNetZhu", "ours", 1, 1, 8, "≥ 5×"),
        Workload(
            "table1",
            f"LeNetZhu Table-1 cell, {cell} imgs",
            "LeNetZhu",
            "ours",
            cell,
            1,
            1,
            "≤ 5 min",
            reference_share=4,
            project=True,
        ),
        Workload("dlg20", f"LeNetZhu DLG, {dlg_images} imgs", "LeNetZhu", "zhu", dlg_images, 1, 1, "≥ 4×"),
        Workload("fedavg", "LeNetZhu FedAvg n=5, 8 imgs", "LeNetZhu", "fedavg", 1, 8, 1, "measure"),
        Workload("fedavg1", "LeNetZhu FedAvg n=5, 1 user", "LeNetZhu", "fedavg", 1, 1, 1, "≥ 1.3×"),
        Workload("fedavg12", "LeNetZhu FedAvg n=5, 12 users", "LeNetZhu", "fedavg", 12, 1, 1, "≥ 5×"),
    ]
    if args.resnet:
        table += [
            Workload("resnet20", "ResNet20, 8 imgs (8 users)", "ResNet20", "ours", 8, 1, 1, "≥ 2.5×", 30),
            Workload(
                "resnet20-4", "ResNet20-4, 4 imgs (4 users)", "ResNet20-4", "ours", 4, 1, 1, "≥ 1.3×", 10
            ),
        ]
    return [w for w in table if not args.only or w.key in args.only]


def run_ours(workload, model, updates, labels, stats, budget):
    preset = {
        "ours": dict(total_variation=TV, max_iterations=budget),
        "fedavg": dict(total_variation=TV, max_iterations=budget),
        "zhu": dict(max_iterations=budget),
    }
    kind = "ours" if workload.kind == "fedavg" else workload.kind
    cfg = make_config(kind, restarts=workload.restarts, seed=SEED, **preset[workload.kind])
    if workload.kind == "fedavg":
        attacker = FedAvgReconstructor(
            model, stats, FEDAVG["steps"], FEDAVG["lr"], cfg, num_images=workload.images
        )
    else:
        attacker = GradientReconstructor(model, stats, cfg, num_images=workload.images)
    images, _ = attacker.reconstruct_many(updates, [y for y in labels])
    return images


def run_reference(workload, model, updates, labels, stats, budget):
    cfg = {
        "ours": dict(kind="ours", iterations=budget, tv=TV),
        "zhu": dict(kind="zhu", steps=budget),
        "fedavg": dict(kind="fedavg", iterations=budget, tv=TV, **FEDAVG),
    }
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


def _updates(workload, model, truths, labels) -> list[list[torch.Tensor]]:
    if workload.kind == "fedavg":
        return [
            local_update(model, x, y, FEDAVG["steps"], FEDAVG["lr"])
            for x, y in zip(truths, labels, strict=True)
        ]
    return [shared_gradient(model, x, y) for x, y in zip(truths, labels, strict=True)]


def measure(workload, budget, repeats, device) -> dict:
    model = build_model(workload.model, seed=0).to(device).eval()
    stats = data.mean_std("CIFAR10", device=device)
    dataset = data.load_dataset("embedded-CIFAR10")
    count = workload.experiments * workload.images
    images, labels = data.load_targets(dataset, [i % len(dataset) for i in range(count)])
    truths = images.to(device).reshape(workload.experiments, workload.images, *images.shape[1:])
    labels = labels.to(device).reshape(workload.experiments, workload.images)
    updates = _updates(workload, model, truths, labels)
    share = workload.reference_share or workload.experiments
    scale = workload.experiments / share
    run_ours(workload, model, updates[:1], labels[:1], stats, 1)  # warm-up (allocator, kernels)
    seconds = {"reference": [], "ours": []}
    psnr = {}
    cpu_stats = (stats[0].cpu(), stats[1].cpu())
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = run_reference(workload, model, updates[:share], labels[:share], stats, budget)
        _sync(device)
        seconds["reference"].append((time.perf_counter() - start) * scale)
        psnr["reference"] = mean_psnr(out.cpu(), truths[:share].cpu(), cpu_stats)
        start = time.perf_counter()
        out = run_ours(workload, model, updates, labels, stats, budget)
        _sync(device)
        seconds["ours"].append(time.perf_counter() - start)
        psnr["ours"] = mean_psnr(out[:share].cpu(), truths[:share].cpu(), cpu_stats)
    ratios = [r / o for r, o in zip(seconds["reference"], seconds["ours"], strict=True)]
    return dict(
        seconds={side: statistics.median(values) for side, values in seconds.items()},
        ratio=statistics.median(ratios),
        psnr=psnr,
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, help="Adam iterations of the LeNet workloads")
    parser.add_argument("--dlg-steps", type=int, default=10, help="LBFGS.step() calls (≤20 iterations each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs; medians are reported")
    parser.add_argument("--resnet", action="store_true", help="add the ResNet20 and ResNet20-4 workloads")
    parser.add_argument("--only", nargs="*", default=(), help="workload keys: single restarts8 table1 ...")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    try:
        checked_device(args.device)
    except ValueError as error:
        print(f"{error}; use --device cpu")
        raise SystemExit(2) from None
    if args.quick:
        args.iterations, args.dlg_steps = 10, 2
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(
        True
    )  # both sides alike: saturated sigmoids make slow subnormals (see engine.py)
    # The engine pins glibc's malloc thresholds when it first runs; pinned here, before either side, so that the
    # reference runs under the same allocator from its first repeat on.
    allocator = "glibc thresholds pinned" if retain_freed_memory() else "allocator defaults"
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, {allocator} (both sides)"
    )
    print(f"LeNet 'ours' workloads: {args.iterations} Adam iterations; DLG: {args.dlg_steps} LBFGS steps")
    header = (
        f"{'workload':<34}| {'its':>4} | {'reference s':>11} | {'ours s':>8} | {'ratio':>7} | {'goal':>8} | "
        f"{'PSNR ref':>8} | {'PSNR ours':>9}"
    )
    print(header)
    print("-" * len(header))
    mismatches = 0
    for workload in workloads(args):
        budget = workload.iterations or (args.dlg_steps if workload.kind == "zhu" else args.iterations)
        if args.quick:
            budget = min(budget, 2 if workload.kind == "zhu" else 10)
        r = measure(workload, budget, args.repeats, args.device)
        ref_s, ours_s = r["seconds"]["reference"], r["seconds"]["ours"]
        ref_p, ours_p = r["psnr"]["reference"], r["psnr"]["ours"]
        flag = "" if abs(ref_p - ours_p) <= PSNR_TOLERANCE else "  PSNR MISMATCH"
        mismatches += bool(flag)
        print(
            f"{workload.name:<34}| {budget:>4} | {ref_s:>11.2f} | {ours_s:>8.2f} | {r['ratio']:>6.2f}× | "
            f"{workload.goal:>8} | {ref_p:>8.2f} | {ours_p:>9.2f}{flag}",
            flush=True,
        )
        if workload.project:
            minutes = ours_s * TABLE1_ITERATIONS / budget / 60
            print(f"{'':<34}  projected {TABLE1_ITERATIONS} iterations: {minutes:.1f} min (ours)")
    if mismatches:
        print(f"{mismatches} workload(s) reached a different PSNR (> {PSNR_TOLERANCE} dB apart)")


if __name__ == "__main__":
    main()
