"""Decoded splits, held-out evaluation disjoint from attacked images, tensor training, snapshots, user loss scale."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from invgrad import data
from invgrad.attack import GradientReconstructor
from invgrad.attack.engine import snapshot_iterations
from invgrad.config import make_config
from invgrad.data import trainset
from invgrad.user import shared_gradient
from invgrad.victim import training
from invgrad.victim.models import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_table import convergence  # noqa: E402


def test_decode_embedded_images_bit_exact():
    dataset = data.load_dataset("embedded-CIFAR10")
    images, labels = trainset.decode(dataset)
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    assert labels.tolist() == dataset.labels
    first = np.array(Image.open(dataset.files[0]).convert("RGB"))
    assert torch.equal(images[0], torch.from_numpy(first).permute(2, 0, 1))
    two, _ = trainset.decode(dataset, count=2)
    assert torch.equal(two, images[:2])


def test_split_file_round_trips_with_a_content_hash(tmp_path):
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(5)
    meta = trainset.save_split(tmp_path / "s.pt", images, labels, {"source": "x"})
    back, back_labels, back_meta = trainset.load_split(tmp_path / "s.pt")
    assert torch.equal(back, images) and torch.equal(back_labels, labels)
    assert back_meta == meta and len(meta["sha256"]) == 64 and meta["images"] == 5
    other = images.clone()
    other[0, 0, 0, 0] ^= 1
    assert trainset.content_sha256(other, labels) != meta["sha256"]


def test_held_out_excludes_lossy_copies_of_attacked_images(tmp_path):
    """A JPEG copy of an attacked image is recognised by content, however the test split is ordered."""
    targets, _ = trainset.decode(data.load_dataset("embedded-CIFAR10"), count=3)
    generator = torch.Generator().manual_seed(0)
    others = torch.randint(0, 256, (40, 3, 32, 32), generator=generator, dtype=torch.uint8)
    copies = []
    for t in targets:  # quality-75 JPEG copies, as in the image-folder CIFAR-10
        path = tmp_path / "copy.jpg"
        Image.fromarray(t.permute(1, 2, 0).numpy()).save(path, quality=75)
        copies.append(torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1))
    test = torch.cat([others[:10], torch.stack(copies), others[10:]])
    labels = torch.zeros(len(test), dtype=torch.int64)
    chosen, dropped = trainset.held_out(labels, test, 40, targets, seed=0)
    assert dropped == 3 and len(chosen) == 40
    assert not set(range(10, 13)) & set(chosen.tolist())
    everything, none = trainset.held_out(labels, test, 100, None, seed=0)
    assert len(everything) == len(test) and none == 0


def test_augment_crops_and_flips_within_the_padding():
    generator = torch.Generator().manual_seed(0)
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = trainset.augment(batch, generator, padding=2)
    assert out.shape == batch.shape
    for i in range(
        2
    ):  # each output is a shifted (maybe flipped) window: its nonzero values come from the image
        values = set(out[i][out[i] > 0].tolist())
        assert values <= set(batch[i].flatten().tolist())


def test_train_tensors_learns_a_separable_problem():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 2
    images = (
        torch.where(labels.view(-1, 1, 1, 1).bool(), 200, 40).to(torch.uint8).expand(-1, 3, 32, 32).clone()
    )
    images += torch.randint(0, 30, images.shape, generator=generator, dtype=torch.uint8)
    model = build_model("LeNetZhu", num_classes=10, seed=0)
    stats = (torch.full((3,), 0.5), torch.full((3,), 0.25))
    history = training.train_tensors(model, images, labels, stats, 3, 0, "onecycle", 32, log=lambda _: None)
    assert len(history["loss"]) == 3 and history["images_per_epoch"] == 256
    assert training.accuracy_tensors(model, images, labels, stats) > 0.9


def test_tiny_runs_train_with_every_schedule():
    """A handful of batches (as in the DVC and workflow tests) must not break the one-cycle schedule."""
    images = torch.zeros(32, 3, 32, 32, dtype=torch.uint8)
    stats = (torch.zeros(3), torch.ones(3))
    for schedule in training.SCHEDULES:
        for epochs in (1, 2, 3):
            model = build_model("LeNetZhu", num_classes=10, seed=0)
            history = training.train_tensors(
                model,
                images,
                torch.zeros(32, dtype=torch.int64),
                stats,
                epochs,
                0,
                schedule,
                16,
                log=lambda _: None,
            )
            assert len(history["loss"]) == epochs


def test_unknown_schedule_is_refused():
    model = build_model("LeNetZhu", num_classes=10, seed=0)
    images = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    try:
        training.train_tensors(
            model,
            images,
            torch.zeros(8, dtype=torch.int64),
            (torch.zeros(3), torch.ones(3)),
            1,
            schedule="cosine",
            batch_size=4,
        )
    except ValueError as error:
        assert "unknown training schedule 'cosine'" in str(error)
    else:
        raise AssertionError("an unknown schedule must be refused")


def test_snapshots_end_at_the_returned_image(lenet, cifar_samples, cifar_stats):
    images, labels = cifar_samples
    x, y = images[:2], labels[:2]
    config = make_config("ours", max_iterations=16, total_variation=1e-2, seed=0)
    rec = GradientReconstructor(lenet, cifar_stats, config, num_images=1)
    updates = [shared_gradient(lenet, x[i : i + 1], y[i : i + 1]) for i in range(2)]
    keep = snapshot_iterations(16)
    assert keep == [2, 4, 8, 16]
    out, stats = rec.reconstruct_many(updates, [y[i : i + 1] for i in range(2)], snapshots=keep)
    assert sorted(stats["snapshots"]) == keep
    assert torch.equal(stats["snapshots"][16], out)
    assert not torch.equal(stats["snapshots"][2], out)
    plain, _ = rec.reconstruct_many(updates, [y[i : i + 1] for i in range(2)])
    assert torch.equal(plain, out)  # keeping iterates changes nothing


def test_user_loss_scale_scales_the_shared_gradient(lenet, cifar_samples):
    images, labels = cifar_samples
    full = shared_gradient(lenet, images[:1], labels[:1])
    half = shared_gradient(lenet, images[:1], labels[:1], loss_scale=0.5)
    for a, b in zip(full, half, strict=True):
        torch.testing.assert_close(b, 0.5 * a)


def test_convergence_from_snapshots():
    rows = pd.DataFrame(
        {
            "snapshots": [
                json.dumps([[1, 10.0], [2, 15.0], [4, 15.5]]),
                json.dumps([[1, 9.0], [2, 14.0], [4, 14.2]]),
            ]
        }
    )
    settled = convergence(rows, threshold_db=1.0)
    assert settled["converged"] is True and abs(settled["convergence_gain_db"] - 0.35) < 1e-9
    rising = pd.DataFrame({"snapshots": [json.dumps([[1, 5.0], [2, 8.0], [4, 15.0]])]})
    assert convergence(rising, 1.0)["converged"] is False
    failed = pd.DataFrame({"snapshots": [json.dumps([[1, 5.0], [2, 20.0], [4, float("nan")]])]})
    assert convergence(failed, 1.0)["converged"] is True  # a failure counts as 0 dB: no gain, and it shows
    assert convergence(pd.DataFrame({"snapshots": ["[]"]}), 1.0)["converged"] is None
    # A run at twice the budget measures the doubling, not the kept iterates.
    doubled = pd.DataFrame(
        {"snapshots": [json.dumps([[2, 10.0], [4, 20.0]])], "psnr": [20.0], "psnr_2x": [20.5]}
    )
    verdict = convergence(doubled, 1.0)
    assert verdict["converged"] is True and verdict["convergence_basis"] == "2x run"


@pytest.mark.slow
def test_decode_split_script_records_a_missing_source(tmp_path):
    out = tmp_path / "CIFAR10-train.pt"
    spec = {
        "dataset": "CIFAR10",
        "source": f"image-folder:{tmp_path}/none",
        "split": "train",
        "data_root": str(tmp_path / "raw"),
        "download": False,  # never the network in a test
    }
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/decode_split.py"),
            "--spec",
            json.dumps(spec),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    _, _, meta = trainset.load_split(out)
    assert meta["status"] == "not run" and "needs the CIFAR10 training split" in meta["reason"]


def test_a_split_without_a_source_is_retried_not_kept(tmp_path):
    """'not run' splits are removed by retry_unavailable (what the workflow calls at parse); decoded ones stay."""
    from invgrad.data import cache

    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    trainset.save_split(
        tmp_path / "CIFAR10-train.pt", empty, torch.zeros(0, dtype=torch.int64), {"status": "not run"}
    )
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    trainset.save_split(tmp_path / "CIFAR10-test.pt", images, torch.tensor([0, 1]), {"status": "ok"})
    assert cache.read_status(tmp_path / "CIFAR10-test.pt")["sha256"] == trainset.content_sha256(
        images, torch.tensor([0, 1])
    )
    listed = cache.retry_unavailable(tmp_path, dry_run=True)
    assert listed == [tmp_path / "CIFAR10-train.pt"] and listed[0].exists()  # a dry run deletes nothing
    assert cache.retry_unavailable(tmp_path) == listed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CIFAR10-test.json", "CIFAR10-test.pt"]
