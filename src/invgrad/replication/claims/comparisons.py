"""The comparisons (:data:`COMPARISONS`): each reads the cells' PSNR column (``psnr``, or ``psnr_2x`` for the
run at twice the budget) and returns the row's evidence: the statistic, its CI and the p-value in the direction
the estimate points (``side``: "for" or "against" the claim), with ``holds`` / ``fails`` saying whether the CI
lies wholly on the claim's side of the margin or wholly on the other. :mod:`.decide` turns that into a verdict
after the Holm correction. A comparison that cannot be made returns a :class:`~.gates.Gate`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ...metrics import psnr_for_mean
from ..claimdefs import MARGINS, Claim, margin_of
from . import statistics as S
from .gates import MIN_PAIRS, Gate, GateKind, common_seeds, preset
from .tables import SEED_COLUMN, CellData

TOLERANCE = {"float32": "exact_float32", "float64": "exact_float64"}  # the margin rows of claim 5


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and frame[column].notna().any()


def _missing(cell: CellData, column: str) -> Gate:
    return Gate(GateKind.NO_DATA, f"{cell.name} has no {column} column")


def _few(n: int, what: str = "paired images") -> Gate | None:
    return Gate(GateKind.FEW_PAIRS, f"n={n} < {MIN_PAIRS} {what}") if n < MIN_PAIRS else None


def _dlg_failures(cell: CellData, values: np.ndarray, recovered: float) -> str:
    """DLG's failure rate beside its mean: DLG is bimodal (images come back whole or not at all)."""
    if preset(cell) != "zhu":
        return ""
    return f"; DLG ({cell.name}) {int((values < recovered).sum())}/{len(values)} below {recovered:g} dB"


def _judge(test: dict[str, Any], margin: float, sense: int) -> dict[str, Any]:
    """The evidence of a difference tested against the margin; ``sense`` +1: the claim says diff > margin."""
    above, below = test["ci_low"] > margin, test["ci_high"] < margin
    p_for, p_against = (
        (test["p_greater"], test["p_less"]) if sense > 0 else (test["p_less"], test["p_greater"])
    )
    side = "for" if (test["statistic"] - margin) * sense > 0 else "against"
    return {
        **{k: test[k] for k in ("statistic", "ci_low", "ci_high", "method", "mde_db", "seeds")},
        "p_value": p_for if side == "for" else p_against,
        "side": side,
        "holds": above if sense > 0 else below,
        "fails": below if sense > 0 else above,
    }


def _bimodal(a: CellData, b: CellData, x: np.ndarray, y: np.ndarray, statistic: float, recovered: float):
    """Win rate (sign test), recovery rates (McNemar), and in words where mean and majority disagree."""
    s = S.signs(x, y)
    wins, losses, n = int((s > 0).sum()), int((s < 0).sum()), len(s)
    ra, rb = x >= recovered, y >= recovered
    out = {
        "win_rate": wins / n,
        "sign_p": S.sign_test(wins, losses),
        "recovery": f"{a.name} {int(ra.sum())}/{n}, {b.name} {int(rb.sum())}/{n} ≥ {recovered:g} dB",
        "mcnemar_p": S.mcnemar(int((ra & ~rb).sum()), int((~ra & rb).sum())),
        "note": "",
    }
    if statistic != 0 and wins != losses and (statistic > 0) != (wins > losses):
        leader, majority = (a.name, b.name) if statistic > 0 else (b.name, a.name)
        count = max(wins, losses)
        out["note"] = (
            f"the mean favours {leader} by {abs(statistic):.2f} dB, but {majority} wins {count} of {n} images "
            f"(sign test p={out['sign_p']:.2g})"
        )
    return out


def _restricted(cells: list[CellData]) -> list[CellData]:
    seeds = common_seeds(cells)
    return [
        CellData(c.name, c.images[c.images[SEED_COLUMN].isin(seeds)], c.summary, c.below_floor) for c in cells
    ]


def paired_greater(claim: Claim, cells: list[CellData], column: str = "psnr", recovered: float = 18.0):
    a, b = _restricted(cells)
    for cell in (a, b):
        if not _has(cell.images, column):
            return _missing(cell, column)
    merged = a.images.merge(b.images, on=[SEED_COLUMN, "target"], suffixes=("_a", "_b"))
    if gate := _few(len(merged)):
        return gate
    x, y = (psnr_for_mean(merged[f"{column}_{s}"]) for s in ("a", "b"))
    margin = margin_of(claim)[1].value
    test = S.paired_test(S.capped(x) - S.capped(y), margin, merged[SEED_COLUMN].to_numpy())
    failures = int(merged[f"{column}_a"].isna().sum() + merged[f"{column}_b"].isna().sum())
    ours = f"{S.capped(x).mean():.2f} vs {S.capped(y).mean():.2f} dB"
    ours += _dlg_failures(a, x, recovered) + _dlg_failures(b, y, recovered)
    return {
        "n": len(merged),
        "failures": failures,
        "ours": ours,
        **_judge(test, margin, +1),
        **_bimodal(a, b, x, y, test["statistic"], recovered),
    }


def _per_update(cell: CellData, column: str):
    """Each image's PSNR and prior from the per-image lists of multi-image updates (a FedAvg user, a batch), with
    the update ``(seed, target)`` as its cluster: one update's images share one reconstruction, so they are not
    independent samples. A :class:`Gate` where the lists are missing or disagree."""
    per_image = "psnr_per_image" + column[len("psnr") :]
    if not _has(cell.images, per_image) or not _has(cell.images, "psnr_prior_per_image"):
        return _missing(cell, f"{per_image} / psnr_prior_per_image")
    values, priors, clusters = [], [], []
    for raw, raw_prior, seed, target in zip(
        cell.images[per_image],
        cell.images.psnr_prior_per_image,
        cell.images[SEED_COLUMN],
        cell.images.target,
        strict=True,
    ):
        v, p = json.loads(raw), json.loads(raw_prior)
        if len(v) != len(p):
            return Gate(GateKind.MISMATCHED_TABLE, f"{cell.name}: {len(v)} PSNRs but {len(p)} priors")
        values += v
        priors += p
        clusters += [f"{seed}/{target}"] * len(v)
    raw_values = np.array([np.nan if v is None else v for v in values], dtype=float)
    return raw_values, np.array(priors, dtype=float), np.array(clusters)


def _multi_image(cell: CellData) -> bool:
    lists = cell.images.get("psnr_per_image")
    return lists is not None and lists.notna().all() and any(len(json.loads(v)) > 1 for v in lists)


def _versus_prior(claim: Claim, cells: list[CellData], column: str, recovered: float, sense: int):
    """Against the mean-colour prior; images of a multi-image update (FedAvg) count singly, clustered by update."""
    (cell,) = _restricted(cells)
    if not _has(cell.images, column):
        return _missing(cell, column)
    if not _has(cell.images, "psnr_prior"):
        return Gate(GateKind.NO_DATA, f"{cell.name} has no psnr_prior column (the mean-colour baseline)")
    if column == "psnr" and _multi_image(cell):
        units = _per_update(cell, column)
        if isinstance(units, Gate):
            return units
        raw, raw_prior, clusters = units
        unit, named = "update", f", clustered by update ({len(set(clusters))} updates)"
    else:
        raw, raw_prior = (
            cell.images[column].to_numpy(dtype=float),
            cell.images.psnr_prior.to_numpy(dtype=float),
        )
        clusters, unit, named = cell.images[SEED_COLUMN].to_numpy(), "seed", ""
    if gate := _few(len(raw), "images"):
        return gate
    x, prior = psnr_for_mean(raw), psnr_for_mean(raw_prior)
    margin = margin_of(claim)[1].value
    test = S.paired_test(S.capped(x) - S.capped(prior), margin, clusters, unit=unit)
    ours = f"{S.capped(x).mean():.2f} dB vs prior {S.capped(prior).mean():.2f} dB"
    return {
        "n": len(x),
        "failures": int(np.isnan(raw).sum()),
        "ours": ours + _dlg_failures(cell, x, recovered),
        **_judge(test, margin, sense),
        "method": test["method"] + named,
        "seeds": len(cell.seeds),
    }


def beats_prior(claim: Claim, cells: list[CellData], column: str = "psnr", recovered: float = 18.0):
    return _versus_prior(claim, cells, column, recovered, +1)


def fails_to_beat_prior(claim: Claim, cells: list[CellData], column: str = "psnr", recovered: float = 18.0):
    return _versus_prior(claim, cells, column, recovered, -1)


BELOW_MARGIN = ("fails_to_beat_prior",)  # comparisons whose claim says the difference lies below the margin


def matches_paper(claim: Claim, cells: list[CellData], column: str = "psnr", recovered: float = 18.0):
    (cell,) = _restricted(cells)
    if not _has(cell.images, column):
        return _missing(cell, column)
    if gate := _few(len(cell.images), "images"):
        return gate
    x = psnr_for_mean(cell.images[column])
    margin = margin_of(claim)[1].value
    test = S.equivalence_test(x, claim.paper_mean, claim.paper_sd, claim.paper_n, margin)
    inside = -margin < test["ci_low"] and test["ci_high"] < margin
    outside = test["ci_high"] < -margin or test["ci_low"] > margin
    side = "for" if abs(test["statistic"]) < margin else "against"
    return {
        "n": len(x),
        "failures": int(cell.images[column].isna().sum()),
        "seeds": len(cell.seeds),
        "ours": f"{S.capped(x).mean():.2f} ± {S.capped(x).std():.2f} dB",
        **{k: test[k] for k in ("statistic", "ci_low", "ci_high", "method", "mde_db")},
        "p_value": test["p_inside"] if side == "for" else test["p_outside"],
        "side": side,
        "holds": inside,
        "fails": outside,
    }


def batch_leaks(claim: Claim, cells: list[CellData], column: str = "psnr", recovered: float = 18.0):
    """Claim 7: the batch beats the prior per image and at least one image is recovered. The batch is the unit
    (its images share one reconstruction): the test needs :data:`~.statistics.MIN_SEEDS_FOR_SEED_TEST`
    independent batches, and runs on their mean differences."""
    (cell,) = _restricted(cells)
    units = _per_update(cell, column)
    if isinstance(units, Gate):
        return units
    raw_values, priors, batches = units
    if gate := _few(len(raw_values), "images"):
        return gate
    if (count := len(set(batches))) < S.MIN_SEEDS_FOR_SEED_TEST:
        return Gate(
            GateKind.FEW_PAIRS,
            f"{count} batch(es) < {S.MIN_SEEDS_FOR_SEED_TEST}: a batch's images share one reconstruction, so the "
            "batch is the unit (experiments.batch.batches)",
        )
    x, prior = psnr_for_mean(raw_values), psnr_for_mean(priors)
    margin = margin_of(claim)[1].value
    result = _judge(S.paired_test(S.capped(x) - S.capped(prior), margin, batches, unit="batch"), margin, +1)
    hits = int((x >= recovered).sum())
    note = f"{hits} image(s) ≥ {recovered:g} dB"
    if result["holds"] and hits == 0:
        result.update(holds=False, why=f"beats the prior but no image ≥ {recovered:g} dB")
    return {
        "n": len(x),
        "failures": int(np.isnan(raw_values).sum()),
        "ours": f"mean {S.capped(x).mean():.2f} dB, max {x.max():.2f} dB, {hits}/{len(x)} ≥ {recovered:g} dB",
        "note": note,
        **result,
        "method": result["method"] + f" ({count} batches)",
        "seeds": len(cell.seeds),
    }


def within_tolerance(claim: Claim, rows: pd.DataFrame, fixed: dict[str, Any]) -> dict[str, Any]:
    """Claim 5 (exact, per-cell table): the worst relative error below the dtype's tolerance; no test needed."""
    dtype = str(fixed.get("dtype", rows.dtype.iloc[0] if "dtype" in rows.columns else "float32"))
    name = TOLERANCE.get(dtype, TOLERANCE["float32"])
    tolerance = MARGINS[name].value
    worst = float(rows.rel_error_max.astype(float).max())
    ok = worst < tolerance
    return {
        "n": len(rows),
        "failures": int(rows.rel_error_max.isna().sum()),
        "statistic": worst,
        "margin": tolerance,
        "margin_name": name,
        "method": "worst case against the tolerance (deterministic)",
        "ours": f"max relative error {worst:.1e}",
        "verdict": "supported" if ok else "contradicted",
        "reason": f"{dtype}: {'below' if ok else 'not below'} tolerance {tolerance:.0e}",
    }


COMPARISONS = {
    "paired_greater": paired_greater,
    "beats_prior": beats_prior,
    "fails_to_beat_prior": fails_to_beat_prior,
    "matches_paper": matches_paper,
    "batch_leaks": batch_leaks,
}
CELL_LESS = {"within_tolerance": within_tolerance}  # comparisons over a per-cell table, not attacked images
