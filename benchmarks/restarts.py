"""Restart-iterations per second: the batched engine vs the same engine one restart at a time.

Both runs use the same seed, so every restart starts from the same point; the script also prints the largest
difference between the per-restart losses of the two runs (they must agree). Measured side by side in one
process, alternating, so machine load affects both alike.

    python benchmarks/restarts.py                 # LeNetZhu × 8 restarts, ResNet20-4 × 4 restarts
    python benchmarks/restarts.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from invgrad import GradientReconstructor, data, make_config, shared_gradient
from invgrad.victim.models import build_model

CASES = {"LeNetZhu": dict(restarts=8, iterations=60), "ResNet20-4": dict(restarts=4, iterations=4)}


def measure(model_name: str, restarts: int, iterations: int, repeats: int, device: str) -> dict:
    model = build_model(model_name, seed=0).to(device).eval()
    dataset = data.load_dataset("embedded-CIFAR10")
    images, labels = data.load_targets(dataset, [0])
    images, labels = images.to(device), labels.to(device)
    update = shared_gradient(model, images, labels)
    cfg = make_config("ours", restarts=restarts, max_iterations=iterations, total_variation=1e-2, seed=1)
    attacker = GradientReconstructor(model, data.mean_std("CIFAR10", device=device), cfg)
    attacker.reconstruct(update, labels, restart_chunk=None)  # warm-up (allocator, kernels)
    timings = {"batched": [], "one-at-a-time": []}
    losses = {}
    for _ in range(repeats):
        for mode, chunk in (("batched", None), ("one-at-a-time", 1)):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            _, stats = attacker.reconstruct(update, labels, restart_chunk=chunk)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            timings[mode].append(time.perf_counter() - start)
            losses[mode] = stats["restart_losses"]
    best = {mode: min(values) for mode, values in timings.items()}
    rate = {mode: restarts * iterations / seconds for mode, seconds in best.items()}
    diff = max(abs(a - b) for a, b in zip(losses["batched"], losses["one-at-a-time"], strict=True))
    return dict(
        model=model_name,
        restarts=restarts,
        iterations=iterations,
        rate=rate,
        ratio=rate["batched"] / rate["one-at-a-time"],
        max_loss_diff=diff,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="best of N alternating runs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    print(
        f"{'model':<12}{'restarts':>9}{'its':>6}{'batched it/s':>15}{'one-by-one it/s':>17}{'ratio':>8}{'max Δloss':>12}"
    )
    for name, case in CASES.items():
        r = measure(name, case["restarts"], case["iterations"], args.repeats, args.device)
        print(
            f"{r['model']:<12}{r['restarts']:>9}{r['iterations']:>6}{r['rate']['batched']:>15.1f}"
            f"{r['rate']['one-at-a-time']:>17.1f}{r['ratio']:>7.2f}×{r['max_loss_diff']:>12.2e}"
        )


if __name__ == "__main__":
    main()
