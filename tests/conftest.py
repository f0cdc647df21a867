"""Shared fixtures: small, deterministic victims and targets; torch kept to the machine's 2 cores."""

import pytest
import torch

from invgrad import data
from invgrad.victim.models import build_model

torch.set_num_threads(1)  # small convs: one thread is faster and immune to a busy machine


@pytest.fixture(scope="session")
def cifar_samples():
    """The 20 embedded CIFAR-10 test images (bit-exact) and their labels, normalised."""
    dataset = data.load_dataset("embedded-CIFAR10")
    return data.load_targets(dataset, list(range(20)))


@pytest.fixture(scope="session")
def cifar_stats():
    return data.mean_std("CIFAR10")


@pytest.fixture()
def lenet():
    return build_model("LeNetZhu", num_classes=10, seed=0).eval()
