"""Batched L-BFGS: every element must follow torch.optim.LBFGS run on that element alone."""

import copy
import io

import pytest
import torch

from invgrad import GradientReconstructor, make_config, shared_gradient
from invgrad.attack import engine as engine_module
from invgrad.attack.engine import Engine, gradient_simulator
from invgrad.attack.lbfgs import BatchedLBFGS
from invgrad.attack.objectives import layer_weights


def quadratic(scales):
    """f(x) = ½ Σ scale_i x_i² per element: badly scaled ones need many iterations, round ones few."""
    return lambda x: 0.5 * (scales * x.pow(2)).flatten(-2).sum(-1)


def rosenbrock(x):
    x = x.flatten(-2)
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)


def batched_closure(loss_fn, variables):
    """Per-element losses [B]; grads of their sum are the per-element grads (elements are independent)."""

    def closure():
        inputs = [v.detach().requires_grad_(True) for v in variables]
        loss = loss_fn(*inputs)
        for variable, g in zip(variables, torch.autograd.grad(loss.sum(), inputs), strict=True):
            variable.grad = g
        return loss.detach()

    return closure


def torch_alone(loss_fn, starts, steps, **options):
    """Reference: torch.optim.LBFGS on one element (a batch of one), step() called `steps` times."""
    variables = [s.clone().requires_grad_(True) for s in starts]
    optimizer = torch.optim.LBFGS(variables, **options)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(*variables).sum()
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    state = optimizer.state[variables[0]]
    return [v.detach() for v in variables], state["n_iter"], state["func_evals"]


def batched(loss_fn, starts, steps, **options):
    variables = [s.clone().requires_grad_(True) for s in starts]
    optimizer = BatchedLBFGS(variables, **options)
    closure = batched_closure(loss_fn, variables)
    for _ in range(steps):
        optimizer.step(closure)
    return variables, optimizer


def assert_matches_torch_alone(loss_fn, starts, steps, atol, element_fn=None, **options):
    """element_fn(b): element b's own loss where loss_fn holds per-element data (default: loss_fn itself)."""
    variables, optimizer = batched(loss_fn, starts, steps, **options)
    state = optimizer.state[variables[0]]
    for b in range(starts[0].shape[0]):
        alone_fn = loss_fn if element_fn is None else element_fn(b)
        alone, n_iter, func_evals = torch_alone(alone_fn, [s[b : b + 1] for s in starts], steps, **options)
        for ours, theirs in zip(variables, alone, strict=True):
            torch.testing.assert_close(ours.detach()[b : b + 1], theirs, atol=atol, rtol=0)
        assert (int(state["n_iter"][b]), int(state["func_evals"][b])) == (n_iter, func_evals)
    return variables, optimizer


@pytest.mark.parametrize("history_size", [100, 2])  # 2: full histories wrap, at different slots per element
def test_quadratic_elements_match_torch_and_a_converged_one_stops(history_size):
    scales = torch.tensor([[[1.0, 1.0, 1.0]], [[1.0, 10.0, 100.0]], [[1.0, 1e3, 1e-2]]], dtype=torch.float64)
    starts = [torch.tensor([[[1.0, -2.0, 0.5]], [[1.0, -2.0, 0.5]], [[3.0, 1.0, -1.0]]], dtype=torch.float64)]
    variables, optimizer = assert_matches_torch_alone(
        quadratic(scales),
        starts,
        steps=1,
        atol=1e-12,
        element_fn=lambda b: quadratic(scales[b : b + 1]),
        history_size=history_size,
    )
    state = optimizer.state[variables[0]]
    assert history_size == 100 or len(set(state["head"].tolist())) > 1
    # the round bowl is solved by the first (scaled) steepest-descent pair and stops; the others run on
    assert float(variables[0][0].detach().abs().max()) < 1e-7
    assert int(state["n_iter"][0]) < 5 and int(state["n_iter"][1]) > int(state["n_iter"][0])
    frozen = variables[0][0].detach().clone()
    closure = batched_closure(quadratic(scales), variables)
    before = state["n_iter"].clone()
    optimizer.step(closure)
    assert torch.equal(variables[0][0].detach(), frozen) and state["n_iter"][0] == before[0]
    assert bool((state["n_iter"][1:] >= before[1:]).all())


def test_rosenbrock_elements_match_torch_over_several_steps():
    starts = [torch.randn(4, 1, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)]
    # 3 step() calls of ≤10 iterations: mid-way, where histories and breaks differ per element (fixed steps on
    # Rosenbrock amplify rounding: ≈1e-5 apart after 60 iterations, though every counter still agrees)
    assert_matches_torch_alone(rosenbrock, starts, steps=3, atol=1e-9, max_iter=10)


def test_two_tensors_per_element_and_a_small_history_match_torch():
    """Images and label logits of one element form one L-BFGS problem; history_size 3 exercises the shift."""
    gen = torch.Generator().manual_seed(1)
    starts = [
        torch.randn(3, 2, 4, generator=gen, dtype=torch.float64),
        torch.randn(3, 5, generator=gen).double(),
    ]

    def coupled(x, z):
        return rosenbrock(x) + (torch.softmax(z, -1) - 0.2).pow(2).sum(-1) * x.flatten(1).pow(2).sum(-1)

    assert_matches_torch_alone(coupled, starts, steps=3, atol=1e-9, history_size=3, max_iter=10)


def test_dlg_objective_on_lenet_matches_torch_per_element(on_device, cifar_stats):
    """The engine's own DLG objective (L2 on gradients, joint label logits), E=2 experiments × R=2 restarts."""
    lenet, images, labels = on_device
    model = lenet.double()
    updates = [shared_gradient(model, images[e : e + 1].double(), labels[e : e + 1]) for e in range(2)]
    targets = [torch.stack(per_param) for per_param in zip(*updates, strict=True)]
    weights = torch.stack([layer_weights("def", "equal", u) for u in updates]).double().to(images.device)
    dm, ds = (torch.as_tensor(t).double().reshape(-1, 1, 1).to(images.device) for t in cifar_stats)
    engine = Engine(model, gradient_simulator(model), make_config("zhu", restarts=2), dm, ds)
    gen = torch.Generator().manual_seed(0)
    starts = [torch.randn(2, 2, 1, 3, 32, 32, generator=gen), torch.randn(2, 2, 1, 10, generator=gen)]
    starts = [s.double().to(images.device) for s in starts]

    def objective(e: slice):
        gradients = engine.evaluations.vmapped([t[e] for t in targets], None, weights[e], learn_labels=10)
        return lambda x, z: gradients([x, z])[1]

    variables = [s.clone().requires_grad_(True) for s in starts]
    # 2 step() calls × 10 iterations: the fixed unit steps amplify rounding ≈10× per 5 iterations (1e-10 here)
    optimizer = BatchedLBFGS(variables, lr=1.0, batch_dims=2, max_iter=10)
    closure = batched_closure(objective(slice(0, 2)), variables)
    for _ in range(2):
        optimizer.step(closure)
    n_iter = optimizer.state[variables[0]]["n_iter"].reshape(2, 2)
    for e in range(2):
        for r in range(2):
            one = [s[e : e + 1, r : r + 1] for s in starts]
            alone, iterations, _ = torch_alone(objective(slice(e, e + 1)), one, steps=2, lr=1.0, max_iter=10)
            for ours, theirs in zip(variables, alone, strict=True):
                torch.testing.assert_close(ours.detach()[e : e + 1, r : r + 1], theirs, atol=1e-8, rtol=0)
            assert int(n_iter[e, r]) == iterations


def test_state_dict_round_trip_resumes_identically():
    starts = [torch.randn(3, 1, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)]
    variables, optimizer = batched(rosenbrock, starts, steps=1, history_size=4)
    buffer = io.BytesIO()
    torch.save({"x": variables[0].detach().clone(), "opt": optimizer.state_dict()}, buffer)
    closure = batched_closure(rosenbrock, variables)
    for _ in range(2):
        optimizer.step(closure)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [saved["x"].clone().requires_grad_(True)]
    fresh = BatchedLBFGS(resumed, history_size=4)
    fresh.load_state_dict(saved["opt"])
    closure = batched_closure(rosenbrock, resumed)
    for _ in range(2):
        fresh.step(closure)
    assert torch.equal(resumed[0].detach(), variables[0].detach())


def test_parameters_must_share_the_batch_shape():
    with pytest.raises(ValueError, match="batch shape"):
        BatchedLBFGS([torch.zeros(2, 3, requires_grad=True), torch.zeros(3, 3, requires_grad=True)])


def test_engine_dlg_with_joint_labels_resumes_bit_identical(lenet, cifar_samples, cifar_stats, tmp_path):
    """DLG through the engine (E=2 × R=2 in one batched L-BFGS, labels learned jointly), stopped after 2 of 4
    steps and resumed from the saved optimizer state: equal to the bit to the uninterrupted run."""
    images, labels = cifar_samples
    updates = [shared_gradient(lenet, images[i : i + 1], labels[i : i + 1]) for i in range(2)]
    cfg = make_config("zhu", restarts=2, max_iterations=4, seed=3)
    full, full_stats = GradientReconstructor(lenet, cifar_stats, cfg).reconstruct_many(updates, "joint")

    class Preempted(Exception):
        pass

    original = engine_module.ResumeState.checkpoint

    def stop_after_2(self, group, iteration, *args, **kwargs):
        original(self, group, iteration, *args, **kwargs)
        if iteration == 2:
            raise Preempted

    state = tmp_path / "state.pt"
    attacker = GradientReconstructor(lenet, cifar_stats, cfg)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module.ResumeState, "checkpoint", stop_after_2)
        with pytest.raises(Preempted):
            attacker.reconstruct_many(updates, "joint", state_path=state, save_every=1)
    resumed, resumed_stats = attacker.reconstruct_many(updates, "joint", state_path=state, save_every=1)
    assert torch.equal(resumed, full)
    assert resumed_stats["restart_losses"] == full_stats["restart_losses"]
    losses = torch.tensor(full_stats["restart_losses"])
    assert torch.isfinite(losses).all() and len(set(losses.flatten().tolist())) == 4  # four distinct problems


def test_a_state_saved_without_the_history_products_resumes_identically():
    """States saved before the closed-form two-loop kept only the history: the products are rebuilt on load."""
    starts = [torch.randn(3, 1, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)]
    variables, optimizer = batched(rosenbrock, starts, steps=1, history_size=4)
    saved_x, old_format = variables[0].detach().clone(), copy.deepcopy(optimizer.state_dict())
    for key in ("sy", "yy", "y_dot_d"):
        del old_format["state"][0][key]
    closure = batched_closure(rosenbrock, variables)
    for _ in range(2):
        optimizer.step(closure)
    resumed = [saved_x.requires_grad_(True)]
    fresh = BatchedLBFGS(resumed, history_size=4)
    fresh.load_state_dict(old_format)
    closure = batched_closure(rosenbrock, resumed)
    for _ in range(2):
        fresh.step(closure)
    torch.testing.assert_close(resumed[0].detach(), variables[0].detach(), atol=1e-12, rtol=0)
