import math
import warnings

import numpy as np
import pytest
import torch

from invgrad import metrics
from invgrad.attack.objectives import layer_weights, total_variation


def test_psnr_known_values():
    truth = torch.zeros(2, 3, 4, 4)
    rec = truth.clone()
    rec[0] += 0.1  # MSE 0.01 -> 20 dB
    rec[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert metrics.psnr_per_image(rec, truth).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)


def test_psnr_failure_is_nan_and_counted():
    truth = torch.zeros(2, 3, 4, 4)
    rec = torch.full_like(truth, 0.1)
    rec[1, 0, 0, 0] = math.nan
    psnr = metrics.psnr_per_image(rec, truth).tolist()
    assert math.isnan(psnr[1])
    summary = metrics.summarize(psnr)
    assert summary["failures"] == 1 and summary["n"] == 2
    assert summary["mean"] == pytest.approx(
        10.0, abs=1e-4
    )  # the paper's aggregation: NaN -> 0, then the mean
    assert summary["mean_ok"] == pytest.approx(20.0, abs=1e-4)


def test_summary_follows_the_papers_nan_to_zero_aggregation():
    values = [20.0, math.nan, 30.0, math.nan]
    summary = metrics.summarize(values)
    as_paper = np.nan_to_num(np.array(values))  # rec_mult.py: NaN -> 0 before every statistic
    assert summary["n"] == 4 and summary["failures"] == 2
    assert summary["mean"] == pytest.approx(float(as_paper.mean())) == pytest.approx(12.5)
    assert summary["std"] == pytest.approx(float(as_paper.std()))
    assert (summary["median"], summary["min"], summary["max"]) == (10.0, 0.0, 30.0)
    assert summary["mean_ok"] == pytest.approx(25.0)
    exact = metrics.summarize([math.inf, 20.0])  # an exact match stays +inf, not 1.8e308
    assert exact["max"] == math.inf and exact["failures"] == 0
    all_failed = metrics.summarize([math.nan, math.nan])
    assert all_failed["failures"] == 2 and all_failed["mean"] == 0.0 and math.isnan(all_failed["mean_ok"])
    assert math.isnan(metrics.summarize([])["mean"])


def test_summary_uses_population_std():
    summary = metrics.summarize([10.0, 20.0])
    assert summary["std"] == pytest.approx(5.0) and summary["median"] == 15.0


def test_to_unit_range_clamps_after_denormalising():
    dm, ds = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    x = torch.tensor([-4.0, 0.0, 4.0]).reshape(1, 3, 1, 1)
    assert metrics.to_unit_range(x, dm, ds).flatten().tolist() == [0.0, 0.5, 1.0]


def test_tv_known_value():
    x = torch.zeros(1, 1, 2, 3)
    x[..., 1] = 1.0  # columns 0,1,0: |dx| = 1 everywhere (4 entries), dy = 0
    assert float(total_variation(x)) == pytest.approx(1.0)
    y = torch.zeros(1, 1, 2, 2)
    y[..., 1, :] = 2.0  # rows differ by 2; dx = 0
    assert float(total_variation(y)) == pytest.approx(2.0)


def test_ssim_identity_and_noise():
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.random((2, 3, 32, 32))).float()
    assert metrics.ssim_per_image(truth, truth).tolist() == pytest.approx([1.0, 1.0])
    noisy = (truth + 0.3 * torch.randn_like(truth)).clamp(0, 1)
    assert all(v < 0.8 for v in metrics.ssim_per_image(noisy, truth).tolist())


def test_hungarian_matching_restores_the_pairing():
    truth = torch.stack([torch.full((3, 8, 8), v) for v in (0.1, 0.5, 0.9)])
    rec = truth[[2, 0, 1]] + 0.01
    out = metrics.image_metrics(rec, truth, match=True)
    assert out["order"] == [1, 2, 0] and out["pairing"] == "hungarian"
    assert min(out["psnr"]) == pytest.approx(40.0, abs=1e-3)


def test_known_labels_pair_candidates_only_within_their_label():
    truth = torch.stack([torch.full((3, 8, 8), v) for v in (0.1, 0.5, 0.9)])
    rec = truth[[2, 0, 1]] + 0.01  # every candidate looks like another label's truth
    distinct = metrics.image_metrics(rec, truth, match=True, labels=torch.tensor([0, 1, 2]))
    assert distinct["order"] == [0, 1, 2] and distinct["pairing"] == "hungarian within labels"
    same = metrics.image_metrics(rec, truth, match=True, labels=torch.tensor([4, 4, 4]))
    assert same["order"] == [1, 2, 0]  # one label: free to pair as the PSNR says
    two = metrics.image_metrics(rec, truth, match=True, labels=torch.tensor([3, 4, 3]))
    assert two["order"][1] == 1 and sorted(two["order"]) == [0, 1, 2]


def test_label_accuracy_is_order_free():
    assert metrics.label_accuracy([3, 1, 2], [1, 2, 3]) == 1.0
    assert metrics.label_accuracy([1, 1], [1, 2]) == 0.5


def test_layer_weights_select_and_weigh():
    target = [torch.ones(2) * v for v in (1.0, 5.0, 3.0, 0.5)]
    assert layer_weights("def", "equal", target).tolist() == [1, 1, 1, 1]
    assert layer_weights("top2", "equal", target).tolist() == [0, 1, 1, 0]
    assert layer_weights("first1", "equal", target).tolist() == [1, 0, 0, 0]
    assert layer_weights("last2", "equal", target).tolist() == [0, 0, 1, 1]
    assert layer_weights("def", "linear", target).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert float(layer_weights("def", "exp", target).sum()) == pytest.approx(1.0)


# -- LPIPS: the plumbing, offline, with a randomly initialised AlexNet backbone (real values need its weights) --


@pytest.fixture(scope="module")
def random_lpips():
    import lpips  # the lpips extra is part of dev: a missing package fails here, it is not skipped

    torch.manual_seed(0)
    with warnings.catch_warnings():  # lpips 0.1.4 passes torchvision's deprecated ``pretrained``
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_lpips_per_image_scales_to_minus_one_one_and_keeps_failures(random_lpips):
    torch.manual_seed(1)
    truth, rec = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    rec[2] = math.nan
    values = metrics.lpips_per_image(rec, truth, model=random_lpips)
    assert values.shape == (3,) and values.dtype == torch.float64
    with torch.no_grad():
        direct = random_lpips(rec[:2] * 2 - 1, truth[:2] * 2 - 1).flatten().double()
    assert values[:2].tolist() == pytest.approx(direct.tolist(), rel=1e-6)
    assert (values[:2] > 0).all() and math.isnan(values[2])
    assert metrics.lpips_per_image(truth, truth, model=random_lpips).abs().max() < 1e-6


def test_lpips_repeats_grey_images_and_refuses_tiny_ones(random_lpips):
    grey = torch.rand(2, 1, 32, 32)
    values = metrics.lpips_per_image(grey, grey.flip(0), model=random_lpips)
    expected = metrics.lpips_per_image(
        grey.repeat(1, 3, 1, 1), grey.flip(0).repeat(1, 3, 1, 1), model=random_lpips
    )
    assert values.tolist() == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match="at least 32 px"):
        metrics.lpips_per_image(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), model=random_lpips)


def test_lpips_without_backbone_weights_is_the_na_text_never_a_number(empty_hub):
    truth, rec = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert metrics.lpips_weights_path() == empty_hub / "checkpoints" / "alexnet-owt-7be5be79.pth"
    out = metrics.image_metrics(rec, truth)
    assert out["lpips"] == out["lpips_mean"] == metrics.LPIPS_NO_WEIGHTS
    with pytest.raises(ValueError, match=r"LPIPS \(alex\) cannot run: n/a: no AlexNet weights"):
        metrics.lpips_per_image(rec, truth)  # asked directly: one clear line, no download attempt
    assert metrics.LPIPS_NO_WEIGHTS == (
        "n/a: no AlexNet weights (run once online, or put alexnet-owt-7be5be79.pth in $TORCH_HOME/hub/checkpoints)"
    )


def test_lpips_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "lpips", None)  # import lpips -> ImportError
    assert (
        metrics.lpips_or_reason(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
        == metrics.LPIPS_NO_PACKAGE
    )


def test_image_metrics_carry_lpips_per_image_when_the_weights_are_present(
    random_lpips, empty_hub, monkeypatch
):
    weights = metrics.lpips_weights_path()
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")  # only its presence is checked; the model below stands in for the pretrained one
    monkeypatch.setattr(metrics, "_lpips_model", lambda net: random_lpips)
    truth = torch.rand(3, 3, 32, 32)
    rec = truth[[2, 0, 1]] + 0.05 * torch.randn(3, 3, 32, 32)
    out = metrics.image_metrics(rec.clamp(0, 1), truth, match=True)
    expected = metrics.lpips_per_image(rec.clamp(0, 1)[out["order"]], truth, model=random_lpips)
    assert out["lpips"] == pytest.approx(expected.tolist()) and len(out["lpips"]) == 3
    assert out["lpips_mean"] == pytest.approx(float(expected.mean()))
    small = metrics.image_metrics(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    assert small["lpips"].startswith("n/a: LPIPS needs images of at least 32 px")


def test_psnr_for_mean_is_the_one_failure_rule():
    """A failed image (NaN, None) counts as 0 dB; +inf (a perfect match) stays +inf; summarize uses it."""
    assert metrics.psnr_for_mean([10.0, math.nan, None, math.inf]).tolist() == [10.0, 0.0, 0.0, math.inf]
    stats = metrics.summarize([12.0, math.nan, 6.0])
    assert stats["mean"] == pytest.approx(6.0) and stats["failures"] == 1 and stats["min"] == 0.0
    assert metrics.summarize([1.0, math.inf])["mean"] == math.inf
