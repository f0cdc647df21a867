"""Many candidates, each with its OWN weights, through one plain autograd graph: the grouped layout.

FedAvg's unrolled local steps give every candidate its own trajectory θ_0 → θ_1(x) → … → θ_n(x), so after the
first step the candidates no longer share weights and :mod:`invgrad.attack.persample`'s shared-weight rules stop
applying. Here the N candidates' weights are stacked and their activations laid out as channel groups
([K, N·C, H, W], the layout of :func:`invgrad.attack.persample.grouped`): a convolution becomes one convolution
with N groups, a linear layer one batched matrix product, an eval-mode BatchNorm one call with its statistics
repeated N times. Element-wise activations, pooling and ``Flatten`` act per channel and need no change.

That only holds for a fixed chain of such layers, so :func:`supports` accepts an ``nn.Sequential`` of the layer
types below and nothing else (a ResNet's own ``forward`` cannot be checked); the FedAvg attack then evaluates
those models through this path and every other model through ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .evaluation import convolution_backend
from .persample import _GroupedWeightGradient, batchnorm_supported, conv_supported

# Layers without parameters that act on each channel (or each feature) alone: the grouped layout passes through.
CHANNEL_LOCAL = (
    nn.Sigmoid, nn.ReLU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
)  # fmt: skip


def _flattens_all(m: nn.Module) -> bool:
    return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a chain the grouped layout reproduces exactly: an ``nn.Sequential`` of convolutions
    (ungrouped, zero padding), eval-mode BatchNorm, channel-local layers, one full ``Flatten`` and then linear
    layers (a linear layer must see flat features)."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return False
    flat = False
    for m in model.children():
        if isinstance(m, nn.Conv2d) and not flat:
            ok = conv_supported(m)
        elif isinstance(m, nn.BatchNorm2d) and not flat:
            ok = batchnorm_supported(m)
        elif isinstance(m, nn.Linear):
            ok = flat
        elif _flattens_all(m):
            ok, flat = not flat, True
        else:
            ok = isinstance(m, CHANNEL_LOCAL) or (isinstance(m, nn.Dropout) and not m.training)
        if not ok:
            return False
    return flat


def _layout(t: torch.Tensor) -> torch.memory_format:
    """channels_last for image-shaped activations (measured faster for the grouped convolutions of LeNet (Zhu)'s
    layers, 12 candidates of one image each)."""
    return torch.channels_last if t.dim() == 4 else torch.contiguous_format


def to_groups(x: torch.Tensor) -> torch.Tensor:
    """Candidates' images [N, K, C, H, W] -> the grouped layout [K, N·C, H, W]."""
    n, k = x.shape[:2]
    h = x.transpose(0, 1).reshape(k, n * x.shape[2], *x.shape[3:])
    return h.contiguous(memory_format=_layout(h))


class _Weights:
    """The candidates' weights of one step, by layer: stacked trainable ones ([N, *shape], flattened to the
    grouped layout's [N·out, ...]) and the frozen parameters and buffers, repeated N times."""

    def __init__(self, stacked: Mapping[str, torch.Tensor], fixed: Mapping[str, torch.Tensor], n: int):
        self.stacked, self.fixed, self.n = stacked, fixed, n
        self.cache: dict[str, torch.Tensor | None] = {}

    def __call__(self, layer: str, name: str) -> torch.Tensor | None:
        key = f"{layer}.{name}"
        if key not in self.cache:
            self.cache[key] = self._flat(key)
        return self.cache[key]

    def _flat(self, key: str) -> torch.Tensor | None:
        if key in self.stacked:
            t = self.stacked[key].reshape(-1, *self.stacked[key].shape[2:])
        else:
            t = self.fixed.get(key)
            t = None if t is None else t.repeat(self.n, *([1] * (t.dim() - 1)))  # once per step, not per use
        return t


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, m: nn.Linear, n: int) -> torch.Tensor:
    k = h.shape[0]
    w = w.reshape(n, m.out_features, m.in_features)
    out = torch.bmm(h.reshape(k, n, m.in_features).transpose(0, 1), w.transpose(1, 2))  # [N, K, O]
    if b is not None:
        out = out + b.reshape(n, 1, m.out_features)
    return out.transpose(0, 1).reshape(k, n * m.out_features)


def _layer(m: nn.Module, h: torch.Tensor, get: _Weights, layer: str) -> torch.Tensor:
    """One layer of the chain in the grouped layout."""
    n = get.n
    if isinstance(m, nn.Conv2d):
        return F.conv2d(h, get(layer, "weight"), get(layer, "bias"), m.stride, m.padding, m.dilation, n)
    if isinstance(m, nn.BatchNorm2d):
        mean, var = get(layer, "running_mean"), get(layer, "running_var")
        return F.batch_norm(h, mean, var, get(layer, "weight"), get(layer, "bias"), False, 0.0, m.eps)
    if isinstance(m, nn.Linear):
        return _linear(h, get(layer, "weight"), get(layer, "bias"), m, n)
    return m(h)


def forward(
    model: nn.Sequential,
    weights: Mapping[str, torch.Tensor],
    fixed: Mapping[str, torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """Logits [N, K, classes] of N candidates' images ``x`` [N, K, C, H, W], candidate i under its own weights
    ``weights[name][i]`` (trainable parameters, stacked); ``fixed`` holds frozen parameters and buffers."""
    get = _Weights(weights, fixed, x.shape[0])
    h = to_groups(x)
    for layer, m in model.named_children():
        h = _layer(m, h, get, layer)
    return h.reshape(h.shape[0], get.n, -1).transpose(0, 1)


def _conv_input_gradient(d: torch.Tensor, w: torch.Tensor, m: nn.Conv2d, size, n: int) -> torch.Tensor:
    """The signal at a grouped convolution's input: a transposed convolution of the candidates' own weights,
    differentiable w.r.t. both (the weights move with the images after the first local step)."""
    extra = [
        s - ((o - 1) * st - 2 * p + dl * (kk - 1) + 1)
        for s, o, st, p, dl, kk in zip(
            size, d.shape[-2:], m.stride, m.padding, m.dilation, m.kernel_size, strict=True
        )
    ]
    return F.conv_transpose2d(d, w, None, m.stride, m.padding, extra, n, m.dilation)


def _weight_gradients(model, get: _Weights, x, labels) -> dict[str, torch.Tensor]:
    """Each candidate's ∇θ of its mean cross-entropy, stacked [N, *p.shape], by parameter name: the forward in
    the grouped layout, then the backward written out as ordinary differentiable operations (autograd's own
    double backward of a grouped convolution ran one convolution per group)."""
    n, k = x.shape[:2]
    h = to_groups(x)
    seen = []
    for layer, m in model.named_children():
        out = _layer(m, h, get, layer)
        seen.append((layer, m, h, out))
        h = out
    logits = h.reshape(k, n, -1)
    target = labels.transpose(0, 1)
    if not target.is_floating_point():
        target = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    d = ((torch.softmax(logits, dim=-1) - target) / k).reshape(k, -1)  # ∂(Σ_i mean_k CE)/∂logits
    grads: dict[str, torch.Tensor] = {}
    for index in range(len(seen) - 1, -1, -1):
        layer, m, a, out = seen[index]
        first = index == 0
        if isinstance(m, nn.Linear):
            dn = d.reshape(k, n, m.out_features).transpose(0, 1)
            an = a.reshape(k, n, m.in_features).transpose(0, 1)
            grads[f"{layer}.weight"] = torch.bmm(dn.transpose(1, 2), an)
            grads[f"{layer}.bias"] = dn.sum(1)
            w = get(layer, "weight").reshape(n, m.out_features, m.in_features)
            d = None if first else torch.bmm(dn, w).transpose(0, 1).reshape(a.shape)
        elif isinstance(m, nn.Conv2d):
            geometry = (tuple(m.stride), tuple(m.padding), tuple(m.dilation))
            weight = _GroupedWeightGradient.apply(d, a, tuple(m.weight.shape), geometry, n)
            grads[f"{layer}.weight"] = weight.reshape(n, *m.weight.shape)
            grads[f"{layer}.bias"] = d.reshape(k, n, m.out_channels, -1).sum((0, 3))
            d = None if first else _conv_input_gradient(d, get(layer, "weight"), m, a.shape[-2:], n)
        elif isinstance(m, nn.BatchNorm2d):
            inverse_std = torch.rsqrt(get(layer, "running_var") + m.eps)
            centred = (a - get(layer, "running_mean")[:, None, None]) * inverse_std[:, None, None]
            grads[f"{layer}.weight"] = (d * centred).reshape(k, n, m.num_features, -1).sum((0, 3))
            grads[f"{layer}.bias"] = d.reshape(k, n, m.num_features, -1).sum((0, 3))
            gamma = get(layer, "weight")
            scale = inverse_std if gamma is None else gamma * inverse_std
            d = d * scale[:, None, None]
        elif isinstance(m, nn.Sigmoid):
            d = d * out * (1 - out)
        elif isinstance(m, nn.Flatten):
            d = d.reshape(a.shape).contiguous(memory_format=_layout(a))
        else:
            d = torch.autograd.grad(out, a, d, create_graph=True)[0]
    return grads


def unrolled_updates(
    model: nn.Sequential,
    x: torch.Tensor,
    labels: torch.Tensor,
    slices: Sequence[slice],
    local_lr: float,
    first_step: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]],
) -> list[torch.Tensor]:
    """Each candidate's Δθ = θ_n − θ_0 [N, *p.shape] after one local step per slice of its K images, from the
    model's weights, differentiable w.r.t. ``x`` [N, K, C, H, W] (``labels`` [N, K] or [N, K, classes]).

    The first step starts every candidate from the same θ_0, so ``first_step(x, labels)`` (the FedSGD
    simulator's per-candidate gradients, stacked in ``model.parameters()`` order) computes it with the weights
    shared; the later steps run in the grouped layout. The loss is the mean cross-entropy of
    :func:`invgrad.user.loss.training_loss`, its gradient at the logits written out (softmax − target)."""
    # ATen's convolutions, not oneDNN's (the backward kernels follow the forward's): near the optimum, at a FedAvg
    # user's true images (LeNet (Zhu), 3 users × 4 images, 5 steps, τ = 0.1), oneDNN's grouped convolutions gave
    # the images' gradient 6.1 % off float64 (ATen 1.4 %, vmap 1.8 %); ATen costs this path about 15 %
    with convolution_backend(False):
        return _unrolled(model, x, labels, slices, local_lr, first_step)


def _unrolled(model, x, labels, slices, local_lr, first_step) -> list[torch.Tensor]:
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    fixed.update({name: b.detach() for name, b in model.named_buffers()})
    names = [name for name, _ in trainable]
    start = [p.detach() for _, p in trainable]
    steps = first_step(x[:, slices[0]], labels[:, slices[0]])
    current = [s - local_lr * g for s, g in zip(start, steps, strict=True)]
    for part in slices[1:]:
        weights = _Weights(dict(zip(names, current, strict=True)), fixed, x.shape[0])
        grads = _weight_gradients(model, weights, x[:, part], labels[:, part])
        current = [c - local_lr * grads[name] for c, name in zip(current, names, strict=True)]
    return [c - s for c, s in zip(current, start, strict=True)]
