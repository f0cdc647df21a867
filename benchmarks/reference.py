"""The readable version of the whole attack: plain PyTorch, the engine's speed and correctness baseline.

Nothing from the engine is used: the parameter gradient of a candidate comes from
``torch.autograd.grad(..., create_graph=True)`` on the model itself, and a Python loop visits every image and
every restart in turn. The objectives are written out again from their definitions (Geiping et al. 2020,
arXiv 2003.14053, §4; DLG: Zhu et al. 2019):

* ``ours``: 1 − <g, g*> / (|g| |g*|) over all parameters + TV · (mean |dx| + mean |dy|); Adam (lr 0.1) fed the
  sign of the gradient, step decay ×0.1 at 3/8, 5/8 and 7/8 of the iterations, iterate clamped to the box of valid
  [0, 1] images after every step.
* ``zhu`` (DLG): Σ |g − g*|², ``torch.optim.LBFGS`` with its defaults (lr 1), no box, no prior.

Starting points are drawn as the engine draws them (experiment e: ``torch.randn`` from seed + e over
[restarts, images, C, H, W]), so both sides start from the same candidates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def starting_points(experiment: int, restarts: int, num_images: int, shape, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + experiment)
    return torch.randn((restarts, num_images, *shape), generator=generator)


def parameter_gradient(model, x, labels, create_graph=True) -> tuple[torch.Tensor, ...]:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(F.cross_entropy(model(x), labels), params, create_graph=create_graph)


def cosine_loss(trial, target) -> torch.Tensor:
    dot = sum((g * t).sum() for g, t in zip(trial, target, strict=True))
    trial_norm = sum(g.pow(2).sum() for g in trial)
    target_norm = sum(t.pow(2).sum() for t in target)
    return 1 - dot / (trial_norm.sqrt() * target_norm.sqrt())


def l2_loss(trial, target) -> torch.Tensor:
    return sum((g - t).pow(2).sum() for g, t in zip(trial, target, strict=True))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    dx = (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().mean()
    dy = (x[:, :, :-1, :] - x[:, :, 1:, :]).abs().mean()
    return dx + dy


def invert_ours(model, target, labels, dm, ds, x0, iterations: int, tv: float, lr: float = 0.1):
    """One restart of the paper's attack; returns (final candidate, cosine loss there without TV)."""
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    milestones = [int(iterations // d) for d in (2.667, 1.6, 1.142)]  # the paper code's float floor-divisions
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    lower, upper = -dm / ds, (1 - dm) / ds
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = cosine_loss(parameter_gradient(model, x, labels), target) + tv * total_variation(x)
        (x.grad,) = torch.autograd.grad(loss, x)
        x.grad.sign_()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            x.data = torch.max(torch.min(x, upper), lower)
    return x.detach(), _final_loss(cosine_loss, model, x, labels, target)


def unrolled_update(model, x, labels, steps: int, local_lr: float) -> list[torch.Tensor]:
    """FedAvg's Δθ after ``steps`` full-batch SGD steps, kept on the tape (create_graph) so that it can be
    differentiated w.r.t. the images: the textbook unrolling, with torch.func.functional_call only to run the
    module at the updated parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    start = [p for p in model.parameters() if p.requires_grad]
    current = list(start)
    for _ in range(steps):
        logits = torch.func.functional_call(model, dict(zip(names, current, strict=True)), (x,))
        grads = torch.autograd.grad(F.cross_entropy(logits, labels), current, create_graph=True)
        current = [p - local_lr * g for p, g in zip(current, grads, strict=True)]
    return [c - s for c, s in zip(current, start, strict=True)]


def invert_fedavg(model, target, labels, dm, ds, x0, iterations, tv, steps, local_lr, lr: float = 0.1):
    """One restart of the FedAvg attack: the 'ours' loop with the unrolled update in place of the gradient."""
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    milestones = [int(iterations // d) for d in (2.667, 1.6, 1.142)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    lower, upper = -dm / ds, (1 - dm) / ds
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = cosine_loss(unrolled_update(model, x, labels, steps, local_lr), target) + tv * total_variation(
            x
        )
        (x.grad,) = torch.autograd.grad(loss, x)
        x.grad.sign_()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            x.data = torch.max(torch.min(x, upper), lower)
    final = cosine_loss(unrolled_update(model, x.detach(), labels, steps, local_lr), target)
    return x.detach(), float(final.detach())


def invert_dlg(model, target, labels, x0, steps: int):
    """One restart of DLG: ``steps`` calls of LBFGS.step (each up to 20 iterations); (candidate, L2 loss)."""
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1)

    def closure():
        optimizer.zero_grad()
        loss = l2_loss(parameter_gradient(model, x, labels), target)
        (x.grad,) = torch.autograd.grad(loss, x)
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return x.detach(), _final_loss(l2_loss, model, x, labels, target)


def _final_loss(distance, model, x, labels, target) -> float:
    x = x.detach().requires_grad_(True)
    return float(distance(parameter_gradient(model, x, labels, create_graph=False), target))


def attack(model, updates, labels, dm, ds, cfg: dict, restarts: int, seed: int, shape=(3, 32, 32)):
    """Loop over experiments (one update each) and restarts; the restart with the lowest loss is returned.

    cfg: ``{"kind": "ours", "iterations": N, "tv": w}``, ``{"kind": "zhu", "steps": N}`` or ``{"kind": "fedavg",
    "iterations": N, "tv": w, "steps": n, "lr": τ}``. Images [E, K, C, H, W].
    """
    model.eval()
    chosen = []
    for e, (target, y) in enumerate(zip(updates, labels, strict=True)):
        x0 = starting_points(e, restarts, len(y), shape, seed).to(dm.device, dm.dtype)
        runs = []
        for r in range(restarts):
            if cfg["kind"] == "ours":
                runs.append(invert_ours(model, target, y, dm, ds, x0[r], cfg["iterations"], cfg["tv"]))
            elif cfg["kind"] == "fedavg":
                runs.append(
                    invert_fedavg(
                        model, target, y, dm, ds, x0[r], cfg["iterations"], cfg["tv"], cfg["steps"], cfg["lr"]
                    )
                )
            else:
                runs.append(invert_dlg(model, target, y, x0[r], cfg["steps"]))
        losses = torch.tensor([loss for _, loss in runs]).nan_to_num(nan=float("inf"))
        chosen.append(runs[int(losses.argmin())][0])
    return torch.stack(chosen)
