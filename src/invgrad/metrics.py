"""Image-quality metrics — one definition each, used everywhere (the paper's repo had three PSNRs).

All image metrics take de-normalised images in [0, 1] ([N, C, H, W]); ``to_unit_range`` gets them there by
de-normalising and clamping. Per-image values are returned so that failures (NaN/inf) stay visible.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

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


def match_images(rec: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor | None = None) -> list[int]:
    """Hungarian pairing maximising total PSNR: order[i] is the reconstruction matched to truth image i.

    A batch reconstruction has no canonical order, so images are paired before scoring. With the labels known
    (``labels``: truth image i's label, which candidate i was optimised with) a candidate is only paired with a
    truth of its own label: images of distinct labels keep the identity pairing, and only same-label candidates,
    which the objective cannot tell apart, may swap.
    """
    n = truth.shape[0]
    cost = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            value = float(psnr_per_image(rec[j : j + 1], truth[i : i + 1])[0])
            cost[i, j] = -value if math.isfinite(value) else 1e9
            if labels is not None and int(labels[i]) != int(labels[j]):
                cost[i, j] = 1e12
    rows, cols = linear_sum_assignment(cost)
    return [int(c) for _, c in sorted(zip(rows, cols, strict=True))]


def attack_failed(reconstruction: torch.Tensor) -> bool:
    """The one definition of a failed attack on a user: its reconstruction is not finite, because every restart
    diverged (NaN/inf) and none could be chosen or averaged. Exactly then its PSNR is NaN, which :func:`summarize`
    counts as a failure; the CLI's ``failed`` and a cell's ``status: failed`` are this, whatever the scoring choice.
    """
    return not bool(torch.isfinite(reconstruction).all())


# LPIPS (Zhang et al. 2018) as the field's other frameworks report it: AlexNet features + the linear heads that
# ship in the ``lpips`` wheel. The AlexNet backbone comes from torchvision's weights, which cannot be fetched
# offline, and a randomly initialised backbone gives numbers that mean nothing: without the file, no number.
LPIPS_NO_PACKAGE = "n/a: lpips not installed (pip install -e .[lpips])"
_NO_WEIGHTS = "n/a: no {label} weights (run once online, or put {file} in $TORCH_HOME/hub/checkpoints)"
LPIPS_NO_WEIGHTS = _NO_WEIGHTS.format(label="AlexNet", file="alexnet-owt-7be5be79.pth")
LPIPS_MIN_SIZE = 32  # AlexNet's strided convolutions and pools leave no feature map below this


def _lpips_backbone_weights(net: str):
    import torchvision.models as tvm

    enums = {
        "alex": tvm.AlexNet_Weights.IMAGENET1K_V1,
        "vgg": tvm.VGG16_Weights.IMAGENET1K_V1,
        "squeeze": tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }
    if net not in enums:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {sorted(enums)}")
    return enums[net]


def lpips_weights_path(net: str = "alex") -> Path:
    """Where torch hub keeps the backbone's ImageNet weights (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    url = _lpips_backbone_weights(net).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def lpips_unavailable(net: str = "alex") -> str | None:
    """None when LPIPS can give real values offline, else the "n/a: ..." text to report instead of a number."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return LPIPS_NO_PACKAGE
    path = lpips_weights_path(net)
    if not path.is_file():
        return _NO_WEIGHTS.format(label={"alex": "AlexNet"}.get(net, net.upper()), file=path.name)
    return None


@functools.lru_cache(maxsize=4)
def _lpips_model(net: str) -> torch.nn.Module:
    import warnings

    import lpips

    with warnings.catch_warnings():  # lpips 0.1.4 calls torchvision's deprecated ``pretrained=True``
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net=net, verbose=False).eval()


@torch.no_grad()
def lpips_per_image(
    rec: torch.Tensor, truth: torch.Tensor, net: str = "alex", model: torch.nn.Module | None = None
) -> torch.Tensor:
    """LPIPS distance per image (float64, lower is closer) of [0, 1] images, scaled to [-1, 1] as lpips expects.

    ``model`` is an ``lpips.LPIPS`` to use instead of the cached pretrained one (tests pass a random backbone);
    without it the backbone weights must be present (:func:`lpips_unavailable`; a ValueError names the remedy
    otherwise). Grey images are repeated to three channels; a non-finite reconstruction gives NaN.
    """
    if rec.shape != truth.shape or rec.dim() != 4:
        raise ValueError(
            f"LPIPS needs two [N, C, H, W] tensors of one shape, got {tuple(rec.shape)} and {tuple(truth.shape)}"
        )
    if min(rec.shape[-2:]) < LPIPS_MIN_SIZE:
        raise ValueError(f"LPIPS needs images of at least {LPIPS_MIN_SIZE} px, got {tuple(rec.shape[-2:])}")
    if model is None:
        reason = lpips_unavailable(net)
        if reason is not None:  # else torchvision would try to download the backbone
            raise ValueError(f"LPIPS ({net}) cannot run: {reason}")
        model = _lpips_model(net)
    device = next(model.parameters()).device
    a, b = (x.detach().float().to(device) * 2 - 1 for x in (rec, truth))
    if a.shape[1] == 1:
        a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
    values = model(a, b).flatten().double().cpu()
    finite = torch.isfinite(rec.detach().cpu()).flatten(1).all(dim=1)
    return torch.where(finite, values, torch.full_like(values, math.nan))


def lpips_or_reason(rec: torch.Tensor, truth: torch.Tensor, net: str = "alex") -> list[float] | str:
    """Per-image LPIPS as a list, or the "n/a: ..." reason where it cannot be computed offline, never a number."""
    reason = lpips_unavailable(net)
    if reason is None and min(rec.shape[-2:]) < LPIPS_MIN_SIZE:
        reason = f"n/a: LPIPS needs images of at least {LPIPS_MIN_SIZE} px, got {tuple(rec.shape[-2:])}"
    return reason if reason is not None else lpips_per_image(rec, truth, net).tolist()


def image_metrics(
    rec: torch.Tensor, truth: torch.Tensor, match: bool = False, labels: torch.Tensor | None = None
) -> dict:
    """Per-image PSNR/MSE/SSIM/LPIPS on [0, 1] images (optionally after Hungarian matching) and their means.

    ``labels`` (known to the attacker): matching pairs only candidates and truths of one label (:func:`match_images`).

    ``lpips`` and ``lpips_mean`` hold the "n/a: ..." text of :func:`lpips_or_reason` when LPIPS is unavailable.
    """
    order = match_images(rec, truth, labels) if match else list(range(truth.shape[0]))
    pairing = ("hungarian within labels" if labels is not None else "hungarian") if match else "identity"
    rec = rec[order]
    psnr, mse, ssim = psnr_per_image(rec, truth), mse_per_image(rec, truth), ssim_per_image(rec, truth)
    lpips = lpips_or_reason(rec, truth)  # a list, or the reason text
    return {
        "pairing": pairing,
        "order": order,
        "psnr": psnr.tolist(),
        "mse": mse.tolist(),
        "ssim": ssim.tolist(),
        "psnr_mean": float(psnr.mean()),
        "mse_mean": float(mse.mean()),
        "ssim_mean": float(ssim.mean()),
        "lpips": lpips,
        "lpips_mean": lpips if isinstance(lpips, str) else float(np.mean(lpips)),
    }


def _std(values: np.ndarray) -> float:
    with np.errstate(invalid="ignore"):  # inf - inf in the deviations: std is NaN, as numpy defines it
        return float(values.std())


def psnr_for_mean(values) -> np.ndarray:
    """The one failure rule of every PSNR statistic (tables, convergence, claims): a failed image (NaN, or None
    for a missing value) counts as 0 dB; ±inf (+inf: a perfect match) stays inf — unlike ``np.nan_to_num``'s
    defaults, which turn +inf into 1.8e308. As the paper's ``rec_mult.py`` does with ``np.nan_to_num(nan=0)``;
    statistics that need finite values decide for themselves how to treat +inf (the claims cap it)."""
    array = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    return np.nan_to_num(array, nan=0.0, posinf=np.inf, neginf=-np.inf)


def summarize(values: Sequence[float]) -> dict:
    """Table statistics over experiments, aggregated as the paper's ``rec_mult.py`` does: failures become 0 dB
    (:func:`psnr_for_mean`; ±inf, e.g. PSNR of an exact match, stays inf), then mean, np.std (ddof=0), median,
    min and max over all n values.

    So a failed image pulls the mean down instead of vanishing from it, and ``failures`` (the NaN count) travels
    next to the mean; ``mean_ok`` is the mean over the non-failed values alone, for comparison.
    """
    array = np.asarray(values, dtype=float)
    failed = np.isnan(array)
    paper = psnr_for_mean(array)
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
