"""Per-candidate parameter gradients of many candidates from ONE plain autograd graph (no vmap).

Candidates are independent (eval mode: BatchNorm uses running statistics), so the gradient of the summed loss
w.r.t. each layer's *output* is, row by row, each candidate's own backpropagated signal δ. A layer's weight
gradient is a contraction of δ with the layer's input (for a convolution, a convolution with one group per
candidate), so summing that contraction over a candidate's images only gives every candidate its own ∇θ — exactly the quantity
``torch.func.vmap(grad(...))`` computes, at a fraction of the cost on a CPU, and differentiable w.r.t. the
images once more (the engine differentiates the objective of these gradients w.r.t. the images).

Supported: models whose trainable parameters all sit in ``nn.Conv2d`` (``groups=1``, zero padding),
``nn.Linear`` and ``nn.BatchNorm2d`` (eval, with running statistics); everything else is parameter-free.
:func:`supports` says whether a model qualifies; the engine falls back to ``vmap`` otherwise.

While the graph is built, convolutions and BatchNorm layers run with hand-written backward functions
(``SIGNAL_FORWARDS``: same forward, a backward made of ordinary differentiable ops of the detached weights), so
that the images' gradient through the signals costs what it must and nothing more (see :class:`_SignalConv`).

The layer checks (:func:`conv_supported`, :func:`batchnorm_supported`), the grouped layouts (:func:`grouped`,
:func:`candidate_rows`) and the convolution gradients (:func:`input_gradient`, :func:`grouped_weight_gradient`)
are public: :mod:`invgrad.attack.handwritten` builds on the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


# -- shared with invgrad.attack.handwritten: which layers have a per-candidate rule, and the grouped layouts ----
def conv_supported(m: nn.Conv2d) -> bool:
    """Whether a convolution has a per-candidate rule here: ungrouped, zero padding given as a tuple."""
    return m.groups == 1 and m.padding_mode == "zeros" and isinstance(m.padding, tuple)


def batchnorm_supported(m: nn.BatchNorm2d) -> bool:
    """Whether a batch norm has one: eval mode with running statistics (batch statistics mix the candidates)."""
    return not m.training and m.running_mean is not None and m.running_var is not None


SUPPORTED = {nn.Conv2d: conv_supported, nn.Linear: lambda m: True, nn.BatchNorm2d: batchnorm_supported}


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def supports(model: nn.Module) -> bool:
    """True when every trainable parameter belongs to a supported layer (checked in the model's current mode)."""
    for m in _layers(model):
        check = SUPPORTED.get(type(m))
        if check is None or not check(m):
            return False
    return True


def grouped(t: torch.Tensor, n: int) -> torch.Tensor:
    """[N·K, C, H, W] -> [K, N·C, H, W]: each candidate a channel group (a view when K = 1)."""
    k = t.shape[0] // n
    return t.reshape(n, k, *t.shape[1:]).transpose(0, 1).reshape(k, n * t.shape[1], *t.shape[2:])


def candidate_rows(d: torch.Tensor, n: int) -> torch.Tensor:
    """A layer signal [N·K, C, H, W] as [N, K, C, positions]: the rows each candidate's sums run over."""
    return d.reshape(n, -1, d.shape[1], d.shape[2] * d.shape[3])


# An input gradient with this few channels (the images') is ATen's own convolution backward, once no graph is
# built: oneDNN's ran at half its speed into 3 channels (LeNetZhu × 8: 0.49 vs 0.20 ms; ResNet20 × 8: 0.42 vs
# 0.21 ms; ResNet20-4 × 4: 0.77 vs 0.25 ms), and wider ones the other way round.
IMAGE_CHANNELS_MAX = 4


def input_gradient(grad, weight, size, geometry, groups: int) -> torch.Tensor:
    """First-order ∂/∂input of ``conv2d(input, weight, groups=groups)`` for the output gradient ``grad``:
    ATen's convolution backward into at most ``IMAGE_CHANNELS_MAX`` channels per group (the images), else the
    current backend's."""
    stride, padding, dilation = geometry
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn and weight.shape[1] > IMAGE_CHANNELS_MAX
    try:
        shape = (grad.shape[0], weight.shape[1] * groups, *size)
        return torch.ops.aten.convolution_backward(
            grad,
            grad.new_empty(shape),  # only its shape is read
            weight,
            None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            groups,
            [True, False, False],
        )[0]
    finally:
        torch.backends.mkldnn.enabled = onednn


def grouped_weight_gradient(d, a, shape, geometry, n: int) -> torch.Tensor:
    """[N·O, C, kh, kw]: each of ``n`` groups' weight gradient of a convolution of weight ``shape`` with the grouped
    signal ``d`` and input ``a`` ([K, N·O, ...], [K, N·C, ...]), summed over the K images (first order)."""
    stride, padding, dilation = geometry
    # Only the weight's shape is read: an uninitialised tensor has it without filling n copies of the weight
    # (a repeat cost ResNet20 × 8 3 % of an evaluation; a zero-stride view was copied to a contiguous one).
    placeholder = d.new_empty((n * shape[0], *shape[1:]))
    _, weight, _ = torch.ops.aten.convolution_backward(
        d, a, placeholder, None, list(stride), list(padding), list(dilation), False, [0, 0], n,
        [False, True, False],
    )  # fmt: skip
    return weight


class _GroupedWeightGradient(torch.autograd.Function):
    """Each candidate's weight gradient as one convolution backward with a group per candidate, and its
    gradient w.r.t. the signal (a grouped convolution of the input) and the input (a grouped input gradient)
    written out: autograd's own double backward of a convolution backward ran the latter as a transposed
    convolution, slower into the images' 3 channels (LeNetZhu × 8: 0.40 vs 0.22 ms) and for strided layers
    (0.22 vs 0.16 ms). Differentiable once: the images' gradient of an objective of these gradients is all
    the engine asks for."""

    @staticmethod
    def forward(ctx, d, a, shape, geometry, n):
        ctx.save_for_backward(d, a)
        ctx.geometry, ctx.n = geometry, n
        return grouped_weight_gradient(d, a, shape, geometry, n)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        d, a = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        d_grad = a_grad = None
        if ctx.needs_input_grad[0]:
            d_grad = F.conv2d(a, grad, None, stride, padding, dilation, ctx.n)
        if ctx.needs_input_grad[1]:
            a_grad = input_gradient(d, grad, a.shape[-2:], ctx.geometry, ctx.n)
        return d_grad, a_grad, None, None, None


def _conv_grouped(m: nn.Conv2d, a: torch.Tensor, d: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The weight gradient of a convolution with one group per candidate (:class:`_GroupedWeightGradient`),
    summing over each candidate's K images; no im2col copies (10–40 % faster than unfold + einsum on
    LeNetZhu × 8)."""
    geometry = (tuple(m.stride), tuple(m.padding), tuple(m.dilation))
    weight = _GroupedWeightGradient.apply(grouped(d, n), grouped(a, n), tuple(m.weight.shape), geometry, n)
    bias = candidate_rows(d, n).sum((1, 3))
    return {"weight": weight.reshape(n, *m.weight.shape), "bias": bias}


# A layer's weight gradient as a batched matrix product of the signal with the unfolded input when the output
# has few positions for its input width (positions × this ≤ in-channels × kernel area): there oneDNN's grouped
# convolution backward runs far below its rate (ResNet20-4's 256-channel 8×8 layers, 4 candidates: 16 ms vs
# 6 ms, 29 ms vs 16 ms with the double backward), elsewhere it is 1.5–4× faster than unfold (ResNet20, LeNetZhu).
UNFOLD_MAX_POSITIONS_RATIO = 16


def _conv_unfolded(m: nn.Conv2d, a: torch.Tensor, d: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The same weight gradient as :func:`_conv_grouped`: Σ over a candidate's images and output positions of
    the signal times the unfolded input patch, one batched product per layer (twice differentiable)."""
    cols = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # [N·K, in·kh·kw, positions]
    signal = candidate_rows(d, n)
    weight = torch.einsum("nkol,nkcl->noc", signal, cols.reshape(n, -1, *cols.shape[1:]))
    return {"weight": weight.reshape(n, *m.weight.shape), "bias": signal.sum((1, 3))}


def _conv(m: nn.Conv2d, a: torch.Tensor, d: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    positions = d.shape[2] * d.shape[3]
    unfold = positions * UNFOLD_MAX_POSITIONS_RATIO <= m.weight[0].numel()
    return (_conv_unfolded if unfold else _conv_grouped)(m, a, d, n)


def _linear(m: nn.Linear, a: torch.Tensor, d: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    d, a = d.reshape(n, -1, d.shape[-1]), a.reshape(n, -1, a.shape[-1])
    return {"weight": torch.einsum("nko,nki->noi", d, a), "bias": d.sum(1)}


def _batchnorm(m: nn.BatchNorm2d, a: torch.Tensor, d: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """γ's gradient Σ d·(a − μ)/σ written as (Σ d·a − μ Σ d)/σ: one activation-sized product instead of
    three (a tenth of ResNet20's evaluation went to such products)."""
    d_sum = candidate_rows(d, n)
    da = (d * a).reshape(d_sum.shape).sum((1, 3))
    bias = d_sum.sum((1, 3))
    weight = (da - m.running_mean * bias) * torch.rsqrt(m.running_var + m.eps)
    return {"weight": weight, "bias": bias}


class _SignalConv(torch.autograd.Function):
    """A convolution whose backward (the input gradient, the layer signal's propagation) is an ordinary,
    differentiable transposed convolution of the fixed weight. Autograd's own double backward of a convolution
    also computes the summed weight gradient of every layer whenever the input's gradient is asked for, even
    where no weight needs one; through this backward, the images' gradient costs one convolution per layer
    less. The weight comes detached: the parameter gradients are assembled per candidate, never through it."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(weight)
        ctx.geometry, ctx.size = (stride, padding, dilation), x.shape[-2:]
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        extra = [
            size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, out, s, p, d, k in zip(
                ctx.size, grad.shape[-2:], stride, padding, dilation, weight.shape[-2:], strict=True
            )
        ]
        if torch.is_grad_enabled() or weight.shape[1] > IMAGE_CHANNELS_MAX:
            x_grad = F.conv_transpose2d(grad, weight, None, stride, padding, extra, 1, dilation)
        else:
            x_grad = input_gradient(grad, weight, ctx.size, ctx.geometry, 1)  # the images': first order only
        return x_grad, None, None, None, None, None


def _signal_convolution(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    bias = None if m.bias is None else m.bias.detach()
    return _SignalConv.apply(x, m.weight.detach(), bias, m.stride, m.padding, m.dilation)


class _SignalBatchNorm(torch.autograd.Function):
    """BatchNorm in eval mode (the module's own forward) whose backward is the per-channel scale γ/σ as one
    product, so that its double backward is one product too (autograd's goes through two batch-norm backward
    kernels per layer)."""

    @staticmethod
    def forward(ctx, x, m):
        weight = None if m.weight is None else m.weight.detach()
        inverse_std = torch.rsqrt(m.running_var + m.eps)
        scale = inverse_std if weight is None else weight * inverse_std
        ctx.save_for_backward(scale[:, None, None])
        bias = None if m.bias is None else m.bias.detach()
        return F.batch_norm(x, m.running_mean, m.running_var, weight, bias, False, 0.0, m.eps)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def _signal_batchnorm(m: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return _SignalBatchNorm.apply(x, m)


SIGNAL_FORWARDS = {nn.Conv2d: _signal_convolution, nn.BatchNorm2d: _signal_batchnorm}


@contextmanager
def _signal_layers(layers: list[nn.Module]) -> Iterator[None]:
    """The supported layers run with the forwards of ``SIGNAL_FORWARDS`` for the block (their own restored)."""
    swapped = [
        m for m in layers if type(m) in SIGNAL_FORWARDS and SUPPORTED[type(m)](m) and "forward" not in vars(m)
    ]
    for m in swapped:
        m.forward = SIGNAL_FORWARDS[type(m)].__get__(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


RULES = {nn.Conv2d: _conv, nn.Linear: _linear, nn.BatchNorm2d: _batchnorm}


def candidate_gradients(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss_of_sum
) -> list[torch.Tensor]:
    """∇θ of each candidate's training loss, stacked: one [N, *p.shape] tensor per trainable parameter, in
    ``model.parameters()`` order. ``x`` [N, K, C, H, W]; ``labels`` [N, K] (or soft [N, K, classes]);
    ``loss_of_sum(logits [N·K, classes], labels [N·K(, classes)])`` must be Σ over candidates of each one's
    training loss (e.g. the summed cross-entropy divided by K). Differentiable once w.r.t. ``x``: the images'
    gradient of an objective of these gradients (some layers' backward functions are first-order only)."""
    n = x.shape[0]
    if not x.requires_grad:  # the signals flow from the images (convolution weights enter detached)
        x = x.detach().requires_grad_(True)
    layers = _layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def keep(module, inputs, output):
        calls.append((module, inputs[0], output))

    handles = [m.register_forward_hook(keep) for m in layers]
    with _signal_layers(layers):
        try:
            logits = model(x.reshape(-1, *x.shape[2:]))
        finally:
            for handle in handles:
                handle.remove()
        loss = loss_of_sum(logits, labels.reshape(-1, *labels.shape[2:]))
        signals = torch.autograd.grad(loss, [out for _, _, out in calls], create_graph=True)
    trainable = {id(p) for p in params}
    per_param: dict[int, torch.Tensor] = {}
    for (module, a, _), d in zip(calls, signals, strict=True):
        for name, g in RULES[type(module)](module, a, d, n).items():
            p = getattr(module, name)
            if p is None or id(p) not in trainable:
                continue
            key = id(p)  # a layer called twice (shared weights) adds up its calls
            per_param[key] = per_param[key] + g if key in per_param else g
    return [
        per_param[id(p)] if id(p) in per_param else torch.zeros(n, *p.shape, dtype=x.dtype, device=x.device)
        for p in params
    ]
