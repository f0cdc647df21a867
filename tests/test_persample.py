"""Per-candidate gradients from one autograd graph (persample.candidate_gradients) against torch.func's vmap."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from invgrad.attack import persample
from invgrad.attack.persample import candidate_gradients


def _odd_geometry_model() -> nn.Module:
    """Convolutions whose transposed form needs an output padding (stride 2 on odd sizes, dilation, 1×1
    stride 2), with and without bias, plus BatchNorm (eval) and a linear head."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # 11 -> 6: output padding 0 / 1 along the way
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Conv2d(4, 5, 3, stride=1, padding=2, dilation=2, bias=False),
        nn.Tanh(),
        nn.Conv2d(5, 6, 1, stride=2, bias=False),  # 6 -> 3
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 7),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        model[1].running_mean.copy_(torch.randn(4, generator=gen) * 0.1)
        model[1].running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    return model.eval()


def _loss_of_sum(k):
    return lambda logits, y: F.cross_entropy(logits, y, reduction="sum") / k


def _reference(model, x, labels):
    """vmap over candidates of grad of each candidate's mean cross-entropy."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}

    def one(xc, yc):
        g = grad(lambda p: F.cross_entropy(functional_call(model, (p, buffers), (xc,)), yc))(params)
        return [g[n] for n in params]

    return vmap(one)(x, labels)


@pytest.mark.parametrize("unfold_ratio", [persample.UNFOLD_MAX_POSITIONS_RATIO, 0, 10**9])
def test_candidate_gradients_and_their_image_gradient_equal_vmap(monkeypatch, unfold_ratio, device):
    """Default rule, every convolution unfolded, none (grouped convolution backward)."""
    monkeypatch.setattr(persample, "UNFOLD_MAX_POSITIONS_RATIO", unfold_ratio)
    model = _odd_geometry_model().to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 3, 11, 11, generator=gen).to(device)  # 3 candidates of 2 images each
    labels = torch.randint(0, 7, (3, 2), generator=gen).to(device)
    probe = [torch.randn(3, *p.shape, generator=gen).to(device) for p in model.parameters()]

    def image_gradient(compute):
        leaf = x.clone().requires_grad_(True)
        grads = compute(leaf)
        objective = sum((g * w).sum() + 0.3 * g.pow(2).sum() for g, w in zip(grads, probe, strict=True))
        return [g.detach() for g in grads], torch.autograd.grad(objective, leaf)[0]

    ours, ours_dx = image_gradient(lambda leaf: candidate_gradients(model, leaf, labels, _loss_of_sum(2)))
    expected, expected_dx = image_gradient(lambda leaf: _reference(model, leaf, labels))
    for a, b in zip(ours, expected, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max())
    assert torch.allclose(ours_dx, expected_dx, rtol=1e-5, atol=1e-5 * expected_dx.abs().max())
    assert float(expected_dx.abs().max()) > 0


def test_model_is_left_as_it_was():
    """The convolutions' forward is swapped only during the call; parameters keep their requires_grad."""
    model = _odd_geometry_model()
    model[3].weight.requires_grad_(False)
    x = torch.randn(2, 1, 3, 11, 11)
    grads = candidate_gradients(model, x, torch.tensor([[1], [2]]), _loss_of_sum(1))
    assert len(grads) == len([p for p in model.parameters() if p.requires_grad])
    assert all("forward" not in vars(m) for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, False, True, True, True]
    with torch.no_grad():
        assert torch.equal(
            model(x[:, 0]),
            model[7](
                model[6](
                    model[5](
                        model[4](
                            model[3](
                                model[2](model[1](F.conv2d(x[:, 0], model[0].weight, model[0].bias, 2, 1)))
                            )
                        )
                    )
                )
            ),
        )
