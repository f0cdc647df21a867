"""The conservative recipe, checkpoints (weights_only round trip, 'not run' records) and the experiment plan."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from invgrad import data
from invgrad.data import trainset
from invgrad.replication import cells, plan, registry
from invgrad.victim import training
from invgrad.victim.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_milestones_match_the_paper():
    assert training.milestones(120) == [44, 74, 105]


def test_train_improves_loss_and_checkpoint_round_trips(tmp_path):
    images, labels = trainset.decode(data.load_dataset("embedded-CIFAR10"))
    stats = data.mean_std("CIFAR10")
    model = build_model("LeNetZhu", seed=0)
    history = training.train_tensors(model, images, labels, stats, epochs=2, batch_size=8, log=lambda m: None)
    assert len(history["loss"]) == 2 and all(map(lambda v: v == v, history["loss"]))
    path = training.save_checkpoint(
        tmp_path / "v.pt", model, {"status": "ok", "epochs": 2, "architecture": "LeNetZhu"}
    )
    state, meta = training.load_checkpoint(path)
    assert meta["epochs"] == 2 and (tmp_path / "v.json").exists()
    fresh = build_model("LeNetZhu", seed=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh[0].weight, model[0].weight)
    assert 0.0 <= training.accuracy_tensors(model, images, labels, stats) <= 1.0


def test_not_run_checkpoint_marks_trained_cells(tmp_path):
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    spec = copy.deepcopy(plan.plan(config)["table1"]["LeNetZhu_trained_ours"])
    spec["victim"] = str(tmp_path / "victim.pt")
    training.save_checkpoint(
        spec["victim"],
        None,
        {"status": "not run", "reason": "not run: needs the CIFAR10 training split (see README)"},
    )
    records = cells.run_cell(spec, "LeNetZhu_trained_ours", tmp_path / "cell", log=lambda m: None)
    assert [r["status"] for r in records] == ["not run", "not run"]
    assert "training split" in records[0]["reason"]


def test_plan_names_cells_after_their_settings():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cells = plan.validate(config)
    assert "LeNetZhu_untrained_ours/seed0" in cells["table1"]  # the default's Table 1: 3 victim seeds
    assert any(c.startswith("n5_lr0.1_K4_B0") for c in cells["fedavg"])
    assert "LeNetZhu_trained_zhu/seed2" in cells["table1"]
    assert set(cells) == set(registry.names(attacks=True))


def test_unknown_model_is_one_clear_error():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["experiments"]["table1"]["models"] = ["NoSuchNet"]
    with pytest.raises(plan.PlanError, match="unknown model 'NoSuchNet'"):
        plan.validate(config)


def test_quick_and_paper_configs_share_keys():
    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in ("methods", "floors"):
                out |= keys(v, prefix + k + ".")
        return out

    quick, paper, test = (
        yaml.safe_load((ROOT / f"config/{n}.yaml").read_text()) for n in ("config", "paper", "test")
    )
    assert keys(quick) == keys(paper) == keys(test)


@pytest.mark.parametrize("sidecar", ["missing", "empty", "broken"])
def test_a_swapped_checkpoint_without_a_readable_digest_is_refused(tmp_path, sidecar):
    path = tmp_path / "victims/CIFAR10/LeNetZhu_e1.pt"
    training.save_checkpoint(path, build_model("LeNetZhu", seed=0), {"architecture": "LeNetZhu", "epochs": 1})
    training.load_checkpoint(path)  # intact: loads
    other = tmp_path / "other.pt"
    training.save_checkpoint(
        other, build_model("LeNetZhu", seed=1), {"architecture": "LeNetZhu", "epochs": 1}
    )
    path.write_bytes(other.read_bytes())  # swapped weights, a valid checkpoint of its own
    meta = path.with_suffix(".json")
    {"missing": meta.unlink, "empty": lambda: meta.write_text(""), "broken": lambda: meta.write_text("{")}[
        sidecar
    ]()
    with pytest.raises(training.CheckpointMismatchError, match="cannot be verified") as error:
        training.load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and f"snakemake --forcerun {path}" in message and "dvc pull" in message


def test_a_swapped_checkpoint_with_its_sidecar_intact_is_refused(tmp_path):
    path = tmp_path / "v.pt"
    training.save_checkpoint(path, build_model("LeNetZhu", seed=0), {"architecture": "LeNetZhu"})
    other = training.save_checkpoint(
        tmp_path / "o.pt", build_model("LeNetZhu", seed=1), {"architecture": "LeNetZhu"}
    )
    path.write_bytes(other.read_bytes())
    with pytest.raises(training.CheckpointMismatchError, match="corrupted or was replaced"):
        training.load_checkpoint(path)


def _tiny_run(evaluate=None, eval_every=0, epochs=3):
    images, labels = trainset.decode(data.load_dataset("embedded-CIFAR10"))
    stats = data.mean_std("CIFAR10")
    model = build_model("LeNetZhu", seed=0)
    history = training.train_tensors(
        model,
        images,
        labels,
        stats,
        epochs=epochs,
        batch_size=8,
        schedule="onecycle",
        log=lambda m: None,
        evaluate=evaluate,
        eval_every=eval_every,
    )
    return model, history, (images, labels, stats)


def test_per_epoch_evaluation_leaves_the_trained_weights_unchanged():
    plain, plain_history, _ = _tiny_run()
    calls = []

    def evaluate(model):
        calls.append(model.training)
        torch.rand(100)  # a hook that draws from the global RNG must not shift the run's randomness
        return 0.5

    hooked, history, _ = _tiny_run(evaluate, eval_every=1)
    assert calls == [False, False, False]  # evaluated in eval mode, once per epoch
    assert history["loss"] == plain_history["loss"]
    for (name, a), b in zip(plain.state_dict().items(), hooked.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert "accuracy_curve" not in plain_history


def test_accuracy_curve_lists_every_kth_epoch_and_the_last():
    def evaluate(model):
        return training.accuracy_tensors(model, *data_parts)

    images, labels = trainset.decode(data.load_dataset("embedded-CIFAR10"))
    data_parts = (images, labels, data.mean_std("CIFAR10"))
    model, history, _ = _tiny_run(evaluate, eval_every=2, epochs=5)
    curve = history["accuracy_curve"]
    assert [epoch for epoch, _ in curve] == [2, 4, 5]
    assert curve[-1][1] == training.accuracy_tensors(model, *data_parts)
    assert all(0.0 <= acc <= 1.0 for _, acc in curve)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_eval_every_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="eval_every must be a non-negative integer"):
        _tiny_run(lambda m: 0.0, eval_every=bad)
