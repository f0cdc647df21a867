"""The plain benchmark reference (benchmarks/reference.py) must optimise exactly the library's objectives."""

import sys
from pathlib import Path

import torch

from invgrad import shared_gradient
from invgrad.attack.engine import initial_candidates
from invgrad.attack.objectives import cosine_distance, squared_euclidean, total_variation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference  # noqa: E402


def test_reference_objectives_equal_the_library(lenet, cifar_samples):
    images, labels = cifar_samples
    target = shared_gradient(lenet, images[:1], labels[:1])
    trial = shared_gradient(lenet, images[1:2], labels[:1])
    ones = torch.ones(len(target))
    torch.testing.assert_close(reference.cosine_loss(trial, target), cosine_distance(trial, target, ones))
    torch.testing.assert_close(reference.l2_loss(trial, target), squared_euclidean(trial, target, ones))
    torch.testing.assert_close(reference.total_variation(images[:3]), total_variation(images[:3]))
    assert float(reference.cosine_loss(target, target)) < 1e-6 < float(reference.cosine_loss(trial, target))


def test_reference_starts_where_the_engine_starts():
    shape = (2, 1, 3, 4, 4)
    engine_starts = initial_candidates("randn", 3, shape, seed=5)
    for e in range(3):
        assert torch.equal(reference.starting_points(e, 2, 1, (3, 4, 4), seed=5), engine_starts[e])
