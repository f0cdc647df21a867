"""Shared fixtures: small, deterministic victims and targets; torch kept to the machine's 2 cores."""

import pytest
import torch

from invgrad import data
from invgrad.devices import checked_device
from invgrad.victim.models import build_model

torch.set_num_threads(1)  # small convs: one thread is faster and immune to a busy machine


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device of the tests that take the `device` fixture: cpu (default), cuda, cuda:1, ...",
    )


def pytest_configure(config):
    try:
        device = checked_device(config.getoption("--device"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    if device.type == "cuda":
        # the tests compare float32 arithmetic at float32 tolerances; cuDNN's default TF32 convolutions keep
        # 10 mantissa bits (≈1e-3 relative), which is a precision setting, not what these tests check
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def pytest_collection_modifyitems(config, items):
    """``--device cuda`` runs the device-aware tests only (those taking ``device``): the rest would only repeat
    the CPU run, on a GPU machine's scarce time."""
    if torch.device(config.getoption("--device")).type == "cpu":
        return
    aware = ["device" in getattr(item, "fixturenames", ()) for item in items]
    config.hook.pytest_deselected(items=[item for item, keep in zip(items, aware, strict=True) if not keep])
    items[:] = [item for item, keep in zip(items, aware, strict=True) if keep]


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """Where the device-aware tests run (``pytest --device cuda``); the CPU by default, as in CI."""
    return torch.device(request.config.getoption("--device"))


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


@pytest.fixture()
def on_device(device, cifar_samples):
    """The untrained LeNetZhu and the 20 embedded images on ``device``: (model, images, labels)."""
    images, labels = cifar_samples
    model = build_model("LeNetZhu", num_classes=10, seed=0).eval().to(device)
    return model, images.to(device), labels.to(device)
