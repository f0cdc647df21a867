"""The statistics behind every verdict: paired tests against a margin, the cluster bootstrap, Holm, the sign test,
McNemar, the equivalence test for a paper number, and the minimum detectable effect.

PSNRs enter through :func:`invgrad.metrics.psnr_for_mean` (a failed image, NaN, counts as 0 dB; +inf stays
+inf). Here +inf is handled once: signs (sign test, recovery counts) use the uncapped values, so a perfect match
beats any finite PSNR and ties with another perfect match; means, CIs and the tests of the mean cap PSNRs at
:data:`PSNR_CAP_DB`, above which a reconstruction equals its image to better than 16-bit precision.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
RESAMPLES = 10_000
SEED = 0
PSNR_CAP_DB = 100.0
MIN_SEEDS_FOR_SEED_TEST = 3  # fewer victim seeds than this: the paired test runs per image


def capped(values: np.ndarray) -> np.ndarray:
    """PSNRs for means and tests of the mean: +inf (and anything above the cap) becomes :data:`PSNR_CAP_DB`."""
    return np.minimum(np.asarray(values, dtype=float), PSNR_CAP_DB)


def signs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """+1 where x beats y, -1 where y beats x, 0 for a tie (two perfect matches, +inf and +inf, tie)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return (x > y).astype(int) - (x < y).astype(int)


def bootstrap_ci(diff: np.ndarray, seed: int = SEED, resamples: int = RESAMPLES) -> tuple[float, float]:
    """95% percentile CI of the mean, resampling images with replacement."""
    diff = np.asarray(diff, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def cluster_bootstrap_ci(
    diff: np.ndarray, clusters: np.ndarray | None = None, seed: int = SEED, resamples: int = RESAMPLES
) -> tuple[float, float]:
    """95% CI of the mean by a two-stage (hierarchical) bootstrap: victim seeds with replacement, then images with
    replacement within each drawn seed. With one seed the first stage has one outcome and is skipped, so the CI is
    exactly :func:`bootstrap_ci`."""
    diff = np.asarray(diff, dtype=float)
    clusters = np.zeros(len(diff), dtype=int) if clusters is None else np.asarray(clusters)
    keys = list(dict.fromkeys(clusters.tolist()))
    if len(keys) == 1:
        return bootstrap_ci(diff, seed, resamples)
    rng = np.random.default_rng(seed)
    groups = [diff[clusters == k] for k in keys]
    drawn = rng.integers(0, len(keys), size=(resamples, len(keys)))
    sums, counts = np.zeros(drawn.shape), np.zeros(drawn.shape)
    for index, values in enumerate(groups):
        slots = drawn == index
        picks = rng.integers(0, len(values), size=(int(slots.sum()), len(values)))
        sums[slots] = values[picks].sum(axis=1)
        counts[slots] = len(values)
    low, high = np.percentile(sums.sum(axis=1) / counts.sum(axis=1), [2.5, 97.5])
    return float(low), float(high)


def mde_db(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest paired effect (distance from the margin) detected with the given power:
    (z_{1-α/2} + z_{power}) · SD / √n (normal approximation; n and SD of the unit the test runs on)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * sd / math.sqrt(n))


def _wilcoxon(shifted: np.ndarray, alternative: str) -> float:
    if np.allclose(shifted, 0.0):
        return 1.0
    return float(stats.wilcoxon(shifted, alternative=alternative).pvalue)


def _ttest(values: np.ndarray, margin: float, alternative: str) -> float:
    p = float(stats.ttest_1samp(values, margin, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p) else p


def paired_test(
    diff: np.ndarray,
    margin: float = 0.0,
    clusters: np.ndarray | None = None,
    seed: int = SEED,
    unit: str = "seed",
) -> dict[str, object]:
    """The paired difference tested against ``margin`` both ways (one-sided p of diff > margin and of diff <
    margin), its cluster-bootstrap 95% CI and the design's minimum detectable effect.

    With ≥ :data:`MIN_SEEDS_FOR_SEED_TEST` victim seeds the unit is the seed: a one-sample t-test on the per-seed
    mean differences (images within a seed are not independent). Otherwise a Wilcoxon signed-rank test on the
    per-image differences minus the margin. ``unit`` names the clusters in ``method`` (claim 7's are batches).
    """
    diff = np.clip(np.asarray(diff, dtype=float), -PSNR_CAP_DB, PSNR_CAP_DB)  # ±inf differences: capped
    clusters = np.zeros(len(diff), dtype=int) if clusters is None else np.asarray(clusters)
    keys = list(dict.fromkeys(clusters.tolist()))
    if len(keys) >= MIN_SEEDS_FOR_SEED_TEST:
        units = np.array([diff[clusters == k].mean() for k in keys])
        p_greater, p_less = _ttest(units, margin, "greater"), _ttest(units, margin, "less")
        method = f"t-test on {len(keys)} per-{unit} mean differences, cluster bootstrap CI"
    else:
        units = diff
        p_greater, p_less = _wilcoxon(diff - margin, "greater"), _wilcoxon(diff - margin, "less")
        pooled = f" ({len(keys)} {unit}s pooled)" if len(keys) > 1 else ""
        method = f"Wilcoxon signed-rank per image{pooled}, {'cluster ' if len(keys) > 1 else ''}bootstrap CI"
    low, high = cluster_bootstrap_ci(diff, clusters, seed)
    sd = float(units.std(ddof=1)) if len(units) > 1 else math.nan
    return {
        "statistic": float(diff.mean()),
        "p_greater": p_greater,
        "p_less": p_less,
        "ci_low": low,
        "ci_high": high,
        "method": method,
        "mde_db": mde_db(sd, len(units)),
        "seeds": len(keys),
    }


def equivalence_test(
    x: np.ndarray, paper_mean: float, paper_sd: float, paper_n: int, margin: float, seed=SEED
):
    """Our mean against a published mean ± SD (n): TOST for |diff| < margin (p = the larger one-sided p) and the
    test for |diff| > margin (the smaller one-sided p), on the normal approximation with the combined standard
    error; the CI combines a bootstrap of our mean with the paper's sampling distribution."""
    x = capped(x)
    diff = float(x.mean() - paper_mean)
    se = math.hypot(x.std(ddof=1) / math.sqrt(len(x)), paper_sd / math.sqrt(paper_n))
    inside = max(stats.norm.sf((diff + margin) / se), stats.norm.cdf((diff - margin) / se))
    outside = min(stats.norm.cdf((diff + margin) / se), stats.norm.sf((diff - margin) / se))
    rng = np.random.default_rng(seed)
    ours = x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))].mean(axis=1)
    paper = rng.normal(paper_mean, paper_sd / math.sqrt(paper_n), size=RESAMPLES)
    low, high = np.percentile(ours - paper, [2.5, 97.5])
    z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
    return {
        "statistic": diff,
        "p_inside": float(inside),
        "p_outside": float(outside),
        "ci_low": float(low),
        "ci_high": float(high),
        "method": "equivalence (TOST, normal approximation, combined SE)",
        "mde_db": float(z * se),
    }


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries (rows without a test) stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test (ties dropped before counting)."""
    return 1.0 if wins + losses == 0 else float(stats.binomtest(wins, wins + losses, 0.5).pvalue)


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact McNemar test on the discordant pairs (recovered by one method only): two-sided binomial p."""
    return sign_test(only_a, only_b)
