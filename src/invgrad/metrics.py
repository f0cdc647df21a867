"""Image-quality metrics — one definition each, used everywhere (the paper's repo had three PSNRs).

All image metrics take de-normalised images in [0, 1] ([N, C, H, W]); ``to_unit_range`` gets them there by
de-normalising and clamping. Per-image values are returned so that failures (NaN/inf) stay visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity


def to_unit_range(x: torch.Tensor, dm: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """Normalised tensor → clamped [0, 1] image (NaN stays NaN so a failure is not hidden)."""
    return (x.detach().float().cpu() * ds.float().cpu() + dm.float().cpu()).clamp(0, 1)


def mse_per_image(rec: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (rec - truth).pow(2).flatten(1).mean(dim=1)


def psnr_per_image(rec: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """10·log10(range² / MSE) per image; +inf for a perfect match, NaN for a non-finite reconstruction."""
    return 10 * torch.log10(data_range**2 / mse_per_image(rec, truth))


def ssim_per_image(rec: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """SSIM (scikit-image, Gaussian-free 7×7 window) per image on [0, 1] RGB; NaN where rec is not finite."""
    values = []
    for r, t in zip(rec.numpy(), truth.numpy(), strict=True):
        if not np.isfinite(r).all():
            values.append(math.nan)
            continue
        values.append(structural_similarity(r, t, data_range=1.0, channel_axis=0))
    return torch.tensor(values, dtype=torch.float64)


@torch.no_grad()
def feature_mse(model: torch.nn.Module, rec: torch.Tensor, truth: torch.Tensor) -> float:
    """FMSE: mean squared difference of the model's outputs (logits) on reconstruction vs truth (normalised)."""
    was_training = model.training
    model.eval()
    try:
        return float((model(rec) - model(truth)).pow(2).mean())
    finally:
        model.train(was_training)


def label_accuracy(predicted: Sequence[int] | torch.Tensor, truth: Sequence[int] | torch.Tensor) -> float:
    """Fraction of the true labels recovered, as multisets (order of a batch carries no information)."""
    predicted, truth = sorted(torch.as_tensor(predicted).tolist()), sorted(torch.as_tensor(truth).tolist())
    remaining, hits = list(predicted), 0
    for label in truth:
        if label in remaining:
            remaining.remove(label)
            hits += 1
    return hits / len(truth)


def match_images(rec: torch.Tensor, truth: torch.Tensor) -> list[int]:
    """Hungarian pairing maximising total PSNR: order[i] is the reconstruction matched to truth image i.

    A batch reconstruction has no canonical order, so images are paired before scoring.
    """
    n = truth.shape[0]
    cost = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            value = float(psnr_per_image(rec[j : j + 1], truth[i : i + 1])[0])
            cost[i, j] = -value if math.isfinite(value) else 1e9
    rows, cols = linear_sum_assignment(cost)
    return [int(c) for _, c in sorted(zip(rows, cols, strict=True))]


def attack_failed(reconstruction: torch.Tensor) -> bool:
    """The one definition of a failed attack on a user: its reconstruction is not finite, because every restart
    diverged (NaN/inf) and none could be chosen or averaged. Exactly then its PSNR is NaN, which :func:`summarize`
    counts as a failure; the CLI's ``failed`` and a cell's ``status: failed`` are this, whatever the scoring choice.
    """
    return not bool(torch.isfinite(reconstruction).all())


def image_metrics(rec: torch.Tensor, truth: torch.Tensor, match: bool = False) -> dict:
    """Per-image PSNR/MSE/SSIM on [0, 1] images (optionally after Hungarian matching) and their means."""
    order = match_images(rec, truth) if match else list(range(truth.shape[0]))
    rec = rec[order]
    psnr, mse, ssim = psnr_per_image(rec, truth), mse_per_image(rec, truth), ssim_per_image(rec, truth)
    return {
        "pairing": "hungarian" if match else "identity",
        "order": order,
        "psnr": psnr.tolist(),
        "mse": mse.tolist(),
        "ssim": ssim.tolist(),
        "psnr_mean": float(psnr.mean()),
        "mse_mean": float(mse.mean()),
        "ssim_mean": float(ssim.mean()),
    }


def _std(values: np.ndarray) -> float:
    with np.errstate(invalid="ignore"):  # inf - inf in the deviations: std is NaN, as numpy defines it
        return float(values.std())


def summarize(values: Sequence[float]) -> dict:
    """Table statistics over experiments, aggregated as the paper's ``rec_mult.py`` does: failures (NaN) become 0
    (``np.nan_to_num(nan=0)``; ±inf, e.g. PSNR of an exact match, stays inf), then mean, np.std (ddof=0), median,
    min and max over all n values.

    So a failed image pulls the mean down instead of vanishing from it, and ``failures`` (the NaN count) travels
    next to the mean; ``mean_ok`` is the mean over the non-failed values alone, for comparison.
    """
    array = np.asarray(values, dtype=float)
    failed = np.isnan(array)
    paper = np.nan_to_num(array, nan=0.0, posinf=np.inf, neginf=-np.inf)
    stats = {"n": int(array.size), "failures": int(failed.sum())}
    if not array.size:
        return {**stats, **dict.fromkeys(("mean", "mean_ok", "std", "median", "min", "max"), math.nan)}
    return {
        **stats,
        "mean": float(paper.mean()),
        "mean_ok": float(array[~failed].mean()) if (~failed).any() else math.nan,
        "std": _std(paper),
        "median": float(np.median(paper)),
        "min": float(paper.min()),
        "max": float(paper.max()),
    }


def psnr_for_statistics(values) -> np.ndarray:
    """The failure rule for statistics over PSNRs: a failed image (NaN) counts as 0 dB; +inf (a perfect match)
    stays +inf. Unlike ``np.nan_to_num`` with its defaults, which turns +inf into 1.8e308 and so corrupts every
    mean it enters; statistics that need finite values decide for themselves how to treat +inf."""
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0, posinf=np.inf, neginf=-np.inf)
