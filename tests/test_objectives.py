"""One record per objective: the fast forms equal the reference (float64), and an objective registered in one
place is accepted by the config, listed by the CLI and optimised by the engine."""

import pytest
import torch

from invgrad import GradientReconstructor, make_config, shared_gradient
from invgrad.attack import objective_names, objectives
from invgrad.attack.objectives import (
    OBJECTIVES,
    Objective,
    gradient_distance,
    l1_distance,
    prepared_distance,
    register_objective,
    unregister_objective,
)
from invgrad.cli import build_parser
from invgrad.config import COST_FUNCTIONS, ConfigError


def _problem(seed=0, weighted=False):
    """E=2 targets, E×R=2×3 trials over two tensors (float64), and layer weights [E, 2]."""
    gen = torch.Generator().manual_seed(seed)
    target = [torch.randn(2, 4, 3, generator=gen).double(), torch.randn(2, 5, generator=gen).double()]
    trial = [torch.randn(2, 3, *t.shape[1:], generator=gen).double() for t in target]
    w = torch.tensor([[0.7, 0.2], [1.0, 0.5]]).double() if weighted else torch.ones(2, 2).double()
    return trial, target, w


def _reference(name, trial, target, w, e, r):
    return OBJECTIVES[name].reference([g[e, r] for g in trial], [t[e] for t in target], w[e])


def test_the_registry_names_are_the_configs_and_the_torch_free_lists():
    assert tuple(OBJECTIVES) == objective_names.BUILT_IN == tuple(COST_FUNCTIONS)
    assert all(o.name == name and callable(o.reference) for name, o in OBJECTIVES.items())
    for name, objective in OBJECTIVES.items():  # the reference says it is the readable definition
        assert "reference" in objective.reference.__doc__ and name in objective.reference.__doc__


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", [n for n, o in OBJECTIVES.items() if o.prepared is not None])
def test_prepared_forms_equal_the_reference_value_and_gradient(name, weighted, concat, monkeypatch):
    if not concat:
        monkeypatch.setattr(objectives, "CONCAT_MAX_ENTRIES", 1)
    trial, target, w = _problem(weighted=weighted)
    leaves = [t.clone().requires_grad_(True) for t in trial]
    prepared = prepared_distance(name, [t[:, None] for t in target], w[:, None], lead=2)(leaves)
    prepared_grads = torch.autograd.grad(prepared.sum(), leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in trial]
    ref = torch.stack(
        [torch.stack([_reference(name, ref_leaves, target, w, e, r) for r in range(3)]) for e in range(2)]
    )
    ref_grads = torch.autograd.grad(ref.sum(), ref_leaves)
    torch.testing.assert_close(prepared, ref, rtol=1e-12, atol=1e-14)
    for a, b in zip(prepared_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("name", [n for n, o in OBJECTIVES.items() if o.with_gradient is not None])
def test_written_out_gradients_equal_the_references_autograd(name, concat, monkeypatch):
    if not concat:
        monkeypatch.setattr(objectives, "CONCAT_MAX_ENTRIES", 1)
    trial, target, w = _problem(seed=1)
    written = gradient_distance(name, [t[:, None] for t in target], w[:, None], lead=2)
    value, grads = written([t.clone() for t in trial])
    leaves = [t.clone().requires_grad_(True) for t in trial]
    ref = torch.stack(
        [torch.stack([_reference(name, leaves, target, w, e, r) for r in range(3)]) for e in range(2)]
    )
    torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=1e-14)
    for a, b in zip(grads, torch.autograd.grad(ref.sum(), leaves), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    weighted = _problem(seed=1, weighted=True)[2]
    assert gradient_distance(name, [t[:, None] for t in target], weighted[:, None], lead=2) is None


def scaled_l1(trial, target, w):
    """The reference definition of the toy ``scaled_l1``: twice the ℓ1 distance."""
    return 2 * l1_distance(trial, target, w)


@pytest.fixture
def toy_objective():
    register_objective(Objective("scaled_l1", scaled_l1, doc="twice the l1 distance (a test's toy)"))
    yield OBJECTIVES["scaled_l1"]
    unregister_objective("scaled_l1")


def test_an_objective_registered_in_one_place_is_accepted_listed_and_optimised(
    toy_objective, lenet, cifar_samples, cifar_stats
):
    assert make_config("ours", cost_fn="scaled_l1")["cost_fn"] == "scaled_l1"
    assert "scaled_l1" in build_parser().format_help()
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    config = make_config("ours", cost_fn="scaled_l1", max_iterations=3, restarts=2, seed=1)
    out, stats = GradientReconstructor(lenet, cifar_stats, config).reconstruct(update, labels[:1])
    assert stats["config"]["cost_fn"] == "scaled_l1" and stats["failures"] == 0
    # the engine optimised the toy: its reported loss is the toy's value at the returned images (twice ℓ1's)
    ones = torch.ones(len(update))
    at_result = shared_gradient(lenet, out, labels[:1])
    assert stats["opt"] == pytest.approx(float(scaled_l1(at_result, update, ones)), rel=1e-4)
    assert stats["opt"] != pytest.approx(float(l1_distance(at_result, update, ones)), rel=1e-2)


def test_an_unregistered_objective_is_refused_again():
    register_objective(Objective("scaled_l1", scaled_l1))
    unregister_objective("scaled_l1")
    assert "scaled_l1" not in OBJECTIVES and "scaled_l1" not in COST_FUNCTIONS
    with pytest.raises(ConfigError, match="unknown value 'scaled_l1'"):
        make_config(cost_fn="scaled_l1")
    assert "scaled_l1" not in build_parser().format_help()
    with pytest.raises(ValueError, match="built in"):
        unregister_objective("sim")
    with pytest.raises(ValueError, match="exists already"):
        register_objective(Objective("sim", scaled_l1))
