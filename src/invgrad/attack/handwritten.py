"""Per-candidate gradients of a network and their images' gradient, both written out by hand, layer by layer.

The attack needs, for every candidate, ∇θ of its training loss, then the images' gradient of an objective of those
gradients: a second-order quantity. For networks built from the layers below (LeNetZhu, the MLP, the CIFAR
ResNets) with hard labels, the whole computation fits one autograd Function. Its forward runs the network,
backpropagates the loss (the *signals*) and assembles each candidate's parameter gradient (as
:mod:`invgrad.attack.persample` does); its backward takes the objective's gradients w.r.t. those parameter gradients
and returns the images' gradient in two sweeps: forward through the signals' adjoints, then backward through the
activations' adjoints. No autograd graph is built: on LeNetZhu × 8 candidates about half of an evaluation went to
its nodes, views and Python Functions. The arithmetic is what autograd's double backward computes; results agree
with torch.func at float rounding (tested in float64).

A network is a :class:`Chain` of steps; a residual block is a :class:`Sum` of two chains. Every step keeps what it
saw during the forward and answers four questions:

* ``forward(a)``: its output;
* ``signals(s_out, need_input)``: the loss's gradient at its input from the one at its output (kept);
* ``signal_pass(v)``: the adjoint at its output signal from the one at its input signal, plus what its own parameter
  gradients contribute (``self.bars``, the objective's gradients w.r.t. them);
* ``act_pass(v)``: the adjoint at its input activation from the one at its output, plus what its parameter
  gradients and (for curved activations) its signal contribute.

One module over 450 lines on purpose: the steps, their plans and the Function that runs them are one pass whose
forward and two backward sweeps must stay consistent with each other; split up, each piece would be unreadable
without the others. Layer checks and grouped layouts shared with :mod:`invgrad.attack.persample` come from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..victim.models import BasicBlock, CIFARResNet
from .persample import (
    IMAGE_CHANNELS_MAX,
    batchnorm_supported,
    candidate_rows,
    conv_supported,
    grouped,
    grouped_weight_gradient,
    input_gradient,
)

Tensor = torch.Tensor


def _sum(*terms: Tensor | None) -> Tensor | None:
    """Σ of the terms that exist (out of place: a term may be an alias passed through an identity)."""
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


def _ungrouped(t: Tensor, n: int) -> Tensor:
    """[K, N·C, H, W] -> [N·K, C, H, W]: the inverse of :func:`invgrad.attack.persample.grouped`."""
    k = t.shape[0]
    return t.reshape(k, n, -1, *t.shape[2:]).transpose(0, 1).reshape(n * k, -1, *t.shape[2:])


def _patches(a: Tensor, kernel: tuple[int, int], geometry) -> Tensor:
    """The unfolded input [N, C·kh·kw, positions] of a zero-padded convolution, as one strided copy of the padded
    input (F.unfold took twice as long on LeNetZhu's layers)."""
    (sh, sw), (ph, pw), (dh, dw) = geometry
    (kh, kw), (n, c, h, w) = kernel, a.shape
    padded = F.pad(a, (pw, pw, ph, ph))
    rows, cols = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    s0, s1, s2, s3 = padded.stride()
    windows = padded.as_strided((n, c, kh, kw, rows, cols), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))
    return windows.reshape(n, c * kh * kw, rows * cols)


# One image per candidate: the weight gradient and its adjoint as batched products with the input's patches where
# the grouped convolution runs far below its rate, measured on this project's 2-core CPU: few output positions
# (ResNet20's 8×8 stage: 1.0 vs 1.4 ms per layer, 8 candidates) or channel counts off oneDNN's blocks of 16
# (LeNetZhu's 12: 0.21–0.25 vs 0.34–0.50 ms per layer); elsewhere the grouped convolution wins (ResNet20's 32×32
# stage: 1.1 vs 1.6 ms).
PATCHES_MAX_POSITIONS = 64
CHANNEL_BLOCK = 16
MERGED_MAX_GROUP_WIDTH = 64  # channels per candidate of a merged grouped convolution on so few positions


class _Leaf:
    """A step without inner steps; those with parameters list them in ``params`` (module order)."""

    params: list[Tensor] = []
    bars: list[Tensor] | None = None

    def leaves(self) -> Iterator[_Leaf]:
        yield self


class _Conv(_Leaf):
    def __init__(self, m: nn.Conv2d):
        self.weight = m.weight.detach()
        self.bias = None if m.bias is None else m.bias.detach()
        self.params = [m.weight] + ([] if m.bias is None else [m.bias])
        self.geometry = (tuple(m.stride), tuple(m.padding), tuple(m.dilation))
        self.patches: Tensor | None = None

    def forward(self, a: Tensor) -> Tensor:
        self.a = a
        return F.conv2d(a, self.weight, self.bias, *self.geometry)

    def _transposed(self, s: Tensor) -> Tensor:
        """Jᵀs, the transposed convolution; with stride and dilation 1, a convolution with the flipped, transposed
        kernel (LeNetZhu's 8×8 layer, 8 candidates: 72 µs against 100 µs for oneDNN's transposed form)."""
        stride, padding, dilation = self.geometry
        if set(stride) == {1} and set(dilation) == {1} and self.a.shape[1] > IMAGE_CHANNELS_MAX:
            flipped = self.weight.transpose(0, 1).flip(-2, -1)
            pad = [k - 1 - p for k, p in zip(self.weight.shape[-2:], padding, strict=True)]
            return F.conv2d(s, flipped, None, 1, pad)
        return input_gradient(s, self.weight, self.a.shape[-2:], self.geometry, 1)

    def signals(self, s: Tensor, need_input: bool) -> Tensor | None:
        self.s = s
        return self._transposed(s) if need_input else None

    def grads(self, n: int) -> list[Tensor]:
        """Each candidate's weight gradient: a batched product of its signal with its input's patches (kept for
        :meth:`signal_pass`), or one convolution backward with a group per candidate (summing over its images)."""
        a, s, shape = self.a, self.s, self.weight.shape
        positions = s.shape[-2] * s.shape[-1]
        if a.shape[0] == n and (positions <= PATCHES_MAX_POSITIONS or shape[0] % CHANNEL_BLOCK):
            self.patches = _patches(a, shape[-2:], self.geometry)  # [N, C·kh·kw, positions]
            weight = torch.bmm(s.reshape(n, shape[0], -1), self.patches.transpose(1, 2))
        else:
            weight = grouped_weight_gradient(grouped(s, n), grouped(a, n), shape, self.geometry, n)
        out = [weight.reshape(n, *shape)]
        if self.bias is not None:
            out.append(candidate_rows(s, n).sum((1, 3)))
        return out

    def _forward_linear(self, v: Tensor | None) -> Tensor | None:
        """J v: the convolution without its bias."""
        return None if v is None else F.conv2d(v, self.weight, None, *self.geometry)

    def signal_pass(self, v: Tensor | None) -> Tensor | None:
        """J v plus the weight gradients' share: with patches, a batched product; else, with ``v``, one grouped
        convolution of each candidate's [input; v] channels against [its weight's adjoint, the weight] (ResNet20's
        32×32 stage, 8 candidates: 0.86 ms against 1.05 ms as two operations)."""
        if self.bars is None:
            return self._forward_linear(v)
        n, shape = self.bars[0].shape[0], self.weight.shape
        through = None
        if self.patches is not None:
            own = torch.bmm(self.bars[0].reshape(n, shape[0], -1), self.patches)  # [N, O, positions]
            through = self._forward_linear(v)
        elif v is None:
            weight_bar = self.bars[0].reshape(-1, *shape[1:])  # [N·O, C, kh, kw]
            own = _ungrouped(F.conv2d(grouped(self.a, n), weight_bar, None, *self.geometry, n), n)
        else:
            stacked = torch.cat([self.bars[0], self.weight.expand(n, *shape)], 2).reshape(
                n * shape[0], -1, *shape[2:]
            )
            own = _ungrouped(
                F.conv2d(grouped(torch.cat([self.a, v], 1), n), stacked, None, *self.geometry, n), n
            )
        own = own.reshape(self.s.shape)
        if len(self.bars) > 1:  # the bias's adjoint [N, O], at every position of every image (a view of own)
            candidate_rows(own, n).add_(self.bars[1][:, None, :, None])
        return own if through is None else own.add_(through)

    def act_pass(self, v: Tensor | None) -> Tensor | None:
        """Jᵀv plus the weight gradients' share. As one grouped transposed convolution of each candidate's
        [signal; v] channels against [its weight's adjoint; the weight] (LeNetZhu × 8: 0.83 ms against 1.11 ms as
        two operations per layer), except for wide groups on few positions, where oneDNN's grouped convolution
        collapses (ResNet20's 8×8 stage: 2.7 ms against 0.9 ms as two operations)."""
        if self.bars is None:
            return None if v is None else self._transposed(v)
        n, shape = self.bars[0].shape[0], self.weight.shape
        positions = self.s.shape[-2] * self.s.shape[-1]
        if v is not None and 2 * shape[0] > MERGED_MAX_GROUP_WIDTH and positions <= PATCHES_MAX_POSITIONS:
            weight_bar = self.bars[0].reshape(-1, *shape[1:])
            own = input_gradient(grouped(self.s, n), weight_bar, self.a.shape[-2:], self.geometry, n)
            return _ungrouped(own, n).add_(self._transposed(v))
        v = torch.zeros_like(self.s) if v is None else v
        stacked = torch.cat([self.bars[0], self.weight.expand(n, *shape)], 1).reshape(-1, *shape[1:])
        signals = grouped(torch.cat([self.s, v], 1), n)
        return _ungrouped(input_gradient(signals, stacked, self.a.shape[-2:], self.geometry, n), n)


class _Linear(_Leaf):
    def __init__(self, m: nn.Linear):
        self.weight = m.weight.detach()
        self.bias = None if m.bias is None else m.bias.detach()
        self.params = [m.weight] + ([] if m.bias is None else [m.bias])

    def forward(self, a: Tensor) -> Tensor:
        self.a = a
        return F.linear(a, self.weight, self.bias)

    def signals(self, s: Tensor, need_input: bool) -> Tensor | None:
        self.s = s
        return s @ self.weight if need_input else None

    def grads(self, n: int) -> list[Tensor]:
        s, a = self.s.reshape(n, -1, self.s.shape[-1]), self.a.reshape(n, -1, self.a.shape[-1])
        # one image per candidate: an outer product, which bmm ran 5× slower than a broadcast product
        out = [s[:, 0, :, None] * a[:, 0, None, :] if s.shape[1] == 1 else torch.bmm(s.transpose(1, 2), a)]
        return out + ([s.sum(1)] if self.bias is not None else [])

    def signal_pass(self, v: Tensor | None) -> Tensor | None:
        through = None if v is None else F.linear(v, self.weight)
        if self.bars is None:
            return through
        n = self.bars[0].shape[0]
        own = torch.bmm(self.a.reshape(n, -1, self.a.shape[-1]), self.bars[0].transpose(1, 2))
        if len(self.bars) > 1:
            own.add_(self.bars[1][:, None])
        own = own.reshape(self.s.shape)
        return own if through is None else own.add_(through)

    def act_pass(self, v: Tensor | None) -> Tensor | None:
        through = None if v is None else v @ self.weight
        if self.bars is None:
            return through
        n = self.bars[0].shape[0]
        own = torch.bmm(self.s.reshape(n, -1, self.s.shape[-1]), self.bars[0]).reshape(self.a.shape)
        return own if through is None else own.add_(through)


class _BatchNorm(_Leaf):
    """BatchNorm in eval mode: a per-channel affine map with the running statistics (γ, β when affine)."""

    def __init__(self, m: nn.BatchNorm2d):
        self.m, self.mean = m, m.running_mean
        self.weight = None if m.weight is None else m.weight.detach()
        self.bias = None if m.bias is None else m.bias.detach()
        self.inverse_std = torch.rsqrt(m.running_var + m.eps)
        self.scale = (self.inverse_std if self.weight is None else self.weight * self.inverse_std)[
            :, None, None
        ]
        self.params = [m.weight, m.bias] if m.affine else []

    def forward(self, a: Tensor) -> Tensor:
        self.a = a
        m = self.m
        return F.batch_norm(a, m.running_mean, m.running_var, self.weight, self.bias, False, 0.0, m.eps)

    def signals(self, s: Tensor, need_input: bool) -> Tensor | None:
        self.s = s
        return s * self.scale if need_input else None

    def grads(self, n: int) -> list[Tensor]:
        """γ's gradient Σ s·(a − μ)/σ as (Σ s·a − μ Σ s)/σ, β's Σ s, per candidate (over its images and positions)."""
        s = candidate_rows(self.s, n)
        s_sum = s.sum((1, 3))
        sa = (self.s * self.a).reshape(s.shape).sum((1, 3))
        return [(sa - self.mean * s_sum) * self.inverse_std, s_sum]

    def signal_pass(self, v: Tensor | None) -> Tensor | None:
        if self.bars is None:
            return None if v is None else v * self.scale
        gamma_bar, beta_bar = self.bars  # [N, C] each
        slope = gamma_bar * self.inverse_std
        offset = beta_bar - slope * self.mean
        a = candidate_rows(self.a, gamma_bar.shape[0])
        own = torch.addcmul(offset[:, None, :, None], a, slope[:, None, :, None]).reshape(self.a.shape)
        return own if v is None else own.addcmul_(v, self.scale)

    def act_pass(self, v: Tensor | None) -> Tensor | None:
        if self.bars is None:
            return None if v is None else v * self.scale
        gamma_bar = self.bars[0]
        s = candidate_rows(self.s, gamma_bar.shape[0])
        own = (s * (gamma_bar * self.inverse_std)[:, None, :, None]).reshape(self.a.shape)
        return own if v is None else own.addcmul_(v, self.scale)


# An element-wise activation: (function, v·σ'(a) from v and the output y — ATen's own backward kernels, one each —,
# and σ''(a)/σ'(a) from y, None where σ'' vanishes).
ACTIVATIONS: dict[type, tuple[Callable, Callable, Callable | None]] = {
    nn.Sigmoid: (torch.sigmoid, torch.ops.aten.sigmoid_backward, lambda y: torch.rsub(y, 1, alpha=2)),
    nn.Tanh: (torch.tanh, torch.ops.aten.tanh_backward, lambda y: y * -2),
    nn.ReLU: (torch.relu, lambda v, y: torch.ops.aten.threshold_backward(v, y, 0), None),
}


class _Activation(_Leaf):
    def __init__(self, m: nn.Module):
        self.function, self.gate, self.curving = ACTIVATIONS[type(m)]
        self.curvature: Tensor | None = None

    def forward(self, a: Tensor) -> Tensor:
        self.out = self.function(a)
        return self.out

    def signals(self, s: Tensor, need_input: bool) -> Tensor | None:
        self.s = s
        return self.gate(s, self.out) if need_input else None

    def signal_pass(self, v: Tensor | None) -> Tensor | None:
        """The input signal is s·σ'(a): its adjoint v reaches the output signal as v·σ'(a) and the input
        activation as v·s·σ''(a) (kept for :meth:`act_pass`)."""
        if v is None:
            return None
        if self.curving is not None:
            self.curvature = self.gate(v * self.s, self.out).mul_(self.curving(self.out))
        return self.gate(v, self.out)

    def act_pass(self, v: Tensor | None) -> Tensor | None:
        return _sum(None if v is None else self.gate(v, self.out), self.curvature)


class _Reshape(_Leaf):
    """Flatten (and average pooling to 1×1, a linear map): only shapes and a constant factor change."""

    def __init__(self, m: nn.Module):
        self.pool = isinstance(m, nn.AdaptiveAvgPool2d)
        self.start = getattr(m, "start_dim", 1)

    def forward(self, a: Tensor) -> Tensor:
        self.in_shape = a.shape
        out = a.mean((2, 3), keepdim=True) if self.pool else a.flatten(self.start)
        self.out_shape = out.shape
        return out

    def _back(self, v: Tensor) -> Tensor:
        if self.pool:
            return (v / (self.in_shape[2] * self.in_shape[3])).expand(self.in_shape)
        return v.reshape(self.in_shape)

    def signals(self, s: Tensor, need_input: bool) -> Tensor | None:
        return self._back(s) if need_input else None

    def signal_pass(self, v: Tensor | None) -> Tensor | None:
        if v is None:
            return None
        return v.mean((2, 3), keepdim=True) if self.pool else v.reshape(self.out_shape)

    def act_pass(self, v: Tensor | None) -> Tensor | None:
        return None if v is None else self._back(v)


class Chain:
    """Steps applied one after the other (an empty chain is the identity)."""

    def __init__(self, steps: list):
        self.steps = steps

    def leaves(self) -> Iterator[_Leaf]:
        for step in self.steps:
            yield from step.leaves()

    def forward(self, a: Tensor) -> Tensor:
        for step in self.steps:
            a = step.forward(a)
        return a

    def signals(self, s: Tensor, need_input: bool) -> Tensor | None:
        for i in range(len(self.steps) - 1, -1, -1):
            s = self.steps[i].signals(s, need_input or i > 0)
        return s

    def signal_pass(self, v: Tensor | None) -> Tensor | None:
        for step in self.steps:
            v = step.signal_pass(v)
        return v

    def act_pass(self, v: Tensor | None) -> Tensor | None:
        for step in reversed(self.steps):
            v = step.act_pass(v)
        return v


class Sum:
    """Branches applied to the same input, outputs added (a residual block before its last activation)."""

    def __init__(self, branches: list[Chain]):
        self.branches = branches

    def leaves(self) -> Iterator[_Leaf]:
        for branch in self.branches:
            yield from branch.leaves()

    def forward(self, a: Tensor) -> Tensor:
        return _sum(*(branch.forward(a) for branch in self.branches))

    def signals(self, s: Tensor, need_input: bool) -> Tensor | None:
        return _sum(*(branch.signals(s, need_input) for branch in self.branches))

    def signal_pass(self, v: Tensor | None) -> Tensor | None:
        return _sum(*(branch.signal_pass(v) for branch in self.branches))

    def act_pass(self, v: Tensor | None) -> Tensor | None:
        return _sum(*(branch.act_pass(v) for branch in self.branches))


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _basic_block(m: BasicBlock):
    main = Chain([plan(m.conv1), plan(m.bn1), plan(m.relu), plan(m.conv2), plan(m.bn2)])
    return Chain([Sum([main, plan(m.shortcut)]), plan(m.relu)])


def _cifar_resnet(m: CIFARResNet):
    return Chain(
        [
            plan(m.conv1),
            plan(m.bn1),
            plan(m.relu),
            plan(m.layers),
            plan(m.pool),
            _Reshape(nn.Flatten()),
            plan(m.fc),
        ]
    )


# How each module type becomes a step: its own forward written out as steps (every model type listed here is
# checked against torch.func in the tests).
PLANS: dict[type, Callable] = {
    nn.Conv2d: _Conv,
    nn.Linear: _Linear,
    nn.BatchNorm2d: _BatchNorm,
    nn.Flatten: _Reshape,
    nn.AdaptiveAvgPool2d: _Reshape,
    nn.Identity: lambda m: Chain([]),
    nn.Sequential: lambda m: Chain([plan(child) for child in m]),
    BasicBlock: _basic_block,
    CIFARResNet: _cifar_resnet,
    **dict.fromkeys(ACTIVATIONS, _Activation),
}
CHECKS: dict[type, Callable[[nn.Module], bool]] = {
    nn.Conv2d: conv_supported,
    nn.BatchNorm2d: batchnorm_supported,
    nn.AdaptiveAvgPool2d: lambda m: m.output_size in (1, (1, 1)),
    nn.Sequential: _is_plain_sequential,
    BasicBlock: lambda m: type(m).forward is BasicBlock.forward,
    CIFARResNet: lambda m: type(m).forward is CIFARResNet.forward,
}


class _Unsupported(Exception):
    pass


def plan(m: nn.Module):
    """The steps of module ``m`` (raises _Unsupported for any module without a faithful written-out form)."""
    kind = nn.Sequential if _is_plain_sequential(m) else type(m)  # LeNetZhu subclasses Sequential
    make = PLANS.get(kind)
    if make is None or not CHECKS.get(kind, lambda _m: True)(m):
        raise _Unsupported(type(m).__name__)
    return make(m)


def supports(model: nn.Module) -> bool:
    """True when the model has a written-out form (every module listed in ``PLANS``, in the supported modes) whose
    parameters are the model's, in order, all trained."""
    try:
        params = [p for leaf in plan(model).leaves() for p in leaf.params]
    except _Unsupported:
        return False
    own = list(model.parameters())
    return len(params) == len(own) and all(
        p is q and p.requires_grad for p, q in zip(params, own, strict=True)
    )


def _forward(network, x: Tensor, labels: Tensor, n: int, k: int) -> tuple[tuple[Tensor, ...], dict]:
    """Every candidate's parameter gradients, and the state :func:`_backward` reads (the steps keep the rest)."""
    logits = network.forward(x)
    probabilities = torch.softmax(logits, dim=-1)
    # Σ over candidates of each one's mean cross-entropy: its gradient w.r.t. the logits, (p − onehot) / k
    # (scattered: F.one_hot checks the labels' range on the host, a device sync per evaluation on a GPU)
    minus_one = torch.full_like(probabilities[:, :1], -1.0)
    network.signals(probabilities.scatter_add(1, labels[:, None], minus_one).div_(k), need_input=False)
    leaves = list(network.leaves())
    grads = tuple(g for leaf in leaves if leaf.params for g in leaf.grads(n))
    return grads, dict(network=network, leaves=leaves, probabilities=probabilities, k=k)


def _backward(state: dict, grad_bars) -> Tensor:
    """The images' gradient from the adjoints of :func:`_forward`'s gradients. Once: the steps' state is released."""
    leaves = state["leaves"]
    try:
        bars = iter(grad_bars)
        for leaf in leaves:
            if leaf.params:
                leaf.bars = [next(bars) for _ in leaf.params]
        logits_signal_bar = state["network"].signal_pass(None)
        logits_bar = None
        if logits_signal_bar is not None:  # the logits' signal is (softmax(logits) − onehot) / k
            p, v = state["probabilities"], logits_signal_bar
            logits_bar = p * (v - (p * v).sum(-1, keepdim=True)) / state["k"]
        return state["network"].act_pass(logits_bar)
    finally:
        # Release what the steps kept now (also after an out-of-memory error), not when autograd drops the
        # node: kept longer, they made each evaluation fault ~780 fresh pages.
        for leaf in leaves:
            vars(leaf).clear()


class _CandidateGradients(torch.autograd.Function):
    """images -> every candidate's parameter gradients (forward), and their adjoints -> the images' (backward)."""

    @staticmethod
    def forward(ctx, x, labels, network, n, k):
        grads, ctx.state = _forward(network, x, labels, n, k)
        # What the backward reads, registered too, so that saved-tensor hooks (the engine's memory probe) see it.
        leaves = ctx.state["leaves"]
        kept = {id(t): t for leaf in leaves for t in vars(leaf).values() if isinstance(t, Tensor)}
        ctx.save_for_backward(ctx.state["probabilities"], *kept.values())
        return grads

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_bars):
        ctx.saved_tensors  # noqa: B018 (unpacked for saved-tensor hooks; the same tensors are read below)
        return _backward(ctx.state, grad_bars), None, None, None, None


def candidate_gradients(model: nn.Module, x: Tensor, labels: Tensor) -> list[Tensor]:
    """∇θ of each candidate's mean cross-entropy, one [N, *p.shape] tensor per parameter (``model.parameters()``
    order), for ``x`` [N, K, C, H, W] and integer ``labels`` [N, K]; differentiable once w.r.t. ``x``. Only for
    models that :func:`supports` accepts."""
    n, k = x.shape[:2]
    flat = x.reshape(n * k, *x.shape[2:])
    return list(_CandidateGradients.apply(flat, labels.reshape(-1), plan(model), n, k))


def candidate_gradients_and_pullback(
    model: nn.Module, x: Tensor, labels: Tensor
) -> tuple[list[Tensor], Callable[[list[Tensor]], Tensor]]:
    """:func:`candidate_gradients` without autograd: the gradients, and a function (to call once) from their
    adjoints to ``x``'s. For callers whose objective's gradient is written out too (the engine's graph-free
    evaluation): no graph, no engine, no Function to run per evaluation."""
    n, k = x.shape[:2]
    grads, state = _forward(plan(model), x.reshape(n * k, *x.shape[2:]), labels.reshape(-1), n, k)
    return list(grads), lambda bars: _backward(state, bars).reshape(x.shape)
