"""Per-candidate gradients of a plain sequential network and their images' gradient, both written out by hand.

For an ``nn.Sequential`` of convolutions, linear layers, ``Flatten`` and element-wise activations (LeNetZhu, the
MLP) with hard labels, the whole second-order computation the attack needs fits one autograd Function: its
forward runs the network, backpropagates the training loss and assembles each candidate's parameter gradient
(as :mod:`invgrad.attack.persample` does); its backward takes the objective's gradient w.r.t. those parameter
gradients and returns the images' gradient by running the same computation in reverse, layer by layer. No
autograd graph is built: on LeNetZhu × 8 candidates about half of an evaluation went to the graph's nodes, views and
Python Functions rather than to the convolutions. The arithmetic is what autograd's double backward computes;
results agree with the other paths at float rounding (tested against ``torch.func``).

Notation: module ``i`` maps ``acts[i]`` to ``acts[i + 1]``; ``signals[i]`` is the training loss's gradient w.r.t.
``acts[i]``. In the backward, ``signal_adjoint[i]`` and ``act_adjoint[i]`` are the objective's gradients w.r.t. those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .persample import IMAGE_CHANNELS_MAX, _conv_ok, _grouped, _input_gradient

Tensor = torch.Tensor


def _ungrouped(t: Tensor, n: int) -> Tensor:
    """[K, N·C, H, W] -> [N·K, C, H, W]: the inverse of :func:`invgrad.attack.persample._grouped`."""
    k = t.shape[0]
    return t.reshape(k, n, -1, *t.shape[2:]).transpose(0, 1).reshape(n * k, -1, *t.shape[2:])


def _add(total: Tensor | None, term: Tensor | None) -> Tensor | None:
    if term is None:
        return total
    return term if total is None else total.add_(term)


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


@dataclass
class _Conv:
    m: nn.Conv2d

    def __post_init__(self):
        m = self.m
        self.weight = m.weight.detach()
        self.bias = None if m.bias is None else m.bias.detach()
        self.geometry = (tuple(m.stride), tuple(m.padding), tuple(m.dilation))
        self.patches: Tensor | None = None

    def forward(self, a: Tensor) -> Tensor:
        return F.conv2d(a, self.weight, self.bias, *self.geometry)

    def input_grad(self, s: Tensor, a: Tensor, _out: Tensor) -> Tensor:
        """The transposed convolution; with stride and dilation 1, a convolution with the flipped, transposed
        kernel (LeNetZhu's 8×8 layer, 8 candidates: 72 µs against 100 µs for oneDNN's transposed form)."""
        stride, padding, dilation = self.geometry
        if set(stride) == {1} and set(dilation) == {1} and a.shape[1] > IMAGE_CHANNELS_MAX:
            flipped = self.weight.transpose(0, 1).flip(-2, -1)
            pad = [k - 1 - p for k, p in zip(self.weight.shape[-2:], padding, strict=True)]
            return F.conv2d(s, flipped, None, 1, pad)
        return _input_gradient(s, self.weight, a.shape[-2:], self.geometry, 1)

    def jvp(self, v: Tensor, _a: Tensor, _out: Tensor) -> Tensor:
        return F.conv2d(v, self.weight, None, *self.geometry)

    def grads(self, a: Tensor, s: Tensor, n: int) -> list[Tensor]:
        """Each candidate's weight gradient. One image per candidate: a batched product of the signal with the
        input's patches (kept for :meth:`signal_adjoint`); several: one convolution backward with a group per
        candidate, summing over its images."""
        shape = self.weight.shape
        if a.shape[0] == n:
            self.patches = _patches(a, shape[-2:], self.geometry)  # [N, C·kh·kw, positions]
            weight = torch.bmm(s.reshape(n, shape[0], -1), self.patches.transpose(1, 2))
        else:
            stride, padding, dilation = self.geometry
            placeholder = s.new_empty((n * shape[0], *shape[1:]))  # only its shape is read
            _, weight, _ = torch.ops.aten.convolution_backward(
                _grouped(s, n), _grouped(a, n), placeholder, None, list(stride), list(padding), list(dilation),
                False, [0, 0], n, [False, True, False],
            )  # fmt: skip
        out = [weight.reshape(n, *shape)]
        if self.bias is not None:
            out.append(s.reshape(n, -1, s.shape[1], s.shape[2] * s.shape[3]).sum((1, 3)))
        return out

    def signal_adjoint(self, adjoints: list[Tensor], a: Tensor, out: Tensor, n: int) -> Tensor:
        """The signal's adjoint (shaped like the output ``out``) through :meth:`grads`, for the adjoints of its
        outputs."""
        shape = self.weight.shape
        if self.patches is not None:
            signal_bar = torch.bmm(adjoints[0].reshape(n, shape[0], -1), self.patches)  # [N, O, positions]
        else:
            weight_bar = adjoints[0].reshape(-1, *shape[1:])  # [N·O, C, kh, kw]
            signal_bar = _ungrouped(F.conv2d(_grouped(a, n), weight_bar, None, *self.geometry, n), n)
        if len(adjoints) > 1:  # the bias's adjoint [N, O], added at every position of every image
            per_image = signal_bar.reshape(n, -1, shape[0], out.shape[-2] * out.shape[-1])
            per_image.add_(adjoints[1][:, None, :, None])
        return signal_bar.reshape(out.shape)

    def input_adjoint(self, out_bar: Tensor, adjoints: list[Tensor], a: Tensor, s: Tensor, n: int) -> Tensor:
        """The input's adjoint through the forward convolution (``out_bar``) and through :meth:`grads`, as one
        grouped transposed convolution: each candidate's [signal; out_bar] channels against [its weight's adjoint;
        the weight] (LeNetZhu × 8: 0.83 ms against 1.11 ms as two operations per layer)."""
        shape = self.weight.shape
        stacked = torch.cat([adjoints[0], self.weight.expand(n, *shape)], 1).reshape(-1, *shape[1:])
        signals = _grouped(torch.cat([s, out_bar], 1), n)
        return _ungrouped(_input_gradient(signals, stacked, a.shape[-2:], self.geometry, n), n)

    second = None


@dataclass
class _Linear:
    m: nn.Linear

    def __post_init__(self):
        self.weight = self.m.weight.detach()
        self.bias = None if self.m.bias is None else self.m.bias.detach()

    def forward(self, a: Tensor) -> Tensor:
        return F.linear(a, self.weight, self.bias)

    def input_grad(self, s: Tensor, _a: Tensor, _out: Tensor) -> Tensor:
        return s @ self.weight

    def jvp(self, v: Tensor, _a: Tensor, _out: Tensor) -> Tensor:
        return F.linear(v, self.weight)

    def grads(self, a: Tensor, s: Tensor, n: int) -> list[Tensor]:
        s, a = s.reshape(n, -1, s.shape[-1]), a.reshape(n, -1, a.shape[-1])
        # one image per candidate: an outer product, which bmm ran 5× slower than a broadcast product
        out = [s[:, 0, :, None] * a[:, 0, None, :] if s.shape[1] == 1 else torch.bmm(s.transpose(1, 2), a)]
        if self.bias is not None:
            out.append(s.sum(1))
        return out

    def signal_adjoint(self, adjoints: list[Tensor], a: Tensor, _out: Tensor, n: int) -> Tensor:
        signal_bar = torch.bmm(
            a.reshape(n, -1, a.shape[-1]), adjoints[0].transpose(1, 2)
        )  # adjoints[0]: [N, O, I]
        if len(adjoints) > 1:
            signal_bar.add_(adjoints[1][:, None])
        return signal_bar.reshape(-1, signal_bar.shape[-1])

    def input_adjoint(self, out_bar: Tensor, adjoints: list[Tensor], a: Tensor, s: Tensor, n: int) -> Tensor:
        through_grads = torch.bmm(s.reshape(n, -1, s.shape[-1]), adjoints[0]).reshape(a.shape)
        return through_grads.add_(out_bar @ self.weight)

    second = None


@dataclass
class _Flatten:
    m: nn.Flatten

    def forward(self, a: Tensor) -> Tensor:
        return self.m(a)

    def input_grad(self, s: Tensor, a: Tensor, _out: Tensor) -> Tensor:
        return s.reshape(a.shape)

    def jvp(self, v: Tensor, _a: Tensor, out: Tensor) -> Tensor:
        return v.reshape(out.shape)

    second = None


# An element-wise activation by its first and second derivatives, both written in terms of its output.
DERIVATIVES: dict[type, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Callable]] = {
    nn.Sigmoid: (torch.sigmoid, lambda y: y * (1 - y), lambda y, d1: d1 * (1 - 2 * y)),
    nn.Tanh: (torch.tanh, lambda y: 1 - y * y, lambda y, d1: -2 * y * d1),
    nn.ReLU: (torch.relu, lambda y: (y > 0).to(y.dtype), None),
}


@dataclass
class _Activation:
    """An element-wise activation; its derivatives are computed once per evaluation (steps live for one)."""

    m: nn.Module

    def __post_init__(self):
        self.function, self.first, self.second_of = DERIVATIVES[type(self.m)]
        self.d1: Tensor | None = None

    def forward(self, a: Tensor) -> Tensor:
        return self.function(a)

    def _first(self, out: Tensor) -> Tensor:
        if self.d1 is None:
            self.d1 = self.first(out)
        return self.d1

    def input_grad(self, s: Tensor, _a: Tensor, out: Tensor) -> Tensor:
        return s * self._first(out)

    jvp = input_grad

    def second(self, signal_bar: Tensor, s_out: Tensor, _a: Tensor, out: Tensor) -> Tensor | None:
        """The input's adjoint through the signal ``s_in = s_out · σ'(a)``: signal_bar · s_out · σ''(a)."""
        if self.second_of is None:
            return None
        return self.second_of(out, self._first(out)).mul_(s_out).mul_(signal_bar)


STEPS: dict[type, type] = {nn.Conv2d: _Conv, nn.Linear: _Linear, nn.Flatten: _Flatten}
STEPS.update(dict.fromkeys(DERIVATIVES, _Activation))
CHECKS: dict[type, Callable[[nn.Module], bool]] = {nn.Conv2d: _conv_ok}


def supports(model: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of the layers in ``STEPS`` whose parameters all train (none frozen)."""
    if type(model) is not nn.Sequential and not (
        isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward
    ):
        return False
    for m in model:
        if type(m) not in STEPS or not CHECKS.get(type(m), lambda _m: True)(m):
            return False
        if any(not p.requires_grad for p in m.parameters()):
            return False
    return True


class _SequentialGradients(torch.autograd.Function):
    """images -> every candidate's parameter gradients (forward), and their adjoints -> the images' (backward)."""

    @staticmethod
    def forward(ctx, x, labels, steps, n, k):
        acts = [x]
        for step in steps:
            acts.append(step.forward(acts[-1]))
        probabilities = torch.softmax(acts[-1], dim=-1)
        onehot = F.one_hot(labels, probabilities.shape[-1]).to(probabilities.dtype)
        signals: list[Tensor | None] = [None] * len(acts)
        signals[-1] = (probabilities - onehot) / k  # Σ over candidates of each one's mean cross-entropy
        for i in range(len(steps) - 1, 0, -1):
            signals[i] = steps[i].input_grad(signals[i + 1], acts[i], acts[i + 1])
        grads = [
            g
            for i, step in enumerate(steps)
            if hasattr(step, "grads")
            for g in step.grads(acts[i], signals[i + 1], n)
        ]
        ctx.steps, ctx.acts, ctx.signals, ctx.probabilities, ctx.n, ctx.k = (
            steps,
            acts,
            signals,
            probabilities,
            n,
            k,
        )
        # What the backward reads, registered too, so that saved-tensor hooks (the engine's memory probe) see it.
        kept = [*acts, *signals, probabilities, *(getattr(step, "patches", None) for step in steps)]
        ctx.save_for_backward(*(t for t in kept if t is not None))
        return tuple(grads)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_adjoints):
        ctx.saved_tensors  # noqa: B018 (unpacked for saved-tensor hooks; the same tensors are read below)
        steps, acts, signals, n = ctx.steps, ctx.acts, ctx.signals, ctx.n
        size = len(acts)
        signal_bar: list[Tensor | None] = [None] * size
        act_bar: list[Tensor | None] = [None] * size
        adjoints = iter(grad_adjoints)
        param_bar: dict[int, list[Tensor]] = {}  # step -> the adjoints of its parameter gradients
        for i, step in enumerate(steps):
            if not hasattr(step, "grads"):
                continue
            params = [step.weight] if step.bias is None else [step.weight, step.bias]
            mine = [next(adjoints) for _ in params]
            if all(a is None for a in mine):
                continue
            param_bar[i] = [
                p.new_zeros(n, *p.shape) if a is None else a for a, p in zip(mine, params, strict=True)
            ]
            signal_bar[i + 1] = _add(
                signal_bar[i + 1], step.signal_adjoint(param_bar[i], acts[i], acts[i + 1], n)
            )
        # signals[j] = J_j(acts[j])ᵀ signals[j + 1] for j ≥ 1, computed last to first: adjoints run first to last
        for j in range(1, len(steps)):
            if signal_bar[j] is None:
                continue
            step = steps[j]
            signal_bar[j + 1] = _add(signal_bar[j + 1], step.jvp(signal_bar[j], acts[j], acts[j + 1]))
            if step.second is not None:
                act_bar[j] = _add(
                    act_bar[j], step.second(signal_bar[j], signals[j + 1], acts[j], acts[j + 1])
                )
        if signal_bar[-1] is not None:  # signals[-1] = (softmax(logits) − onehot) / k
            p, v = ctx.probabilities, signal_bar[-1]
            act_bar[-1] = _add(act_bar[-1], p * (v - (p * v).sum(-1, keepdim=True)) / ctx.k)
        for j in range(len(steps) - 1, -1, -1):  # the forward pass, in reverse (with each layer's grads)
            out_bar, step = act_bar[j + 1], steps[j]
            if j in param_bar:
                out_bar = torch.zeros_like(acts[j + 1]) if out_bar is None else out_bar
                term = step.input_adjoint(out_bar, param_bar[j], acts[j], signals[j + 1], n)
            else:
                term = None if out_bar is None else step.input_grad(out_bar, acts[j], acts[j + 1])
            act_bar[j] = _add(act_bar[j], term)
        return act_bar[0], None, None, None, None


def candidate_gradients(model: nn.Sequential, x: Tensor, labels: Tensor) -> list[Tensor]:
    """∇θ of each candidate's mean cross-entropy, one [N, *p.shape] tensor per parameter (``model.parameters()``
    order), for ``x`` [N, K, C, H, W] and integer ``labels`` [N, K]; differentiable once w.r.t. ``x``."""
    n, k = x.shape[:2]
    steps = [STEPS[type(m)](m) for m in model]
    flat = x.reshape(n * k, *x.shape[2:])
    return list(_SequentialGradients.apply(flat, labels.reshape(-1), steps, n, k))
