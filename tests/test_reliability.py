"""Crash safety end to end: a CLI attack killed with SIGKILL leaves nothing that looks finished, and rerunning
the same command resumes from its last snapshot and ends with exactly the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from invgrad.io import load_tensors, save_tensors

ROOT = Path(__file__).resolve().parents[1]


def _command(out: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "scripts" / "reconstruct_image.py"),
        "--model",
        "LeNetZhu",
        "--dataset",
        "embedded-CIFAR10",
        "--target_id",
        "2",
        "--max_iterations",
        "400",
        "--tv",
        "1e-2",
        "--save_every",
        "20",
        "--output",
        str(out),
    ]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(ROOT / ".cache" / "torch")}


@pytest.mark.slow
def test_sigkill_leaves_no_finished_file_and_rerun_resumes_identically(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_command(reference), check=True, env=_env(), capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _command(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = killed / ".attack_state.pt"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if state.exists() and load_tensors(state)["groups"][0]["iteration"] >= 60:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the attack finished before it could be killed; raise max_iterations"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists() and not (killed / "reconstruction.png").exists()
    assert not [p for p in killed.iterdir() if p.suffix == ".tmp" and not p.name.startswith(".attack_state")]
    stopped_at = load_tensors(state)["groups"][0]["iteration"]
    assert 0 < stopped_at < 400

    subprocess.run(_command(killed), check=True, env=_env(), capture_output=True, timeout=300)
    assert not state.exists()
    done, ref = (
        json.loads((killed / "metrics.json").read_text()),
        json.loads((reference / "metrics.json").read_text()),
    )
    assert done["experiments"][0]["psnr"] == ref["experiments"][0]["psnr"]
    assert done["experiments"][0]["restart_losses"] == ref["experiments"][0]["restart_losses"]


def test_pickled_code_in_a_checkpoint_never_runs(tmp_path):
    """A checkpoint carrying a pickled payload is refused by weights_only loading; the payload never executes."""
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": Payload()}, evil)
    with pytest.raises(ValueError, match="refused"):
        load_tensors(evil)
    assert not marker.exists()
    result = subprocess.run(
        [
            *_command(tmp_path / "out")[:2],
            "--model",
            "LeNetZhu",
            "--trained_model",
            "--checkpoint",
            str(evil),
            "--output",
            str(tmp_path / "out"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "refused" in result.stderr and not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pt"
    save_tensors({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=str(path)):
        load_tensors(path)


def test_same_seed_is_bit_identical_run_to_run(tmp_path):
    from invgrad import GradientReconstructor, data, make_config, shared_gradient
    from invgrad.victim.models import build_model

    model = build_model("ConvNet8", seed=1).eval()
    images, labels = data.load_targets(data.load_dataset("embedded-CIFAR10"), [5])
    update = shared_gradient(model, images, labels)
    cfg = make_config("ours", max_iterations=10, restarts=2, seed=7)
    first = GradientReconstructor(model, data.mean_std("CIFAR10"), cfg).reconstruct(update, labels)
    second = GradientReconstructor(model, data.mean_std("CIFAR10"), cfg).reconstruct(update, labels)
    assert torch.equal(first[0], second[0]) and first[1]["restart_losses"] == second[1]["restart_losses"]


# ------------------------------------------------------------------------------------------------------------
# Inputs that would run and look valid: refused by the reconstructor before any work
# ------------------------------------------------------------------------------------------------------------
def _attack_inputs():
    from invgrad import data
    from invgrad.victim.models import build_model

    model = build_model("LeNetZhu", seed=0)
    x = torch.rand(1, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([3]))
    update = [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]
    return model, data.mean_std("CIFAR10"), update


@pytest.mark.parametrize("scale, word", [(1e18, "overflows"), (1e-30, "underflows")])
def test_an_update_whose_norm_leaves_float_range_is_refused(scale, word):
    from invgrad import GradientReconstructor

    model, stats, update = _attack_inputs()
    attacker = GradientReconstructor(model, stats, dict(max_iterations=2, seed=0))
    with pytest.raises(ValueError, match=f"update 0: its norm .*{word[:4]}.*rescale the update") as error:
        attacker.reconstruct([g * scale for g in update], torch.tensor([3]), (3, 32, 32))
    assert "\n" not in str(error.value)
    attacker.reconstruct([g * 1e3 for g in update], torch.tensor([3]), (3, 32, 32))  # large but representable


def test_integer_model_weights_are_refused():
    from invgrad import GradientReconstructor

    model, stats, _ = _attack_inputs()
    model[0].weight = torch.nn.Parameter(model[0].weight.detach().mul(100).long(), requires_grad=False)
    with pytest.raises(ValueError, match=r"parameter '0.weight' has dtype torch.int64.*floating-point"):
        GradientReconstructor(model, stats, dict(max_iterations=2))
