import math

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


def test_psnr_for_mean_is_the_one_failure_rule():
    """A failed image (NaN, None) counts as 0 dB; +inf (a perfect match) stays +inf; summarize uses it."""
    assert metrics.psnr_for_mean([10.0, math.nan, None, math.inf]).tolist() == [10.0, 0.0, 0.0, math.inf]
    stats = metrics.summarize([12.0, math.nan, 6.0])
    assert stats["mean"] == pytest.approx(6.0) and stats["failures"] == 1 and stats["min"] == 0.0
    assert metrics.summarize([1.0, math.inf])["mean"] == math.inf
