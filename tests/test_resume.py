"""A resume state names everything that shapes the result: a state of another attack is set aside (one logged
line) and the attack starts fresh, ending where a clean run of the new attack ends; the same attack resumes."""

import json
import logging

import pytest
import torch

from invgrad import FedAvgReconstructor, GradientReconstructor, make_config, shared_gradient
from invgrad.attack import resume
from invgrad.attack.resume import fingerprint
from invgrad.cli import main
from invgrad.user.defenses import Defense
from invgrad.victim.models import build_model


class Preempted(Exception):
    pass


def _preempt_after(monkeypatch, stop_at: int):
    """Make ResumeState.checkpoint raise once a state at iteration ``stop_at`` is on disk (a SIGKILL there)."""
    original = resume.ResumeState.checkpoint

    def checkpoint(self, group, iteration, *args, **kwargs):
        original(self, group, iteration, *args, **kwargs)
        if iteration == stop_at:
            raise Preempted

    monkeypatch.setattr(resume.ResumeState, "checkpoint", checkpoint)


def _config(**overrides):
    return make_config(
        "ours", **{"max_iterations": 8, "restarts": 2, "seed": 3, "total_variation": 1e-2, **overrides}
    )


def _attack(model, cifar_stats, images, labels, *, config=None, kind="fedsgd", defense=None, loss_scale=1.0):
    """(attacker, update, labels) of one attack; its keywords are the fields the tests change one at a time."""
    update = shared_gradient(model, images, labels, loss_scale=loss_scale)
    config = config or _config()
    if kind == "fedavg":
        attacker = FedAvgReconstructor(model, cifar_stats, 1, 1e-4, config, defense=defense)
    else:
        attacker = GradientReconstructor(model, cifar_stats, config, defense=defense)
    return attacker, update, labels


def _lenet64():
    return build_model("LeNetZhu", seed=0).double()


# field -> (keywords of the first attack, of the second); every other field is the same
FIELDS = {
    "config key (tv)": ({}, {"config": _config(total_variation=2e-2)}),
    "config key (lr)": ({}, {"config": _config(lr=0.05)}),
    "init": ({}, {"config": _config(init="rand")}),
    "seed": ({}, {"config": _config(seed=4)}),
    "threat model kind": ({}, {"kind": "fedavg"}),
    "defense awareness": ({}, {"defense": Defense(prune=0.3)}),
    "defense settings": ({"defense": Defense(prune=0.3)}, {"defense": Defense(prune=0.5)}),
    "user loss scale": ({}, {"loss_scale": 0.5}),
}


@pytest.mark.parametrize("field", list(FIELDS))
def test_a_state_of_another_attack_is_set_aside_and_the_attack_starts_fresh(
    field, lenet, cifar_samples, cifar_stats, tmp_path, monkeypatch, caplog
):
    images, labels = (t[:1] for t in cifar_samples)
    first, second = FIELDS[field]
    state = tmp_path / ".attack_state.pt"
    attacker, update, y = _attack(lenet, cifar_stats, images, labels, **first)
    with monkeypatch.context() as patch:
        _preempt_after(patch, 4)
        with pytest.raises(Preempted):
            attacker.reconstruct(update, y, state_path=state, save_every=2)
    assert state.exists()
    attacker, update, y = _attack(lenet, cifar_stats, images, labels, **second)
    clean, clean_stats = attacker.reconstruct(update, y)
    with caplog.at_level(logging.WARNING, logger="invgrad.attack.resume"):
        got, stats = attacker.reconstruct(update, y, state_path=state, save_every=2)
    assert torch.equal(got, clean) and stats["restart_losses"] == clean_stats["restart_losses"]
    assert (tmp_path / ".attack_state.pt.stale").exists() and not state.exists()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "another attack" in lines[0] and ".attack_state.pt.stale" in lines[0]


def test_an_update_or_labels_of_another_attack_are_not_resumed(
    cifar_samples, cifar_stats, tmp_path, monkeypatch
):
    """The observed update and the labels (known labels: the same update, another label set) are fields too."""
    images, labels = cifar_samples
    model = build_model("LeNetZhu", seed=0)
    state = tmp_path / "state.pt"
    attacker = GradientReconstructor(model, cifar_stats, _config())
    update = shared_gradient(model, images[:1], labels[:1])
    for other_update, other_labels in ((shared_gradient(model, images[1:2], labels[1:2]), labels[:1]),
                                       (update, (labels[:1] + 1) % 10)):  # fmt: skip
        with monkeypatch.context() as patch:
            _preempt_after(patch, 4)
            with pytest.raises(Preempted):
                attacker.reconstruct(update, labels[:1], state_path=state, save_every=2)
        clean, _ = attacker.reconstruct(other_update, other_labels)
        got, _ = attacker.reconstruct(other_update, other_labels, state_path=state, save_every=2)
        assert torch.equal(got, clean) and (tmp_path / "state.pt.stale").exists()


def test_a_state_of_another_dtype_is_not_resumed(cifar_samples, cifar_stats, tmp_path, monkeypatch):
    images, labels = (t[:1] for t in cifar_samples)
    state = tmp_path / "state.pt"
    single = build_model("LeNetZhu", seed=0)
    attacker, update, y = _attack(single, cifar_stats, images, labels)
    with monkeypatch.context() as patch:
        _preempt_after(patch, 4)
        with pytest.raises(Preempted):
            attacker.reconstruct(update, y, state_path=state, save_every=2)
    attacker, update, y = _attack(_lenet64(), cifar_stats, images.double(), labels)
    clean, _ = attacker.reconstruct(update, y)
    got, _ = attacker.reconstruct(update, y, state_path=state, save_every=2)
    assert got.dtype == torch.float64 and torch.equal(got, clean)
    assert (tmp_path / "state.pt.stale").exists()


def test_every_field_enters_the_fingerprint(device):
    """The fingerprint itself, field by field (device and dtype included; the device on a GPU machine)."""
    gen = torch.Generator().manual_seed(0)
    targets, labels = [torch.randn(1, 4, generator=gen)], torch.tensor([[3]])
    starts = [torch.randn(1, 2, 1, 3, 4, 4, generator=gen)]
    cfg, threat = _config(), {"kind": "fedsgd", "defense_aware": False, "defense": None}
    base = fingerprint(cfg, 3, targets, labels, starts, threat)
    assert fingerprint(cfg, 3, targets, labels, starts, dict(threat)) == base  # a pure function
    changed = {
        "config": fingerprint({**cfg, "restarts": 3}, 3, targets, labels, starts, threat),
        "seed": fingerprint(cfg, 4, targets, labels, starts, threat),
        "update": fingerprint(cfg, 3, [targets[0] * 0.5], labels, starts, threat),
        "labels": fingerprint(cfg, 3, targets, labels + 1, starts, threat),
        "init": fingerprint(cfg, 3, targets, labels, [torch.rand_like(starts[0])], threat),
        "threat kind": fingerprint(cfg, 3, targets, labels, starts, {**threat, "kind": "fedavg"}),
        "awareness": fingerprint(cfg, 3, targets, labels, starts, {**threat, "defense_aware": True}),
        "dtype": fingerprint(cfg, 3, [targets[0].double()], labels, [starts[0].double()], threat),
    }
    if device.type != "cpu":
        moved = [starts[0].to(device)]
        changed["device"] = fingerprint(cfg, 3, [targets[0].to(device)], labels.to(device), moved, threat)
    assert all(value != base for value in changed.values()), [k for k, v in changed.items() if v == base]
    assert len(set(changed.values())) == len(changed)


def test_the_simulators_describe_their_threat_model(lenet, cifar_stats):
    plain = GradientReconstructor(lenet, cifar_stats, _config())._simulator().describe()
    aware = GradientReconstructor(lenet, cifar_stats, _config(), defense=Defense(clip=2.0, prune=0.3))
    fedavg = FedAvgReconstructor(lenet, cifar_stats, 2, 1e-3, _config(), batch_size=1)
    assert plain == {"kind": "fedsgd", "defense_aware": False, "defense": None}
    assert aware._simulator().describe() == {
        "kind": "fedsgd",
        "defense_aware": True,
        "defense": {"clip": 2.0, "prune": 0.3},
    }
    assert fedavg._simulator().describe() == {
        "kind": "fedavg",
        "local_steps": 2,
        "local_lr": 1e-3,
        "batch_size": 1,
        "defense_aware": False,
        "defense": None,
    }
    json.dumps(aware._simulator().describe())  # JSON-able: it enters the fingerprint as JSON


def test_a_defense_aware_attack_resumes_bit_identically(
    lenet, cifar_samples, cifar_stats, tmp_path, monkeypatch
):
    images, labels = (t[:1] for t in cifar_samples)
    attacker, update, y = _attack(lenet, cifar_stats, images, labels, defense=Defense(prune=0.3))
    full, full_stats = attacker.reconstruct(update, y)
    state = tmp_path / "state.pt"
    with monkeypatch.context() as patch:
        _preempt_after(patch, 4)
        with pytest.raises(Preempted):
            attacker.reconstruct(update, y, state_path=state, save_every=2)
    resumed, resumed_stats = attacker.reconstruct(update, y, state_path=state, save_every=2)
    assert torch.equal(resumed, full) and resumed_stats["restart_losses"] == full_stats["restart_losses"]
    assert not state.exists() and not (tmp_path / "state.pt.stale").exists()


def test_the_cli_does_not_resume_an_unaware_run_into_an_aware_one(tmp_path, monkeypatch, caplog):
    """The issue's reproduction at a tiny budget: a pruned run killed mid-way, rerun with --defense_aware."""
    out = tmp_path / "x"
    base = ["--model", "LeNetZhu", "--target_id", "2", "--max_iterations", "8", "--tv", "1e-2"]
    base += ["--save_every", "2", "--defense_prune", "0.3", "--output", str(out)]
    with monkeypatch.context() as patch:
        _preempt_after(patch, 4)
        with pytest.raises(Preempted):
            main(base)
    assert (out / ".attack_state.pt").exists()
    with caplog.at_level(logging.WARNING, logger="invgrad.attack.resume"):
        assert main([*base, "--defense_aware"]) == 0
    assert (out / ".attack_state.pt.stale").exists() and not (out / ".attack_state.pt").exists()
    assert ["another attack" in r.getMessage() for r in caplog.records] == [True]
    aware = json.loads((out / "metrics.json").read_text())
    assert aware["defense"]["aware"] is True
    clean = tmp_path / "clean"
    assert main([*base[:-1], str(clean), "--defense_aware"]) == 0
    assert json.loads((clean / "metrics.json").read_text())["psnr_mean"] == aware["psnr_mean"]
