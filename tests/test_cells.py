"""The one cell path (``invgrad.replication.cells``) that the CLI and the pipeline share: batching users changes no
user's start or defense noise; a user attacked alone agrees with its batched self at these short budgets (rounding
grows over long ones: a cell's one-image rerun reruns the whole batch); one definition of a failed attack."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from invgrad import metrics
from invgrad.cli import main
from invgrad.config import make_config
from invgrad.io import save_tensors
from invgrad.replication import cells, plan
from invgrad.victim.models import build_model

ROOT = Path(__file__).resolve().parents[1]
DEFENDED = cells.Threat(defense={"clip": 1.0, "noise": 0.05, "prune": 0.5}, labels="known")


def _users(cifar_samples, count, per_user=1):
    images, labels = cifar_samples
    return (
        [images[e * per_user : (e + 1) * per_user] for e in range(count)],
        [labels[e * per_user : (e + 1) * per_user] for e in range(count)],
    )


def _run(model, stats, truths, labels, threat, first_user, **cfg):
    config = make_config("ours", max_iterations=6, restarts=2, seed=5, total_variation=1e-2, **cfg)
    return cells.run_users(model, stats, truths, labels, threat, config, seed=11, first_user=first_user)


@pytest.mark.parametrize(
    ("threat", "exact"),
    [
        (DEFENDED, True),
        (
            cells.Threat(local_steps=2, local_lr=1e-2, defense={"clip": 1.0, "noise": 0.05}, labels="idlg"),
            False,
        ),
    ],
    ids=["fedsgd-defended", "fedavg-noised-idlg"],
)
def test_batching_users_never_changes_a_users_result(lenet, cifar_samples, cifar_stats, threat, exact):
    """Same user, seeds and noise alone or in a batch. Through vmap (a defense-aware attacker) the images are
    bit-identical; FedAvg on LeNet (Zhu) runs the grouped layout, a group per candidate, so a batch of another size
    takes other kernels and agrees to float rounding only (docs/DESIGN.md: a one-image rerun reruns the batch)."""
    truths, labels = _users(cifar_samples, 3)
    together, _ = _run(lenet, cifar_stats, truths, labels, threat, first_user=0)
    for e in range(3):
        (alone,), _ = _run(lenet, cifar_stats, truths[e : e + 1], labels[e : e + 1], threat, first_user=e)
        same = ["labels_used", "attack_seed", "defense", "privacy", "chosen_restart"]
        if exact:
            assert torch.equal(alone.reconstruction, together[e].reconstruction)
            same += ["psnr", "ssim", "fmse"]
        else:
            assert torch.allclose(alone.reconstruction, together[e].reconstruction, atol=1e-3)
            assert alone.record["psnr"] == pytest.approx(together[e].record["psnr"], abs=0.01)
        assert {k: alone.record[k] for k in same} == {k: together[e].record[k] for k in same}
        # the reported FedAvg losses are reduced in a batch, equal to float rounding
        losses = together[e].record["restart_losses"]
        assert alone.record["restart_losses"] == pytest.approx(losses, rel=1e-4 if not exact else 1e-6, abs=0)
        assert alone.record["defense"]["seed"] == 11 + e and alone.record["attack_seed"] == 5 + e
    assert together[0].record["restart_losses"] != together[1].record["restart_losses"]


def test_each_user_draws_its_own_noise(lenet, cifar_samples):
    """Two users with the same images still get different noise (seed + e), and a user's noise is its alone."""
    images, labels = cifar_samples
    truths, targets = [images[:1], images[:1]], [labels[:1], labels[:1]]
    updates, facts = cells.share_updates(lenet, truths, targets, DEFENDED, seed=3)
    assert not torch.equal(updates[0][0], updates[1][0])
    (second,), _ = cells.share_updates(lenet, truths[:1], targets[:1], DEFENDED, seed=3, first_user=1)
    assert all(torch.equal(a, b) for a, b in zip(second, updates[1], strict=True))
    assert [f["defense"]["seed"] for f in facts] == [3, 4] and facts[0]["privacy"]["epsilon"] > 0


def test_cli_user_e_of_a_batch_is_the_same_user_attacked_alone(tmp_path):
    """--num_exp 3: user 2's numbers equal a run of that image alone with seed + 2, noise and pruning on."""
    checkpoint = tmp_path / "lenet.pt"
    save_tensors(build_model("LeNetZhu", seed=0).state_dict(), checkpoint)
    common = [
        "--model",
        "LeNetZhu",
        "--checkpoint",
        str(checkpoint),
        "--max_iterations",
        "4",
        "--restarts",
        "2",
    ]
    common += ["--defense_clip", "1", "--defense_noise", "0.05", "--defense_prune", "0.5", "--tv", "1e-2"]
    assert main([*common, "--num_exp", "3", "--seed", "4", "--output", str(tmp_path / "batch")]) == 0
    assert main([*common, "--target_id", "2", "--seed", "6", "--output", str(tmp_path / "alone")]) == 0
    batch = json.loads((tmp_path / "batch" / "metrics.json").read_text())["experiments"]
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())["experiments"][0]
    assert batch[2]["indices"] == alone["indices"] == [2]
    for key in ("labels_used", "failed"):
        assert batch[2][key] == alone[key], key
    # the same user, noise and start; at 4 iterations the batched and single evaluations still agree to rounding
    # (thousands of iterations grow it: see test_a_one_image_rerun_reproduces_the_batched_result_at_a_real_budget)
    for key in ("psnr", "ssim", "restart_losses", "fmse"):
        assert batch[2][key] == pytest.approx(alone[key], rel=1e-4), key
    assert batch[0]["restart_losses"] != batch[2]["restart_losses"]


def test_a_cell_rerun_for_one_target_keeps_its_seeds(tmp_path):
    """``run_cell(only=[...])`` reproduces that user's record from the full run, defense noise included, and
    rewrites no other record."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    spec = copy.deepcopy(plan.plan(config)["defenses"]["noise-0.01"])
    spec["attack"]["max_iterations"] = 4
    spec["selection"] = {**spec["selection"], "users": 2, "names": ["0", "1"]}
    full = cells.run_cell(spec, "noise-0.01", tmp_path, log=lambda _: None)
    rerun = cells.run_cell(spec, "noise-0.01", tmp_path, only=["1"], log=lambda _: None)
    keys = ("psnr", "restart_losses", "defense", "privacy", "attack_seed", "double_budget_run", "snapshots")
    assert [r["target"] for r in rerun] == ["1"]
    assert {k: rerun[0][k] for k in keys} == {k: full[1][k] for k in keys}
    assert full[1]["defense"]["seed"] == spec["seed"] + 1 and full[1]["status"] == "ok"


@pytest.mark.slow
def test_a_one_image_rerun_reproduces_the_batched_result_at_a_real_budget(tmp_path):
    """1,600 iterations, where a user attacked in a batch of another size lands elsewhere (rounding grows over
    the iterations): ``only`` reruns the whole batch, so it reproduces the batched record bit for bit."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    spec = copy.deepcopy(plan.plan(config)["table1"]["LeNetZhu_untrained_ours"])
    spec["attack"].update(max_iterations=1600, restarts=1, lr_decay=False)  # 2 images, one candidate each
    assert spec["model"] == "LeNetZhu" and spec["selection"]["names"] == ["0", "1"]
    full = cells.run_cell(spec, "cell", tmp_path, log=lambda _: None)
    (rerun,) = cells.run_cell(spec, "cell", tmp_path, only=["1"], log=lambda _: None)
    keys = ("psnr", "ssim", "restart_losses", "rec_loss", "fmse", "snapshots")
    assert {k: rerun[k] for k in keys} == {k: full[1][k] for k in keys}


def test_failed_means_no_finite_reconstruction(lenet, cifar_samples, cifar_stats):
    """One definition: failed ⇔ the reconstruction is not finite ⇔ its PSNR is NaN; a pixel-wise consensus of
    finite restarts (no restart "chosen") is not a failure."""
    assert metrics.attack_failed(torch.full((1, 3, 4, 4), math.nan))
    assert not metrics.attack_failed(torch.zeros(1, 3, 4, 4))
    truths, labels = _users(cifar_samples, 1)
    (consensus,), _ = _run(lenet, cifar_stats, truths, labels, cells.Threat(), 0, scoring_choice="pixelmean")
    assert consensus.record["chosen_restart"] is None and consensus.record["failed"] is False
    (diverged,), _ = _run(lenet, cifar_stats, truths, labels, cells.Threat(), 0, lr=1e30)
    assert diverged.record["failed"] == math.isnan(diverged.record["psnr_mean"])
    assert diverged.record["failed"] == (diverged.record["failed_restarts"] == 2)
