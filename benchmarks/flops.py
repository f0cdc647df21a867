"""How close an attack iteration is to the CPU's arithmetic limit: FLOPs per image-iteration vs what a core does.

Counts the floating-point operations of one evaluation of the attack objective (forward, the parameter gradient
with create_graph, and the gradient of the cosine objective w.r.t. the images) with ``torch.utils.flop_counter``
(convolutions and matrix products: the bulk), measures what one thread delivers on a large SGEMM, and times one
evaluation of the plain reference (one image) and of the engine (``--users`` images as independent experiments)
per image.

    python benchmarks/flops.py --model ResNet20-4 --users 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

from invgrad import data, make_config, shared_gradient  # noqa: E402
from invgrad.attack.engine import Engine, flushed_denormals, gradient_simulator  # noqa: E402
from invgrad.victim.models import build_model  # noqa: E402


def sgemm_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNet20-4")
    parser.add_argument("--users", type=int, default=4, help="independent one-image experiments, batched")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.model, seed=0).eval()
    images, labels = data.load_targets(
        data.load_dataset("embedded-CIFAR10"), [i % 20 for i in range(args.users)]
    )  # the 20 embedded images, cycled
    updates = [shared_gradient(model, images[i : i + 1], labels[i : i + 1]) for i in range(args.users)]
    x = torch.randn(1, 3, 32, 32, requires_grad=True)

    def reference_eval():
        inner = x.clone()  # not a leaf: the FLOP counter's module hooks refuse leaves under autograd.grad
        loss = reference.cosine_loss(reference.parameter_gradient(model, inner, labels[:1]), updates[0])
        loss = loss + 1e-4 * reference.total_variation(inner)
        return torch.autograd.grad(loss, x)

    counter = FlopCounterMode(display=False)
    with counter:
        reference_eval()
    flops = counter.get_total_flops()
    cfg = make_config("ours", restarts=1, max_iterations=1, total_variation=1e-4)
    dm, ds = (s.reshape(-1, 1, 1) for s in data.mean_std("CIFAR10"))
    engine = Engine(model, gradient_simulator(model), cfg, dm, ds)
    targets = [torch.stack(per) for per in zip(*updates, strict=True)]
    evaluate = engine.evaluations.path(args.users)(
        targets, labels[:, None], torch.ones(args.users, len(targets)), None
    )
    variables = [torch.randn(args.users, 1, 1, 3, 32, 32)]
    with flushed_denormals():
        ref_s = best_time(reference_eval, args.repeats)
        ours_s = best_time(lambda: evaluate(variables), args.repeats) / args.users
    gflops = sgemm_gflops()
    batch = torch.randn(args.users, 3, 32, 32)
    with FlopCounterMode(display=False) as forward_counter, torch.no_grad():
        model(batch)
    with torch.no_grad():
        forward_s = best_time(lambda: model(batch), args.repeats)
    forward_rate = forward_counter.get_total_flops() / forward_s / 1e9
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}")
    print(f"FLOPs per image-iteration (convolutions + matmuls): {flops / 1e9:.3f} GFLOP")
    print(f"one-thread SGEMM 1024³: {gflops:.1f} GFLOP/s -> lower bound {flops / gflops / 1e9 * 1e3:.1f} ms")
    print(
        f"the model's inference (no grad) on {args.users} images: {forward_rate:.1f} GFLOP/s "
        f"({forward_rate / gflops:.0%} of SGEMM): what these convolutions reach at best"
    )
    for side, seconds in (("reference (1 image)", ref_s), (f"engine ({args.users} users batched)", ours_s)):
        rate = flops / seconds / 1e9
        print(
            f"{side:<28} {seconds * 1e3:8.1f} ms per image-iteration = {rate:5.1f} GFLOP/s "
            f"({rate / gflops:.0%} of SGEMM, {rate / forward_rate:.0%} of inference)"
        )


if __name__ == "__main__":
    main()
