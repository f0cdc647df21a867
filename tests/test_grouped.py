"""FedAvg's many candidates with their own weights (the grouped layout): the same Δθ and images' gradient as the
functional simulator one candidate at a time, and only for the chains it can reproduce."""

import pytest
import torch
from torch import nn

from invgrad import make_config
from invgrad.attack import grouped
from invgrad.attack.engine import Engine
from invgrad.attack.fedavg import fedavg_simulator
from invgrad.attack.simulator import split_parameters
from invgrad.user.fedavg import local_update
from invgrad.victim.models import build_model


def _candidates(model, n, k, soft=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, k, 3, 32, 32, generator=gen, dtype=torch.float64).requires_grad_(True)
    labels = torch.randint(0, 10, (n, k), generator=gen)
    if soft:
        labels = torch.softmax(torch.randn(n, k, 10, generator=gen, dtype=torch.float64), -1)
    return x, labels


@pytest.mark.parametrize(
    ("name", "steps", "lr", "batch", "soft"),
    [("LeNetZhu", 5, 0.1, 0, False), ("LeNetZhu", 4, 0.5, 2, True), ("ConvNet8", 3, 0.1, 1, False),
     ("MLP", 3, 0.1, 0, False)],
)  # fmt: skip
def test_grouped_updates_equal_the_functional_simulator_per_candidate(name, steps, lr, batch, soft):
    """float64: Δθ of 3 candidates × 2 images, and the images' gradient of an objective of them."""
    model = build_model(name, num_classes=10, seed=1).double().eval()
    simulate = fedavg_simulator(model, steps, lr, batch, grouped_layout=True)
    assert simulate.per_candidate is not None
    x, labels = _candidates(model, 3, 2, soft)
    batched = simulate.per_candidate(x, labels)
    params, buffers, _ = split_parameters(model)
    alone = [simulate.functional(params, buffers, x[i], labels[i]) for i in range(3)]
    for j, t in enumerate(batched):
        reference = torch.stack([a[j] for a in alone])
        assert t.shape == reference.shape
        assert torch.allclose(t, reference, rtol=1e-10, atol=1e-12 * float(reference.abs().max()))
    gen = torch.Generator().manual_seed(5)
    probes = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in batched]
    ours = torch.autograd.grad(sum((t * p).sum() for t, p in zip(batched, probes, strict=True)), x)[0]
    theirs = torch.autograd.grad(
        sum((a[j] * probes[j][i]).sum() for i, a in enumerate(alone) for j in range(len(a))), x
    )[0]
    assert float(ours.abs().max()) > 0
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-11 * float(theirs.abs().max()))


def test_the_users_update_is_what_the_grouped_path_simulates(cifar_samples):
    """The user's own autograd (one user at a time) against the attacker's grouped form at the true images."""
    model = build_model("LeNetZhu", num_classes=10, seed=0).double().eval()
    images, labels = cifar_samples
    x = images[:8].double().reshape(2, 4, 3, 32, 32)
    y = labels[:8].reshape(2, 4)
    batched = fedavg_simulator(model, 5, 0.1, 0, grouped_layout=True).per_candidate(x, y)
    for i in range(2):
        for t, u in zip(batched, local_update(model, x[i], y[i], 5, 0.1), strict=True):
            assert torch.allclose(t[i], u, rtol=1e-9, atol=1e-14)


class _OwnForward(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize(
    "model",
    [
        build_model("ResNet20", num_classes=10, seed=0).eval(),  # a forward of its own (residual sums)
        _OwnForward(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)),
        nn.Sequential(nn.Linear(32, 10), nn.Flatten()),  # a linear layer on image rows, before the flatten
        nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)
        ),  # train BN
        nn.Sequential(
            nn.Conv2d(3, 4, 3, groups=1, padding_mode="circular"), nn.Flatten(), nn.Linear(3600, 10)
        ),
        nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.Softmax(dim=1), nn.Flatten(), nn.Linear(3600, 10)
        ),  # mixes channels
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Flatten(), nn.Linear(3600, 10)),
    ],
    ids=["resnet", "own-forward", "linear-first", "train-batchnorm", "circular", "softmax", "two-flattens"],
)
def test_chains_the_grouped_layout_cannot_reproduce_go_through_vmap(model):
    assert not grouped.supports(model)
    assert fedavg_simulator(model, 2, 0.1, grouped_layout=True).per_candidate is None


def test_the_grouped_layout_is_the_default_where_supported_and_can_be_switched_off():
    model = build_model("LeNetZhu", seed=0).eval()
    assert fedavg_simulator(model, 2, 0.1).per_candidate is not None
    assert fedavg_simulator(model, 2, 0.1, grouped_layout=False).per_candidate is None


def test_the_engine_takes_the_grouped_path_and_it_equals_vmap(cifar_samples, cifar_stats):
    """3 users × 2 restarts of 2 images each: the engine's expanded evaluation (grouped layout) against its
    vmapped one, on the same candidates."""
    model = build_model("LeNetZhu", num_classes=10, seed=0).eval()
    images, labels = cifar_samples
    y = labels[:6].reshape(3, 2)
    updates = [local_update(model, images[2 * i : 2 * i + 2], y[i], 3, 0.1) for i in range(3)]
    cfg = make_config("ours", max_iterations=2, seed=3, total_variation=1e-2)
    dm, ds = (s.reshape(-1, 1, 1) for s in cifar_stats)
    engine = Engine(model, fedavg_simulator(model, 3, 0.1, grouped_layout=True), cfg, dm, ds)
    evaluations = engine.evaluations
    assert evaluations.path(6) == evaluations.expanded
    targets = [torch.stack(per) for per in zip(*updates, strict=True)]
    weights = torch.ones(3, len(updates[0]))
    x = [torch.randn(3, 2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(4))]
    (ours, *_), value = evaluations.expanded(targets, y, weights, None)(x)
    (theirs, *_), reference = evaluations.vmapped(targets, y, weights, None)(x)
    assert torch.allclose(value, reference, rtol=1e-5)
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4 * float(theirs.abs().max()))
