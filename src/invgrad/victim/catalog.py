"""Model names :func:`invgrad.victim.models.build_model` accepts, torch-free: the workflow checks a config's models
at parse time without importing torch (tests/test_registry.py keeps this list equal to the model zoo's)."""

from __future__ import annotations

import re

MODEL_NAMES = (
    "LeNetZhu",
    "ConvNet",
    "ConvNet8",
    "ConvNet16",
    "ConvNet32",
    "ConvNet64",
    "MLP",
    "ResNet20",
    "ResNet20-4",
    "ResNet20-10",
    "ResNet32",
    "ResNet32-10",
    "ResNet44",
    "ResNet56",
    "ResNet110",
    "ResNet28-10",
    "ResNet18",
    "ResNet34",
    "torchvision-resnet18",
    "torchvision-resnet152",
    "efficientnet-lite0",
)
RESNET_PATTERN = re.compile(r"ResNet(20|32|44|56|110)-(\d+)")  # CIFAR ResNet of any width multiplier


def is_model_name(name: str) -> bool:
    return name in MODEL_NAMES or RESNET_PATTERN.fullmatch(name) is not None
