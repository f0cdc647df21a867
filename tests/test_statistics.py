"""invgrad.replication.claims.statistics: known answers for every statistic behind a verdict, and the +inf rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from invgrad.metrics import psnr_for_mean
from invgrad.replication.claims import statistics as S


def test_holm_on_a_fixed_p_vector():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> raised to the running max 0.06
    got = S.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_nan = S.holm([0.01, np.nan, 0.04])  # a row without a test does not count in m
    assert np.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.04])
    assert S.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_mcnemar_on_a_fixed_table():
    # 1 image recovered by A only, 9 by B only: exact two-sided p = 2·(C(10,0)+C(10,1))/2^10 = 22/1024
    assert S.mcnemar(1, 9) == pytest.approx(22 / 1024)
    assert S.mcnemar(0, 0) == 1.0


def test_sign_test_known_answer():
    # the DLG example: the proposed attack wins 8 of 20 images
    assert S.sign_test(8, 12) == pytest.approx(sum(math.comb(20, k) for k in range(9)) * 2 / 2**20)
    assert S.sign_test(8, 12) == pytest.approx(0.5034, abs=1e-4)


def test_mde_formula():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert S.mde_db(3.6, 26) == pytest.approx(z * 3.6 / math.sqrt(26))
    assert S.mde_db(3.6, 26) < 2.0 < S.mde_db(3.6, 25)  # "a 2 dB effect at SD 3.6 dB needs about 26 images"
    assert math.isnan(S.mde_db(3.6, 1))


def test_cluster_bootstrap_is_the_image_bootstrap_with_one_seed():
    diff = np.random.default_rng(0).normal(1.0, 2.0, 20)
    assert S.cluster_bootstrap_ci(diff, np.zeros(20, dtype=int)) == S.bootstrap_ci(diff)
    assert S.cluster_bootstrap_ci(diff) == S.bootstrap_ci(diff)


def test_cluster_bootstrap_carries_the_seed_variance():
    rng = np.random.default_rng(1)
    offsets = np.repeat([-3.0, 0.0, 3.0, 6.0], 10)  # seeds differ far more than images within a seed
    diff = offsets + rng.normal(0, 0.5, 40)
    seeds = np.repeat([0, 1, 2, 3], 10)
    low, high = S.cluster_bootstrap_ci(diff, seeds)
    plain_low, plain_high = S.bootstrap_ci(diff)
    assert low < diff.mean() < high and high - low > 1.5 * (plain_high - plain_low)


def test_paired_test_against_the_margin_both_ways():
    diff = np.random.default_rng(2).normal(1.0, 0.3, 30)
    test = S.paired_test(diff, margin=2.0)
    assert test["p_less"] == pytest.approx(stats.wilcoxon(diff - 2.0, alternative="less").pvalue)
    assert test["p_greater"] > 0.99 and test["ci_high"] < 2.0 and test["seeds"] == 1
    assert test["mde_db"] == pytest.approx(S.mde_db(diff.std(ddof=1), 30))


def test_paired_test_runs_on_seed_means_with_three_seeds():
    rng = np.random.default_rng(3)
    seeds = np.repeat([0, 1, 2], 12)
    diff = rng.normal(2.0, 1.0, 36)
    test = S.paired_test(diff, 0.0, seeds)
    means = np.array([diff[seeds == s].mean() for s in range(3)])
    assert test["p_greater"] == pytest.approx(stats.ttest_1samp(means, 0.0, alternative="greater").pvalue)
    assert test["method"].startswith("t-test on 3 per-seed mean differences") and test["seeds"] == 3
    two = S.paired_test(diff[:24], 0.0, seeds[:24])
    assert two["method"].startswith("Wilcoxon signed-rank per image (2 seeds pooled), cluster bootstrap")


def test_psnr_for_mean_keeps_inf_and_zeroes_failures():
    got = psnr_for_mean([12.0, np.nan, np.inf])
    assert got[0] == 12.0 and got[1] == 0.0 and got[2] == np.inf
    assert np.nan_to_num(np.array([np.inf]))[0] > 1e308  # the bug this replaces


def test_inf_wins_sign_tests_and_is_capped_for_means():
    x = psnr_for_mean([np.inf, np.inf, 20.0])
    y = psnr_for_mean([30.0, np.inf, 25.0])
    assert list(S.signs(x, y)) == [1, 0, -1]  # a perfect match beats 30 dB, ties another perfect match
    diff = S.capped(x) - S.capped(y)
    assert list(diff) == [S.PSNR_CAP_DB - 30.0, 0.0, -5.0]
    test = S.paired_test(
        np.array([np.inf] + [1.0] * 11)
    )  # an uncapped +inf difference is capped, not 1.8e308
    assert test["statistic"] == pytest.approx((S.PSNR_CAP_DB + 11) / 12)
