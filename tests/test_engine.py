"""The engine's one-candidate plain-autograd path must compute what the batched torch.func path computes."""

import math

import pytest
import torch
from rounding import LOSS_RTOL, rounding_close

from invgrad import GradientReconstructor, make_config, shared_gradient
from invgrad.attack import engine, evaluation, handwritten, memory, objectives, resume
from invgrad.attack.engine import Engine, gradient_simulator
from invgrad.attack.evaluation import Evaluations, convolution_backend, convolution_macs
from invgrad.attack.fedavg import FedAvgReconstructor
from invgrad.attack.objectives import (
    OBJECTIVES,
    candidate_total_variation,
    prepared_distance,
    total_variation,
)
from invgrad.attack.persample import supports
from invgrad.user import defenses
from invgrad.user.fedavg import local_update
from invgrad.victim.models import build_model


def _engine(model, stats, **overrides):
    cfg = make_config("ours", **{"max_iterations": 5, "seed": 3, "total_variation": 1e-2, **overrides})
    dm, ds = (s.reshape(-1, 1, 1) for s in stats)
    return Engine(model, gradient_simulator(model), cfg, dm, ds)


@pytest.mark.parametrize("name", ["sim", "l2"])
def test_prepared_distance_equals_the_objective(name):
    gen = torch.Generator().manual_seed(0)
    target = [torch.randn(2, 4, 3, generator=gen), torch.randn(2, 5, generator=gen)]
    trial = [torch.randn(2, 3, 4, 3, generator=gen), torch.randn(2, 3, 5, generator=gen)]
    for w in (torch.ones(2, 2), torch.tensor([[0.7, 0.2], [1.0, 0.5]])):
        batched = prepared_distance(name, [t[:, None] for t in target], w[:, None], lead=2)(trial)
        assert batched.shape == (2, 3)
        for e in range(2):
            one = prepared_distance(name, [t[e] for t in target], w[e])
            for r in range(3):
                expected = float(OBJECTIVES[name]([g[e, r] for g in trial], [t[e] for t in target], w[e]))
                assert float(one([g[e, r] for g in trial])) == pytest.approx(expected, rel=1e-5)
                assert float(batched[e, r]) == pytest.approx(expected, rel=1e-5)
    assert prepared_distance("simlocal", target, w) is None  # no prepared form: the engine uses the objective


@pytest.mark.parametrize("name", ["l2"])
def test_prepared_distances_hand_written_gradients_pass_gradcheck(name):
    """The unweighted squared distance's hand-written backward against finite differences (the cosine's
    backward writes over its saved inputs, so it allows one backward per graph: checked against autograd
    in the test below instead)."""
    gen = torch.Generator().manual_seed(1)
    target = [
        torch.randn(2, 4, 3, generator=gen, dtype=torch.float64),
        torch.randn(2, 5, generator=gen).double(),
    ]
    trial = [t[:, None].repeat(1, 3, *[1] * (t.dim() - 1)) + 0.3 for t in target]
    trial = [
        (t + torch.randn(t.shape, generator=gen, dtype=torch.float64)).requires_grad_(True) for t in trial
    ]
    distance = prepared_distance(name, [t[:, None] for t in target], torch.ones(2, 1, 2), lead=2)
    assert torch.autograd.gradcheck(lambda *g: distance(list(g)).sum(), trial)


@pytest.mark.parametrize("cost_fn", ["sim", "l2", "simlocal"])
@pytest.mark.parametrize("weighted", [True, False])
def test_plain_path_gradient_equals_the_batched_one(lenet, cifar_samples, cifar_stats, cost_fn, weighted):
    """Weighted: autograd through the prepared objective; unweighted cosine: its hand-written gradient."""
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    engine = _engine(lenet, cifar_stats, cost_fn=cost_fn)
    targets = [t[None] for t in update]
    weights = (torch.linspace(1, 0.3, len(update)) if weighted else torch.ones(len(update)))[None]
    x = [torch.randn(1, 1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    (batched,), loss_b = engine.evaluations.vmapped(targets, labels[None, :1], weights, None)(x)
    (plain,), loss_p = engine.evaluations.plain(targets, labels[None, :1], weights, None)(x)
    assert plain.shape == batched.shape and loss_p.shape == loss_b.shape == (1, 1)
    assert torch.allclose(plain, batched, rtol=1e-4, atol=1e-4 * batched.abs().max())
    assert float(loss_p) == pytest.approx(float(loss_b), rel=1e-5)


@pytest.mark.parametrize("cost_fn", ["sim", "l2", "simlocal"])
@pytest.mark.parametrize("weighted", [True, False])
def test_one_candidate_runs_graph_free_where_every_gradient_is_written_out(
    cifar_samples, cifar_stats, cost_fn, weighted, device
):
    """Unweighted cosine or squared distance with hard labels on LeNet (Zhu): graph-free, equal to the plain path
    (float64); otherwise the plain path itself."""
    model = build_model("LeNetZhu", seed=0).double().to(device)
    images, labels = (t.to(device) for t in cifar_samples)
    update = shared_gradient(model, images[:1].double(), labels[:1])
    engine = _engine(model, cifar_stats, cost_fn=cost_fn)
    targets = [t[None] for t in update]
    weights = (torch.linspace(1, 0.3, len(update)) if weighted else torch.ones(len(update)))[None].to(device)
    evaluate = engine.evaluations.path(1)(targets, labels[None, :1], weights.double(), None)
    graph_free = cost_fn != "simlocal" and not weighted
    assert (evaluate.traced is not None) is graph_free
    x = [torch.randn(1, 1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)]
    x = [v.to(device) for v in x]
    (ours,), loss = evaluate(x)
    (plain,), loss_p = engine.evaluations.plain(targets, labels[None, :1], weights.double(), None)(x)
    assert ours.shape == plain.shape and loss.shape == loss_p.shape == (1, 1)
    torch.testing.assert_close(ours, plain, rtol=1e-9, atol=1e-12 * float(plain.abs().max()))
    torch.testing.assert_close(loss, loss_p, rtol=1e-12, atol=0)
    values, plain_values = (
        evaluate.values(x),
        engine.evaluations.plain(targets, labels[None, :1], weights, None).values(x),
    )
    for a, b in zip(values, plain_values, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_plain_path_learns_label_logits_like_the_batched_one(lenet, cifar_samples, cifar_stats):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    engine = _engine(lenet, cifar_stats, cost_fn="l2")
    gen = torch.Generator().manual_seed(2)
    x = [torch.randn(1, 1, 1, 3, 32, 32, generator=gen), torch.randn(1, 1, 1, 10, generator=gen)]
    args = ([t[None] for t in update], labels[None, :1], torch.ones(1, len(update)), 10)
    batched, _ = engine.evaluations.vmapped(*args)(x)
    plain, _ = engine.evaluations.plain(*args)(x)
    for a, b in zip(plain, batched, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max())


def test_defended_attack_keeps_the_defense_on_the_plain_path(lenet, cifar_samples, cifar_stats):
    """A clipping-aware attacker simulates the clipped update on the one-candidate path too."""
    images, labels = cifar_samples
    defense = defenses.Defense(clip=0.01)
    attacker = GradientReconstructor(
        lenet, cifar_stats, make_config("ours", max_iterations=2), defense=defense
    )
    simulate = attacker._simulator()
    clipped = simulate.plain(images[:1], labels[:1])
    assert float(torch.sqrt(sum(t.pow(2).sum() for t in clipped))) == pytest.approx(0.01, rel=1e-4)


def test_convolution_backend_is_restored_and_macs_counted(lenet):
    before = torch.backends.mkldnn.enabled
    with convolution_backend(not before):
        assert torch.backends.mkldnn.enabled is (not before)
    assert torch.backends.mkldnn.enabled is before
    # LeNetZhu on one 32×32 image: three convolutions of 12 output channels, 5×5 kernels
    expected = 12 * 16 * 16 * 3 * 25 + 12 * 8 * 8 * 12 * 25 + 12 * 8 * 8 * 12 * 25
    assert convolution_macs(lenet, torch.zeros(1, 3, 32, 32)) == expected


def _grads(engine, path, update_sets, labels, weights, x, learn=None):
    targets = [torch.stack(per) for per in zip(*update_sets, strict=True)]
    return path(engine)(targets, labels, weights, learn)(x)


@pytest.mark.parametrize("cost_fn", ["sim", "l2"])
@pytest.mark.parametrize("weighted", [True, False])
def test_expanded_path_equals_vmap_for_experiments_and_restarts(
    lenet, cifar_samples, cifar_stats, cost_fn, weighted, monkeypatch
):
    """2 experiments × 3 restarts × 2 images: per-candidate gradients from one graph, no vmap; unweighted, the
    cosine's hand-written gradient over per-tensor pieces (no concatenation) too."""
    if not weighted:
        monkeypatch.setattr(objectives, "CONCAT_MAX_ENTRIES", 100)
    images, labels = cifar_samples
    updates = [shared_gradient(lenet, images[i : i + 2], labels[i : i + 2]) for i in (0, 2)]
    engine = _engine(lenet, cifar_stats, cost_fn=cost_fn)
    assert engine.evaluations.path(6) == engine.evaluations.expanded
    ones = torch.ones(len(updates[0]))
    weights = torch.stack([torch.linspace(1, 0.3, len(updates[0])) if weighted else ones, ones])
    x = [torch.randn(2, 3, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    y = torch.stack([labels[0:2], labels[2:4]])
    (batched,), loss_b = _grads(engine, lambda e: e.evaluations.vmapped, updates, y, weights, x)
    (expanded,), loss_x = _grads(engine, lambda e: e.evaluations.expanded, updates, y, weights, x)
    assert loss_x.shape == loss_b.shape == (2, 3)
    assert torch.allclose(loss_x, loss_b, rtol=1e-5)
    assert torch.allclose(expanded, batched, rtol=1e-4, atol=1e-4 * batched.abs().max())


@pytest.mark.parametrize("cost_fn", ["sim", "l2"])
@pytest.mark.parametrize("concat", [True, False])
def test_graph_free_evaluation_equals_the_traced_one(
    cifar_samples, cifar_stats, cost_fn, concat, monkeypatch, device
):
    """Hard labels, an unweighted objective and a written-out model: the expanded path runs with no autograd
    graph (the hand-written pass, objective and TV gradients) and computes what its traced form computes, with
    the objective's pieces concatenated or not (float64)."""
    if not concat:
        monkeypatch.setattr(objectives, "CONCAT_MAX_ENTRIES", 100)
    model = build_model("LeNetZhu", seed=0).double().to(device)
    images, labels = (t.to(device) for t in cifar_samples)
    updates = [shared_gradient(model, images[i : i + 2].double(), labels[i : i + 2]) for i in (0, 2)]
    targets = [torch.stack(per) for per in zip(*updates, strict=True)]
    attack = _engine(model, cifar_stats, cost_fn=cost_fn)
    calls = []
    pullback = handwritten.candidate_gradients_and_pullback
    monkeypatch.setattr(
        handwritten, "candidate_gradients_and_pullback", lambda *a: calls.append(1) or pullback(*a)
    )
    y = torch.stack([labels[0:2], labels[2:4]])
    evaluate = attack.evaluations.expanded(targets, y, torch.ones(2, len(targets)), None)
    x = [torch.randn(2, 3, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)]
    (free,), loss_free = evaluate([v.to(device) for v in x])
    assert calls == [1]
    (traced,), loss_traced = evaluate.probe([v.to(device) for v in x])
    assert calls == [1]
    torch.testing.assert_close(loss_free, loss_traced, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(free, traced, rtol=1e-10, atol=1e-12 * float(traced.abs().max()))


@pytest.mark.parametrize("candidates, onednn", [(2, False), (4, True)])
def test_a_groups_convolution_backend_counts_all_its_candidates(
    lenet, cifar_samples, cifar_stats, candidates, onednn, monkeypatch
):
    """LeNetZhu has 0.69 M multiply-adds per image: 2 candidates stay below ONEDNN_MIN_MACS, 4 go above it."""
    images, labels = cifar_samples
    targets = [t[None] for t in shared_gradient(lenet, images[:1], labels[:1])]
    chosen = []
    monkeypatch.setattr(
        evaluation, "convolution_backend", lambda use: chosen.append(use) or convolution_backend(use)
    )
    evaluate = _engine(lenet, cifar_stats).evaluations.expanded(
        targets, labels[None, :1], torch.ones(1, len(targets)), None
    )
    evaluate([torch.randn(1, candidates, 1, 3, 32, 32)])
    assert chosen == [onednn]


def test_graph_free_evaluation_falls_back_where_it_does_not_apply(
    lenet, cifar_samples, cifar_stats, monkeypatch
):
    """Weighted objectives, learned labels and a model the hand-written pass does not take keep the traced form,
    decided when the evaluation is built: the pullback is never called."""
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    targets = [t[None] for t in update]
    attack = _engine(lenet, cifar_stats)
    weighted, ones = torch.linspace(1, 0.3, len(update))[None], torch.ones(1, len(update))
    assert attack.evaluations.expanded(targets, labels[None, :1], weighted, None).traced is None
    assert attack.evaluations.expanded(targets, labels[None, :1], ones, 10).traced is None
    assert attack.evaluations.expanded(targets, labels[None, :1], ones, None).traced is not None
    monkeypatch.setattr(handwritten, "supports", lambda model: False)
    monkeypatch.setattr(handwritten, "candidate_gradients_and_pullback", lambda *a: pytest.fail("graph-free"))
    attack = _engine(lenet, cifar_stats)  # a fresh simulator: support is decided once per simulator
    evaluate = attack.evaluations.expanded(targets, labels[None, :1], ones, None)
    assert evaluate.traced is None
    x = [torch.randn(1, 2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    (grad,), loss = evaluate(x)
    assert grad.shape == x[0].shape and loss.shape == (1, 2)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0


def test_expanded_path_with_label_logits_and_batchnorm(cifar_samples, cifar_stats):
    model = build_model("ResNet20", num_classes=10, seed=0).eval()
    images, labels = cifar_samples
    update = shared_gradient(model, images[:1], labels[:1])
    engine = _engine(model, cifar_stats, cost_fn="l2")
    assert engine.evaluations.path(2) == engine.evaluations.expanded
    gen = torch.Generator().manual_seed(2)
    x = [torch.randn(1, 2, 1, 3, 32, 32, generator=gen), torch.randn(1, 2, 1, 10, generator=gen)]
    w = torch.ones(1, len(update))
    batched, _ = _grads(engine, lambda e: e.evaluations.vmapped, [update], labels[None, :1], w, x, 10)
    expanded, _ = _grads(engine, lambda e: e.evaluations.expanded, [update], labels[None, :1], w, x, 10)
    for a, b in zip(expanded, batched, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * b.abs().max())


def test_models_with_other_parameters_fall_back_to_vmap(lenet, cifar_stats):
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.scale = lenet, torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.net(x) * self.scale

    assert supports(lenet) and not supports(Scaled())
    for attack in (_engine(Scaled(), cifar_stats), _engine(lenet, cifar_stats, cost_fn="simlocal")):
        assert attack.evaluations.path(4) == attack.evaluations.vmapped


# -- groups that fit the device's memory ----------------------------------------------------------------------
def _spans(groups):
    return [((e.start, e.stop), (r.start, r.stop)) for e, r in groups]


def test_tiles_cover_every_candidate_once_within_the_limit():
    assert _spans(memory.tile(3, 4, None, None)) == [((0, 3), (0, 4))]
    assert _spans(memory.tile(3, 4, None, 8)) == [((0, 2), (0, 4)), ((2, 3), (0, 4))]
    assert _spans(memory.tile(1, 8, None, 3)) == [((0, 1), (0, 3)), ((0, 1), (3, 6)), ((0, 1), (6, 8))]
    assert _spans(memory.tile(2, 4, 2, None)) == [
        ((0, 2), (0, 2)),
        ((0, 2), (2, 4)),
    ]  # restart_chunk as before
    for e, r, chunk, largest in [(5, 3, None, 4), (7, 1, None, 3), (2, 5, 2, 3), (4, 4, 3, 1)]:
        seen = torch.zeros(e, r, dtype=torch.int)
        for es, rs in memory.tile(e, r, chunk, largest):
            assert (es.stop - es.start) * (rs.stop - rs.start) <= largest
            seen[es, rs] += 1
        assert bool((seen == 1).all())


def test_split_halves_experiments_then_restarts():
    assert _spans(memory.split_group(slice(0, 5), slice(0, 2))) == [((0, 2), (0, 2)), ((2, 5), (0, 2))]
    assert _spans(memory.split_group(slice(3, 4), slice(0, 3))) == [((3, 4), (0, 1)), ((3, 4), (1, 3))]
    assert memory.split_group(slice(3, 4), slice(2, 3)) is None


def test_free_memory_comes_from_mem_get_info_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123_456, 10**9))
    assert memory.device_free_memory(torch.device("cuda", 0)) == 123_456
    assert memory.device_free_memory(torch.device("cpu")) is None


def _attack(lenet, cifar_samples, cifar_stats, **kwargs):
    images, labels = cifar_samples
    updates = [shared_gradient(lenet, images[i : i + 1], labels[i : i + 1]) for i in range(3)]
    attacker = GradientReconstructor(
        lenet, cifar_stats, make_config("ours", restarts=2, max_iterations=8, seed=3)
    )
    return attacker.reconstruct_many(updates, [labels[i : i + 1] for i in range(3)], **kwargs)


def _group_sizes(monkeypatch):
    """The candidates in each group the engine builds an evaluation for (the probe's pair included), recorded
    before the group runs, so a group that then fails is counted too."""
    sizes = []
    original = Evaluations.build

    def recording(self, e_slice, r_slice, *args):
        sizes.append((e_slice.stop - e_slice.start) * (r_slice.stop - r_slice.start))
        return original(self, e_slice, r_slice, *args)

    monkeypatch.setattr(Evaluations, "build", recording)
    return sizes


def _largest(monkeypatch):
    """What the memory probe allows per group (its result, so recorded after the call)."""
    allowed = []
    original = memory.largest_group

    def recording(*args):
        allowed.append(original(*args))
        return allowed[-1]

    monkeypatch.setattr(engine, "largest_group", recording)
    return allowed


def test_a_memory_limit_cuts_the_candidates_into_groups_that_fit(
    lenet, cifar_samples, cifar_stats, monkeypatch
):
    whole, stats = _attack(lenet, cifar_samples, cifar_stats)
    sizes, allowed = _group_sizes(monkeypatch), _largest(monkeypatch)
    # LeNetZhu, one 32×32 image: about 65 kB saved by autograd (×3) and 4 copies of 12 kB for Adam
    limit = int(2.5 * 196_000)
    cut, cut_stats = _attack(lenet, cifar_samples, cifar_stats, memory_limit=limit)
    assert len(allowed) == 1 and 1 <= allowed[0] < 6
    assert sizes[0] == 2 and all(s <= allowed[0] for s in sizes[1:]) and sum(sizes[1:]) == 6  # [0]: the probe
    assert rounding_close(cut, whole)
    assert torch.allclose(
        torch.tensor(cut_stats["restart_losses"]), torch.tensor(stats["restart_losses"]), rtol=LOSS_RTOL
    )


def test_the_optimizer_state_counts_against_the_limit(lenet, cifar_samples, cifar_stats, monkeypatch):
    """L-BFGS keeps 100 (s, y) pairs of each candidate: 2.4 MB for one 32×32 image, far above what one
    evaluation saves, so DLG's groups are smaller than signed Adam's under the same limit."""
    images, labels = cifar_samples
    updates = [shared_gradient(lenet, images[i : i + 1], labels[i : i + 1]) for i in range(3)]
    allowed = _largest(monkeypatch)
    for preset in ("ours", "zhu"):
        attacker = GradientReconstructor(
            lenet, cifar_stats, make_config(preset, restarts=2, max_iterations=1, seed=3)
        )
        attacker.reconstruct_many(updates, [labels[i : i + 1] for i in range(3)], memory_limit=20_000_000)
    adam, lbfgs = allowed
    assert 20_000_000 // (2 * 100 * 3 * 32 * 32 * 4) >= lbfgs >= 4 and adam >= 2 * lbfgs  # ≈ equal without it


def test_a_limit_on_a_path_that_cannot_be_measured_runs_one_candidate_at_a_time(
    lenet, cifar_samples, cifar_stats, monkeypatch
):
    """FedAvg's unrolled update on a model with its own forward (which the grouped layout cannot check) goes
    through torch.func, whose transforms refuse saved-tensor hooks: off CUDA the probe cannot measure it, so a
    given limit is kept by running candidates one at a time (same results)."""
    images, labels = cifar_samples

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    model = Wrapped(lenet).eval()
    updates = [local_update(model, images[i : i + 1], labels[i : i + 1], 2, 1e-4) for i in range(2)]
    attacker = FedAvgReconstructor(
        model, cifar_stats, 2, 1e-4, make_config("ours", restarts=2, max_iterations=3, seed=3)
    )
    whole, _ = attacker.reconstruct_many(updates, [labels[i : i + 1] for i in range(2)])
    sizes = _group_sizes(monkeypatch)
    with pytest.warns(UserWarning, match="cannot be measured off CUDA"):
        cut, _ = attacker.reconstruct_many(updates, [labels[i : i + 1] for i in range(2)], memory_limit=10**9)
    assert sizes[1:] == [1, 1, 1, 1]
    assert torch.allclose(cut, whole, atol=1e-4)


def test_a_group_out_of_memory_is_split_and_redone(lenet, cifar_samples, cifar_stats, monkeypatch):
    whole, stats = _attack(lenet, cifar_samples, cifar_stats)
    sizes = _group_sizes(monkeypatch)
    original = Engine._optimise

    def small_device(self, starts, *args, **kwargs):
        if starts[0].shape[0] * starts[0].shape[1] > 2:
            raise torch.OutOfMemoryError("fake: CUDA out of memory")
        return original(self, starts, *args, **kwargs)

    monkeypatch.setattr(Engine, "_optimise", small_device)
    split, split_stats = _attack(lenet, cifar_samples, cifar_stats)
    assert sizes == [
        6,
        2,
        4,
        2,
        2,
    ]  # all 6 fail; halves of 1 and 2 experiments (×2 restarts); the 4 is split again
    assert rounding_close(split, whole)
    assert torch.allclose(
        torch.tensor(split_stats["restart_losses"]), torch.tensor(stats["restart_losses"]), rtol=LOSS_RTOL
    )


def test_free_memory_of_the_device_sizes_the_groups(device):
    """The real query: a CUDA device reports free bytes within its total; the CPU sets no limit."""
    free = memory.device_free_memory(device)
    if device.type == "cuda":
        assert 0 < free <= torch.cuda.get_device_properties(device).total_memory
    else:
        assert free is None


def test_a_group_that_overflows_a_real_cuda_device_is_split(device, cifar_samples, cifar_stats, monkeypatch):
    """No fake error: the device's allocator is capped below what 16 ResNet20 candidates need (yet above what one
    needs: a group of one runs on the plain path, which needs more per candidate), the sizing probe is switched
    off (every candidate in one group), and the attack must still finish by splitting."""
    if device.type != "cuda":
        pytest.skip(
            "needs pytest --device cuda (a CPU never runs out of memory here; the split logic is tested above)"
        )
    model = build_model("ResNet20", seed=0).eval().to(device)
    images, labels = (t[:1].to(device) for t in cifar_samples)
    update = shared_gradient(model, images, labels)
    attacker = GradientReconstructor(
        model, cifar_stats, make_config("ours", restarts=16, max_iterations=3, seed=3)
    )
    monkeypatch.setattr(engine, "device_free_memory", lambda device: None)

    def peak(restarts):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        config = make_config("ours", restarts=restarts, max_iterations=3, seed=3)
        result = GradientReconstructor(model, cifar_stats, config).reconstruct(update, labels)
        return torch.cuda.max_memory_allocated(device) - base, result

    needed_one, _ = peak(1)
    needed, (whole, stats) = peak(16)
    cap = max(needed // 4, 2 * needed_one)
    assert cap < needed, (
        f"16 candidates need {needed} B, one {needed_one} B: no cap in between forces a split"
    )
    sizes = _group_sizes(monkeypatch)
    total = torch.cuda.get_device_properties(device).total_memory
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(index) + cap) / total, index)
    try:
        split, split_stats = attacker.reconstruct(update, labels)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        torch.cuda.empty_cache()
    assert sizes[0] == 16 and len(sizes) > 2 and max(sizes[1:]) < 16, (sizes, needed, needed_one)
    assert split_stats["failures"] == 0 and bool(torch.isfinite(split).all())
    assert split_stats["restart_losses"] == pytest.approx(stats["restart_losses"], rel=1e-3)


def test_one_candidate_that_does_not_fit_fails_with_a_clear_message(
    lenet, cifar_samples, cifar_stats, monkeypatch
):
    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("fake: CUDA out of memory")

    monkeypatch.setattr(Engine, "_optimise", no_memory)
    with pytest.raises(torch.OutOfMemoryError, match="one candidate .* does not fit"):
        _attack(lenet, cifar_samples, cifar_stats)


def test_prepared_distance_per_tensor_equals_the_concatenated_one(monkeypatch):
    """Large models skip the concatenation: the same numbers either way."""
    gen = torch.Generator().manual_seed(4)
    target = [torch.randn(2, 1, 4, 3, generator=gen), torch.randn(2, 1, 5, generator=gen)]
    trial = [torch.randn(2, 3, 4, 3, generator=gen), torch.randn(2, 3, 5, generator=gen)]
    w = torch.tensor([[[0.7, 0.2]], [[1.0, 0.5]]])
    for name in ("sim", "l2"):
        joined = prepared_distance(name, target, w, lead=2)(trial)
        monkeypatch.setattr(objectives, "CONCAT_MAX_ENTRIES", 10)
        split = prepared_distance(name, target, w, lead=2)(trial)
        monkeypatch.setattr(objectives, "CONCAT_MAX_ENTRIES", 1_000_000)
        assert torch.allclose(joined, split, rtol=1e-5)


def test_state_saved_under_another_tiling_is_not_restored_into_the_wrong_group():
    state = resume.ResumeState(None, "key", 1)
    state.groups = {0: {"span": [0, 1, 0, 2], "iteration": 7}}
    x = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([x], lr=0.1)
    assert state.restore(resume.GroupKey(0, (0, 3, 0, 2)), [x], optimizer, None) == (0, {})  # other tiling
    state.groups[0].update(variables=[torch.ones(2)], optimizer=optimizer.state_dict(), scheduler=None)
    assert state.restore(resume.GroupKey(0, (0, 1, 0, 2)), [x], optimizer, None)[0] == 7
    assert torch.equal(x.detach(), torch.ones(2))


@pytest.mark.parametrize("row_dot_min", [1, 10**9])
def test_prepared_cosine_value_and_gradient_equal_autograd(monkeypatch, row_dot_min):
    """The hand-written cosine (BLAS dot per row or vecdot; gradient written over the trial pieces in place)
    against autograd through the plain objective, one target broadcast over 3 restarts and alone (lead 0)."""
    monkeypatch.setattr(objectives, "ROW_DOT_MIN_ENTRIES", row_dot_min)
    gen = torch.Generator().manual_seed(5)
    target = [torch.randn(2, 4, 3, generator=gen), torch.randn(2, 5, generator=gen)]
    trial = [torch.randn(2, 3, 4, 3, generator=gen), torch.randn(2, 3, 5, generator=gen)]
    w = torch.ones(2, 2)

    def through(distance, pieces):
        leaves = [p.clone().requires_grad_(True) for p in pieces]
        value = distance([leaf * 1.0 for leaf in leaves])  # non-leaf trial pieces, as in the engine
        return value.detach(), torch.autograd.grad(value.sum(), leaves)

    batched, grads = through(
        prepared_distance("sim", [t[:, None] for t in target], w[:, None], lead=2), trial
    )
    for e in range(2):
        for r in range(3):
            pieces = [g[e, r] for g in trial]
            expected, expected_grads = through(
                lambda p, e=e: OBJECTIVES["sim"](p, [t[e] for t in target], w[e]), pieces
            )
            alone, alone_grads = through(prepared_distance("sim", [t[e] for t in target], w[e]), pieces)
            assert float(batched[e, r]) == pytest.approx(float(expected), rel=1e-5)
            assert float(alone) == pytest.approx(float(expected), rel=1e-5)
            for g, a, x in zip(grads, alone_grads, expected_grads, strict=True):
                assert torch.allclose(g[e, r], x, rtol=1e-4, atol=1e-6)
                assert torch.allclose(a, x, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "shape", [(2, 3, 2, 3, 5, 6), (2, 3, 4, 5)]
)  # E × R candidates of K images; one candidate
def test_candidate_total_variation_and_its_gradient_equal_autograds(shape):
    """The hand-written TV gradient against autograd's on :func:`total_variation`, per candidate."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    tv = candidate_total_variation(x)
    lead = shape[:-4]
    expected = torch.stack([total_variation(x.reshape(-1, *shape[-4:])[i]) for i in range(math.prod(lead))])
    torch.testing.assert_close(tv.reshape(-1), expected, rtol=1e-12, atol=0)
    probe = torch.randn(lead, generator=gen, dtype=torch.float64)
    (ours,) = torch.autograd.grad((tv * probe).sum(), x)
    (theirs,) = torch.autograd.grad((expected * probe.reshape(-1)).sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
    assert torch.autograd.gradcheck(candidate_total_variation, (x,))


def test_a_bare_functional_simulator_runs_on_the_vmap_path_and_is_named_custom(
    lenet, cifar_samples, cifar_stats
):
    """Any function (params, buffers, x, labels) -> update is a simulator: no faster forms, so torch.func (vmap)
    for many candidates and functional autograd for one; equal to the FedSGD simulator it wraps."""
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    targets, weights = [t[None] for t in update], torch.ones(1, len(update))
    known = gradient_simulator(lenet)
    cfg = make_config("ours", max_iterations=5, seed=3, total_variation=1e-2)
    dm, ds = (s.reshape(-1, 1, 1) for s in cifar_stats)
    bare = Engine(lenet, known.functional, cfg, dm, ds)
    assert bare.simulate.describe() == {"kind": "custom", "defense_aware": False, "defense": None}
    assert bare.evaluations.path(2) == bare.evaluations.vmapped
    x = [torch.randn(1, 1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    (ours,), loss = bare.evaluations.path(1)(targets, labels[None, :1], weights, None)(x)
    (plain,), loss_p = _engine(lenet, cifar_stats).evaluations.plain(
        targets, labels[None, :1], weights, None
    )(x)
    torch.testing.assert_close(loss, loss_p, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))


def test_a_gradient_of_other_strides_steps_the_optimizer_exactly_like_a_contiguous_one(
    lenet, cifar_samples, cifar_stats, monkeypatch
):
    """torch 2.14's fused CPU Adam mis-steps a gradient whose strides differ from the variable's; the engine hands
    it contiguous gradients, so an evaluation returning channels-last ones changes nothing, bit for bit."""
    images, labels = cifar_samples
    updates = [shared_gradient(lenet, images[i : i + 2], labels[i : i + 2]) for i in (0, 2)]
    cfg = make_config("ours", restarts=1, max_iterations=6, seed=3, total_variation=1e-2)
    attacker = GradientReconstructor(lenet, cifar_stats, cfg, num_images=2)
    users = [labels[0:2], labels[2:4]]
    plain, _ = attacker.reconstruct_many(updates, users)
    original = Evaluations.build

    def strided(self, *args, **kwargs):
        evaluation = original(self, *args, **kwargs)

        def gradients(variables):
            grads, loss = evaluation.gradients(variables)
            g = grads[0]  # [E, R, K, C, H, W] laid out channels-last: same values, other strides
            other = g.flatten(0, 2).contiguous(memory_format=torch.channels_last).reshape(g.shape)
            assert other.stride() != g.stride() and torch.equal(other, g)
            return [other, *grads[1:]], loss

        return evaluation.__class__(gradients, evaluation.objective, evaluation.tv_weight, evaluation.traced)

    monkeypatch.setattr(Evaluations, "build", strided)
    again, _ = attacker.reconstruct_many(updates, users)
    assert torch.equal(again, plain)
