"""The FedSGD update: the gradient a user shares (the only thing the server sees)."""

from __future__ import annotations

import torch

from .loss import training_loss


def shared_gradient(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_scale: float = 1.0
) -> list[torch.Tensor]:
    """∇θ of the mean cross-entropy on ``images`` in eval mode, one tensor per parameter (FedSGD).

    ``loss_scale`` multiplies the user's loss: 1 everywhere except the threat-model option that reproduces the
    paper code's loss mismatch before 2021-03 (the user trained with 0.5·CE while the attacker assumed CE). The
    cosine objective is blind to it; the Euclidean (DLG) one is not.

    Eval mode because the paper's experiments do so (its issue #6): BatchNorm uses running statistics, so the
    gradient does not depend on how the batch is composed beyond the images themselves.
    """
    was_training = model.training
    model.eval()
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        loss = loss_scale * training_loss(model(images), labels)
        grads = torch.autograd.grad(loss, params)
    finally:
        model.train(was_training)
    return [g.detach() for g in grads]
