"""The user's FedAvg local update (paper §5): n plain gradient-descent steps on its own images; it shares Δθ."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..protocol import check_schedule, minibatch_slices
from .gradient import shared_gradient, training_loss


def local_update(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    local_steps: int,
    local_lr: float,
    batch_size: int = 0,
    use_updates: bool = True,
) -> list[torch.Tensor]:
    """What a FedAvg user shares after ``local_steps`` SGD steps: Δθ = θ_n − θ_0 (or θ_n), one tensor per parameter.

    The model itself is not modified (a user trains a copy of the global model). ``local_steps=0`` returns the plain
    gradient (FedSGD). Computed with ordinary autograd on the module — an implementation independent of the
    attacker's functional unrolling, so the two can be compared.
    """
    check_schedule(local_steps, local_lr, batch_size, images.shape[0], allow_zero_steps=True)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"got {labels.shape[0]} labels for {images.shape[0]} images")
    if local_steps == 0:
        return shared_gradient(model, images, labels)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    try:
        trainable = [p for p in model.parameters() if p.requires_grad]
        for part in minibatch_slices(local_steps, batch_size, images.shape[0]):
            loss = training_loss(model(images[part]), labels[part])
            grads = torch.autograd.grad(loss, trainable)
            with torch.no_grad():
                for p, g in zip(trainable, grads, strict=True):
                    p.sub_(local_lr * g)
        with torch.no_grad():
            final = [p.detach().clone() for p in trainable]
            out = [f - start[n] for f, n in zip(final, names, strict=True)] if use_updates else final
            for p, n in zip(trainable, names, strict=True):  # give the global model back unchanged
                p.copy_(start[n])
    finally:
        model.train(was_training)
    return out


def update_cosine(update: Sequence[torch.Tensor], gradient: Sequence[torch.Tensor]) -> float:
    """Cosine of a FedAvg update's descent direction (−Δθ) with the single full-batch gradient at θ_0: 1.0 means
    the local steps shared what one gradient would (FedSGD in disguise); lower, that they moved the weights."""
    a = torch.cat([-t.detach().flatten().double() for t in update])
    b = torch.cat([t.detach().flatten().double() for t in gradient])
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))
