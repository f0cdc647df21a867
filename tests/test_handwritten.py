"""The hand-written second-order pass (handwritten.candidate_gradients) against torch.func."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from invgrad.attack import engine, handwritten
from invgrad.victim.models import build_model, mlp


def _odd_sequential() -> nn.Sequential:
    """Every supported layer: strided, dilated and 1×1 convolutions with and without bias (output paddings along
    the way), the three activations, a flatten and a linear head."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # 11 -> 6
        nn.Tanh(),
        nn.Conv2d(4, 5, 3, stride=1, padding=2, dilation=2, bias=False),
        nn.Sigmoid(),
        nn.Conv2d(5, 6, 1, stride=2, bias=False),  # 6 -> 3
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=1, padding=1),  # stride 1: the flipped-kernel input gradient
        nn.Tanh(),
        nn.Conv2d(8, 9, 3, padding=2, dilation=2),
        nn.Sigmoid(),
        nn.Conv2d(9, 4, 3, stride=2, padding=1, bias=False),  # 3 -> 2
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 7),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def _reference(model, x, labels):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def one(xc, yc):
        g = grad(lambda p: F.cross_entropy(functional_call(model, p, (xc,)), yc))(params)
        return [g[n] for n in params]

    return vmap(one)(x, labels)


def _resnet() -> nn.Module:
    """ResNet20 (residual sums, 1×1 strided shortcuts, BatchNorm, pooling) with BatchNorm statistics and affine
    parameters away from their identity defaults."""
    gen = torch.Generator().manual_seed(2)
    model = build_model("ResNet20", seed=0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


MODELS = {
    "odd-sequential": (_odd_sequential, 11, 7),
    "ResNet20": (_resnet, 8, 10),
}  # (model, image size, classes)


@pytest.mark.parametrize("images", [1, 2])  # one image per candidate (patches) and several (grouped)
@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_and_their_image_gradient_equal_torch_func(name, images, device):
    make, size, classes = MODELS[name]
    model = make().double().to(device)
    assert handwritten.supports(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, images, 3, size, size, generator=gen, dtype=torch.float64).to(device)
    labels = torch.randint(0, classes, (3, images), generator=gen).to(device)
    probe = [
        torch.randn(3, *p.shape, generator=gen, dtype=torch.float64).to(device) for p in model.parameters()
    ]

    def image_gradient(compute):
        leaf = x.clone().requires_grad_(True)
        grads = compute(leaf)
        objective = sum((g * w).sum() + 0.3 * g.pow(2).sum() for g, w in zip(grads, probe, strict=True))
        return [g.detach() for g in grads], torch.autograd.grad(objective, leaf)[0]

    ours, ours_dx = image_gradient(lambda leaf: handwritten.candidate_gradients(model, leaf, labels))
    expected, expected_dx = image_gradient(lambda leaf: _reference(model, leaf, labels))
    # without autograd: the objective's gradient w.r.t. the gradients, pulled back to the images by hand
    free, pullback = handwritten.candidate_gradients_and_pullback(model, x, labels)
    free_dx = pullback([w + 0.6 * g for g, w in zip(free, probe, strict=True)])
    for a, b, c in zip(ours, expected, free, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
        assert torch.allclose(c, a, rtol=1e-12, atol=1e-14)  # the same kernels (a GPU's may not be bit-exact)
    assert float(expected_dx.abs().max()) > 0
    assert torch.allclose(ours_dx, expected_dx, rtol=1e-10, atol=1e-12)
    assert free_dx.shape == x.shape
    assert torch.allclose(free_dx, expected_dx, rtol=1e-10, atol=1e-12)


def test_an_objective_of_some_gradients_only():
    """Parameters the objective ignores get no adjoint (None); the images' gradient still matches."""
    model = _odd_sequential().double()
    x = torch.randn(2, 1, 3, 11, 11, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1], [4]])
    ours = torch.autograd.grad(handwritten.candidate_gradients(model, x, labels)[2].pow(2).sum(), x)[0]
    expected = torch.autograd.grad(_reference(model, x, labels)[2].pow(2).sum(), x)[0]
    assert torch.allclose(ours, expected, rtol=1e-10, atol=1e-12)


def test_which_models_qualify():
    frozen = _odd_sequential()
    frozen[2].weight.requires_grad_(False)

    class Custom(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    assert handwritten.supports(build_model("LeNetZhu", seed=0))
    assert handwritten.supports(mlp())
    assert handwritten.supports(build_model("ResNet20", seed=0).eval())
    assert not handwritten.supports(build_model("ResNet20", seed=0).train())  # batch statistics
    assert not handwritten.supports(build_model("ConvNet", seed=0).eval())  # max-pooling
    assert not handwritten.supports(frozen)  # a parameter that is not shared
    assert not handwritten.supports(Custom(nn.Flatten(), nn.Linear(3 * 11 * 11, 2)))  # its own forward
    assert not handwritten.supports(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")))


def test_the_simulator_takes_it_for_hard_labels_only(monkeypatch):
    """Soft labels (DLG's joint label optimisation) keep the autograd path, and both paths agree."""
    model = build_model("LeNetZhu", seed=0).double()
    simulate = engine.gradient_simulator(model)
    x = torch.randn(2, 1, 3, 32, 32, dtype=torch.float64)
    calls = []
    monkeypatch.setattr(handwritten, "candidate_gradients", lambda *a: calls.append(a) or [])
    simulate.per_candidate(x, torch.tensor([[3], [5]]))
    assert len(calls) == 1
    monkeypatch.undo()
    hard = simulate.per_candidate(x, torch.tensor([[3], [5]]))
    soft = simulate.per_candidate(x, F.one_hot(torch.tensor([[3], [5]]), 10).double())
    for a, b in zip(hard, soft, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
