"""Analytic inversion of a biased fully-connected layer (arXiv 2003.14053, the fully-connected-layer proposition).

For y = A x + b and any loss L: ∂L/∂b_i = ∂L/∂y_i and ∂L/∂A_{i,:} = (∂L/∂y_i)·xᵀ, so every row i with
∂L/∂b_i ≠ 0 gives xᵀ = ∂L/∂A_{i,:} / ∂L/∂b_i. All usable rows are combined by least squares,

    x̂ = argmin_x Σ_i ‖∂L/∂A_{i,:} − (∂L/∂b_i)·x‖² = Σ_i (∂L/∂b_i)·∂L/∂A_{i,:} / Σ_i (∂L/∂b_i)²,

i.e. the per-row ratios averaged with weights (∂L/∂b_i)², so rows with a tiny (noisy) bias gradient count little;
rows with a zero bias gradient (e.g. dead ReLU units) contribute nothing and are skipped.

Batches: for the batch-mean loss, ∂L/∂b = (1/K) Σ_k δ_k and ∂L/∂A = (1/K) Σ_k δ_k x_kᵀ with δ_k = ∂ℓ_k/∂y_k the
per-sample output gradient. The least-squares estimate is then x̂ = Σ_k w_k x_k with w_k = ⟨∂L/∂b, δ_k⟩ /
(K‖∂L/∂b‖²), weights that sum to one (:func:`batch_combination_weights`): a weighted combination of the inputs,
not the individual inputs. A single row i gives the combination with weights δ_ki / Σ_k δ_ki instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def usable_rows(bias_grad: torch.Tensor) -> torch.Tensor:
    """Indices of rows whose bias gradient is non-zero (those that carry the input)."""
    return torch.nonzero(bias_grad.reshape(-1) != 0).flatten()


def invert_linear(weight_grad: torch.Tensor, bias_grad: torch.Tensor, row: int | None = None) -> torch.Tensor:
    """The input x [in_features] of a Linear layer from its weight [out, in] and bias [out] gradients.

    ``row=None``: least squares over all usable rows; ``row=i``: that row's ratio alone.
    """
    weight_grad, bias_grad = torch.as_tensor(weight_grad), torch.as_tensor(bias_grad)
    if weight_grad.dim() != 2 or bias_grad.dim() != 1 or weight_grad.shape[0] != bias_grad.shape[0]:
        raise ValueError(
            f"need a weight gradient [out, in] and a bias gradient [out]; got {tuple(weight_grad.shape)} and "
            f"{tuple(bias_grad.shape)}"
        )
    if row is not None:
        if not 0 <= row < bias_grad.numel():
            raise ValueError(f"row {row} out of range for a layer with {bias_grad.numel()} outputs")
        if bias_grad[row] == 0:
            raise ValueError(f"row {row} has a zero bias gradient: it carries no information about the input")
        return weight_grad[row] / bias_grad[row]
    rows = usable_rows(bias_grad)
    if rows.numel() == 0:
        raise ValueError(
            "every row of the bias gradient is zero: no row is usable, the input cannot be recovered analytically"
        )
    b, g = bias_grad[rows], weight_grad[rows]
    return (b[:, None] * g).sum(dim=0) / b.pow(2).sum()


def linear_layers(model: torch.nn.Module) -> list[str]:
    """Names of the model's biased Linear layers, in order."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]


def layer_gradients(
    model: torch.nn.Module, update: Sequence[torch.Tensor], layer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) entries of ``update`` (one tensor per trainable parameter, model order) for ``layer``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    update = list(update)
    if len(update) != len(names):
        raise ValueError(
            f"update has {len(update)} tensors but the model has {len(names)} trainable parameters"
        )
    if layer not in linear_layers(model):
        raise ValueError(
            f"{layer!r} is not a biased Linear layer of the model; those are {linear_layers(model)}"
        )
    by_name = dict(zip(names, update, strict=True))
    weight, bias = by_name[f"{layer}.weight"], by_name[f"{layer}.bias"]
    module = dict(model.named_modules())[layer]
    if weight.shape != module.weight.shape or bias.shape != module.bias.shape:
        raise ValueError(
            f"update shapes {tuple(weight.shape)}, {tuple(bias.shape)} do not match layer {layer!r} "
            f"({tuple(module.weight.shape)}, {tuple(module.bias.shape)})"
        )
    return weight, bias


def recover_layer_input(
    model: torch.nn.Module, update: Sequence[torch.Tensor], layer: str | None = None
) -> torch.Tensor:
    """The (flattened) input of ``layer`` (default: the first biased Linear layer) from a shared gradient.

    For an MLP whose first layer is Linear after Flatten this is the user's (normalised) image itself.
    """
    layers = linear_layers(model)
    if not layers:
        raise ValueError("the model has no biased Linear layer to invert")
    return invert_linear(*layer_gradients(model, update, layers[0] if layer is None else layer))


def batch_combination_weights(per_sample_bias_grads: torch.Tensor) -> torch.Tensor:
    """w_k of the least-squares estimate for a batch-mean gradient, from the per-sample δ_k [K, out].

    x̂ = Σ_k w_k x_k with w_k = ⟨b̄, δ_k⟩ / (K‖b̄‖²), b̄ = mean_k δ_k; Σ_k w_k = 1.
    """
    deltas = torch.as_tensor(per_sample_bias_grads)
    mean = deltas.mean(dim=0)
    return deltas @ mean / (deltas.shape[0] * mean.pow(2).sum())
