import math

import pytest
import torch
from rounding import LOSS_RTOL, rounding_close

from invgrad import GradientReconstructor, make_config, metrics, shared_gradient
from invgrad.attack import engine, resume
from invgrad.attack.engine import EngineResult, gradient_simulator, median_filter3, split_parameters
from invgrad.attack.labels import idlg_label
from invgrad.attack.objectives import OBJECTIVES
from invgrad.victim.models import build_model


def _config(**overrides):
    return make_config("ours", **{"max_iterations": 10, "seed": 3, **overrides})


def test_attacker_simulates_the_users_gradient_exactly(lenet, cifar_samples):
    images, labels = cifar_samples
    user = shared_gradient(lenet, images[:2], labels[:2])
    params, buffers, _ = split_parameters(lenet)
    attacker = gradient_simulator(lenet)(params, buffers, images[:2], labels[:2])
    assert max(float((u - a).abs().max()) for u, a in zip(user, attacker, strict=True)) <= 1e-6


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_vanish_on_the_target_and_grow_away_from_it(name):
    target = [torch.randn(4, 3), torch.randn(5)]
    weights = torch.ones(2)
    same = float(OBJECTIVES[name](target, target, weights))
    other = float(OBJECTIVES[name]([t + torch.randn_like(t) for t in target], target, weights))
    assert same == pytest.approx(0.0, abs=1e-6) and other > 0.01


def test_cosine_objective_is_magnitude_invariant():
    target = [torch.randn(4, 3), torch.randn(5)]
    trial = [torch.randn(4, 3), torch.randn(5)]
    w = torch.ones(2)
    scaled = [10 * t for t in trial]
    assert float(OBJECTIVES["sim"](trial, target, w)) == pytest.approx(
        float(OBJECTIVES["sim"](scaled, target, w))
    )


def test_idlg_recovers_every_label(lenet, cifar_samples):
    images, labels = cifar_samples
    for i in range(10):
        update = shared_gradient(lenet, images[i : i + 1], labels[i : i + 1])
        assert int(idlg_label(update)) == int(labels[i])


def test_labels_none_uses_idlg(lenet, cifar_samples, cifar_stats):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[4:5], labels[4:5])
    _, stats = GradientReconstructor(lenet, cifar_stats, _config(max_iterations=2)).reconstruct(update, None)
    assert stats["labels"].tolist() == [int(labels[4])] and stats["labels_known"] is False


def test_batched_restarts_equal_one_at_a_time(on_device, cifar_stats):
    lenet, images, labels = on_device
    update = shared_gradient(lenet, images[:1], labels[:1])
    attacker = GradientReconstructor(lenet, cifar_stats, _config(restarts=4, max_iterations=25))
    batched, stats_b = attacker.reconstruct_many([update], [labels[:1]])
    single, stats_s = attacker.reconstruct_many([update], [labels[:1]], restart_chunk=1)
    assert stats_b["restart_losses"][0] == pytest.approx(stats_s["restart_losses"][0], rel=1e-4, abs=1e-6)
    assert torch.allclose(batched, single, atol=1e-4)
    assert len(set(stats_b["restart_losses"][0])) == 4  # restarts really start from different points


def test_several_experiments_in_one_call_equal_separate_calls(on_device, cifar_stats):
    """Experiment e of a batched call starts from seed + e, so it must match that experiment run alone."""
    lenet, images, labels = on_device
    updates = [shared_gradient(lenet, images[i : i + 1], labels[i : i + 1]) for i in range(3)]
    together, stats = GradientReconstructor(
        lenet, cifar_stats, _config(restarts=2, max_iterations=15)
    ).reconstruct_many(updates, [labels[i : i + 1] for i in range(3)])
    assert together.shape == (3, 1, 3, 32, 32) and len(stats["chosen"]) == 3
    for i in range(3):
        alone, alone_stats = GradientReconstructor(
            lenet, cifar_stats, _config(restarts=2, max_iterations=15, seed=3 + i)
        ).reconstruct(updates[i], labels[i : i + 1])
        assert alone_stats["restart_losses"] == pytest.approx(
            stats["restart_losses"][i], rel=LOSS_RTOL, abs=1e-6
        )
        # 15 signed steps: on an AVX-512 Xeon one of the three kept only 78 % of its pixels within 1e-4 (sign flips
        # compound); another seed's start agrees nowhere, so half the pixels still tell the seed rule apart
        assert rounding_close(alone, together[i], share=0.5)


def test_non_finite_restart_is_counted_and_never_chosen(lenet, cifar_stats):
    attacker = GradientReconstructor(lenet, cifar_stats, _config(restarts=3))
    candidates = torch.zeros(1, 3, 1, 3, 32, 32)
    candidates[0, 0] = math.nan  # the restart with the lowest loss is broken
    losses = torch.tensor([[0.01, 0.5, 0.2]])
    losses[0, 0] = math.nan
    result = EngineResult(candidates, losses, torch.zeros(1, 3), 0.0, 10)
    images, stats = attacker._select(result)
    assert stats["chosen"] == [2] and stats["failures"] == [1]
    assert torch.isfinite(images).all()


def test_all_restarts_failing_yields_a_nan_image_not_a_fake_one(lenet, cifar_stats):
    attacker = GradientReconstructor(lenet, cifar_stats, _config(restarts=2))
    result = EngineResult(
        torch.full((1, 2, 1, 3, 32, 32), math.nan), torch.full((1, 2), math.nan), torch.zeros(1, 2), 0.0, 10
    )
    images, stats = attacker._select(result)
    assert stats["chosen"] == [None] and stats["failures"] == [2] and torch.isnan(images).all()


def test_box_keeps_images_valid(lenet, cifar_samples, cifar_stats):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    out, _ = GradientReconstructor(lenet, cifar_stats, _config(lr=1.0)).reconstruct(update, labels[:1])
    dm, ds = cifar_stats
    pixels = out * ds + dm
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


@pytest.mark.parametrize("optim", ["sgd", "lbfgs"])
def test_other_optimizers_run_and_reduce_the_loss(lenet, cifar_samples, cifar_stats, optim):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    cfg = _config(
        optim=optim, signed=False, max_iterations=1, restarts=1, lr=1.0 if optim == "lbfgs" else 0.1
    )
    # the loss where the attack starts: one step too small to move (a zero lr is refused as a bad value)
    start = GradientReconstructor(lenet, cifar_stats, {**cfg, "max_iterations": 1, "lr": 1e-12}).reconstruct(
        update, labels[:1]
    )[1]["restart_losses"]
    end = GradientReconstructor(lenet, cifar_stats, {**cfg, "max_iterations": 2}).reconstruct(
        update, labels[:1]
    )[1]["restart_losses"]
    assert sum(end) < sum(start)


def test_median_filter_removes_an_outlier():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 9.0
    assert float(median_filter3(x).abs().max()) == 0.0


def test_median_filter_is_applied_on_schedule(lenet, cifar_samples, cifar_stats, monkeypatch):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    monkeypatch.setattr(engine, "MEDIAN_FILTER_EVERY", 5)
    results = {
        name: GradientReconstructor(lenet, cifar_stats, _config(filter=name, max_iterations=5)).reconstruct(
            update, labels[:1]
        )[0]
        for name in ("none", "median")
    }
    assert torch.allclose(median_filter3(results["none"]), results["median"], atol=1e-6)


def test_short_reconstruction_clearly_beats_noise(on_device, cifar_stats):
    """Untrained LeNetZhu, 4 images at once, 300 signed-Adam steps with TV 1e-2.

    Floor: a random candidate (the attack's own starting point, boxed) scores about 8 dB against these images
    (asserted below); the attack measured 14.8 dB mean over all 20 images at 300 steps (seed 0 model), so we
    require 12 dB for this 4-image subset, and every single image above the noise level.
    """
    lenet, images, labels = on_device
    dm, ds = (t.to(images.device) for t in cifar_stats)
    picks = [0, 1, 8, 9]
    updates = [shared_gradient(lenet, images[i : i + 1], labels[i : i + 1]) for i in picks]
    attacker = GradientReconstructor(lenet, cifar_stats, _config(max_iterations=300, total_variation=1e-2))
    out, stats = attacker.reconstruct_many(updates, [labels[i : i + 1] for i in picks])
    truth = metrics.to_unit_range(images[picks], dm, ds)
    psnr = metrics.psnr_per_image(metrics.to_unit_range(out[:, 0], dm, ds), truth)
    noise = metrics.psnr_per_image(metrics.to_unit_range(torch.randn_like(images[picks]), dm, ds), truth)
    assert float(noise.mean()) < 10.0
    assert float(psnr.mean()) > 12.0, psnr
    assert bool((psnr > noise.max()).all()), (psnr, noise)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda u: u[:-1], "trainable parameters"),
        (lambda u: [u[0].reshape(-1), *u[1:]], "shape"),
        (lambda u: [u[0] * math.nan, *u[1:]], "NaN"),
    ],
)
def test_bad_updates_fail_before_work(lenet, cifar_samples, cifar_stats, mutate, fragment):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    with pytest.raises(ValueError, match=fragment):
        GradientReconstructor(lenet, cifar_stats, _config()).reconstruct(mutate(update), labels[:1])


def test_label_count_must_match_num_images(lenet, cifar_samples, cifar_stats):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:2], labels[:2])
    with pytest.raises(ValueError, match="2 labels for num_images=1"):
        GradientReconstructor(lenet, cifar_stats, _config()).reconstruct(update, labels[:2])
    with pytest.raises(ValueError, match=r"integers in \[0, 10\)"):
        GradientReconstructor(lenet, cifar_stats, _config()).reconstruct(update, [12])
    with pytest.raises(ValueError, match="iDLG"):
        GradientReconstructor(lenet, cifar_stats, _config(), num_images=2).reconstruct(update, None)


def test_image_shape_the_model_cannot_take(lenet, cifar_samples, cifar_stats):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    with pytest.raises(ValueError, match=r"cannot take images of shape \(3, 64, 64\)"):
        GradientReconstructor(lenet, cifar_stats, _config()).reconstruct(
            update, labels[:1], img_shape=(3, 64, 64)
        )


def test_resnet_with_batchnorm_is_attackable(cifar_samples, cifar_stats, device):
    model = build_model("ResNet20", seed=0).eval().to(device)
    images, labels = (t.to(device) for t in cifar_samples)
    update = shared_gradient(model, images[:1], labels[:1])
    out, stats = GradientReconstructor(model, cifar_stats, _config(restarts=2, max_iterations=3)).reconstruct(
        update, labels[:1]
    )
    assert out.shape == (1, 3, 32, 32) and stats["failures"] == 0


def test_interrupted_attack_resumes_bit_identical(lenet, cifar_samples, cifar_stats, tmp_path):
    """A run stopped after 12 of 30 iterations (its state saved every 4) and resumed ends exactly where an
    uninterrupted run ends: images and losses equal to the bit."""
    images, labels = cifar_samples
    updates = [shared_gradient(lenet, images[i : i + 1], labels[i : i + 1]) for i in range(2)]
    label_sets = [labels[i : i + 1] for i in range(2)]
    state = tmp_path / "attack_state.pt"
    full, full_stats = GradientReconstructor(
        lenet, cifar_stats, _config(restarts=2, max_iterations=30)
    ).reconstruct_many(updates, label_sets)

    class Preempted(Exception):
        pass

    def stop_after_12(self, group, iteration, *args, **kwargs):
        original(self, group, iteration, *args, **kwargs)
        if iteration == 12:
            raise Preempted

    original = resume.ResumeState.checkpoint
    attacker = GradientReconstructor(lenet, cifar_stats, _config(restarts=2, max_iterations=30))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resume.ResumeState, "checkpoint", stop_after_12)
        with pytest.raises(Preempted):
            attacker.reconstruct_many(updates, label_sets, state_path=state, save_every=4)
    assert state.exists()
    resumed, resumed_stats = attacker.reconstruct_many(updates, label_sets, state_path=state, save_every=4)
    assert torch.equal(resumed, full)
    assert resumed_stats["restart_losses"] == full_stats["restart_losses"]
    assert not state.exists()  # removed once the attack finished


def test_state_of_another_attack_is_set_aside_and_the_attack_starts_fresh(
    lenet, cifar_samples, cifar_stats, tmp_path, caplog
):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    state = tmp_path / "state.pt"
    resume.ResumeState(state, "some-other-attack", 1).checkpoint(
        resume.GroupKey(0, (0, 1, 0, 1)),
        1,
        [torch.zeros(1)],
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
        None,
    )
    fresh, _ = GradientReconstructor(lenet, cifar_stats, _config()).reconstruct(update, labels[:1])
    with caplog.at_level("WARNING", logger="invgrad.attack.resume"):
        got, _ = GradientReconstructor(lenet, cifar_stats, _config()).reconstruct(
            update, labels[:1], state_path=state
        )
    assert torch.equal(got, fresh)
    assert (tmp_path / "state.pt.stale").exists() and not state.exists()
    assert [r.getMessage() for r in caplog.records if "another attack" in r.getMessage()] != []
    assert len(caplog.records) == 1
