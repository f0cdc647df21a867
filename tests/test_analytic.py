"""Analytic inversion of a biased fully-connected layer (issue #4, item 5; arXiv 2003.14053, the fully-connected-layer proposition)."""

import pytest
import torch
import torch.nn.functional as F

from invgrad import recover_layer_input, shared_gradient
from invgrad.attack.analytic import batch_combination_weights, invert_linear, layer_gradients, linear_layers
from invgrad.victim.models import build_model


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_mlp_first_layer_returns_the_image(cifar_samples, dtype, tolerance):
    """Measured relative error: 8.3e-8 (float32), 1.1e-16 (float64)."""
    images, labels = cifar_samples
    model = build_model("MLP", seed=0).to(dtype).eval()
    x = images[:1].to(dtype)
    update = shared_gradient(model, x, labels[:1])
    recovered = recover_layer_input(model, update)  # default: the first biased Linear layer
    assert _rel(recovered.reshape(x.shape), x) <= tolerance


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_lenet_classifier_returns_its_768_features(lenet, cifar_samples, dtype, tolerance):
    """LeNetZhu's Linear(768→10) input is the conv stack's output. Measured: 7.1e-8 (float32), 1.3e-16 (float64)."""
    images, labels = cifar_samples
    model = lenet.to(dtype)
    x = images[3:4].to(dtype)
    update = shared_gradient(model, x, labels[3:4])
    with torch.no_grad():
        features = torch.nn.Sequential(*list(model)[:7])(x)[0]
    assert linear_layers(model) == ["7"]
    recovered = recover_layer_input(model, update, "7")
    assert recovered.shape == (768,)
    assert _rel(recovered, features) <= tolerance


def test_batch_gives_the_predicted_weighted_combination(lenet, cifar_samples):
    """Batch-mean gradient of 4 images: the estimate is Σ_k w_k x_k with w_k ∝ ⟨∂L/∂b, δ_k⟩ (summing to 1), not
    any single input. Measured weights 0.174 / 0.358 / 0.291 / 0.177 (float64), prediction error 1.4e-16; each
    individual input is 13-24 % away."""
    images, labels = cifar_samples
    model = lenet.double()
    x, y = images[:4].double(), labels[:4]
    update = shared_gradient(model, x, y)
    with torch.no_grad():
        features = torch.nn.Sequential(*list(model)[:7])(x)
        deltas = torch.softmax(model[7](features), -1) - F.one_hot(y, 10).double()  # per-sample ∂ℓ_k/∂y
    weights = batch_combination_weights(deltas)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    recovered = recover_layer_input(model, update)
    assert _rel(recovered, weights @ features) <= 1e-10
    assert min(_rel(recovered, f) for f in features) > 0.05
    # one row alone gives weights δ_ki / Σ_k δ_ki
    row = 2
    single = invert_linear(*layer_gradients(model, update, "7"), row=row)
    row_weights = deltas[:, row] / deltas[:, row].sum()
    assert _rel(single, row_weights @ features) <= 1e-10


def test_rows_with_zero_bias_gradient_are_skipped():
    torch.manual_seed(0)
    x = torch.randn(6, dtype=torch.float64)
    delta = torch.tensor([0.0, 0.5, 0.0, -2.0], dtype=torch.float64)
    weight_grad, bias_grad = torch.outer(delta, x), delta.clone()
    weight_grad[0] = 123.0  # garbage in a row with zero bias gradient must not leak into the estimate
    assert _rel(invert_linear(weight_grad, bias_grad), x) <= 1e-12
    with pytest.raises(ValueError, match="row 0 has a zero bias gradient"):
        invert_linear(weight_grad, bias_grad, row=0)


def test_no_usable_row_is_an_error():
    with pytest.raises(ValueError, match="no row is usable"):
        invert_linear(torch.ones(3, 4), torch.zeros(3))


def test_bad_shapes_and_layers(lenet, cifar_samples):
    images, labels = cifar_samples
    update = shared_gradient(lenet, images[:1], labels[:1])
    with pytest.raises(ValueError, match="weight gradient"):
        invert_linear(torch.ones(3, 4), torch.ones(4))
    with pytest.raises(ValueError, match="not a biased Linear layer"):
        recover_layer_input(lenet, update, "0")
    with pytest.raises(ValueError, match="trainable parameters"):
        recover_layer_input(lenet, update[:-1])
    with pytest.raises(ValueError, match="do not match layer"):
        recover_layer_input(lenet, [*update[:-2], update[-2][:, :10], update[-1]])
