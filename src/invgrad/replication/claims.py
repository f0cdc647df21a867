"""The paper's claims as data, and one function that decides every verdict from the experiment tables.

A verdict must be able to fail: a claim is "supported" only when a paired test on the same images says so
(Wilcoxon signed-rank p < 0.05 and a paired-bootstrap 95% CI beyond the claim's margin), "contradicted" when the
same evidence points the other way, and "inconclusive" otherwise. Before any statistic, gates say when a comparison
cannot be made at all ("not run", "not comparable": different images, a weak victim, a starved budget, no
convergence evidence, fewer than 10 paired images), each with its reason.

* :data:`CLAIMS` — the claims (paper numbers from Table 1 of arXiv 2003.14053), gathered from the experiment
  modules that declare them (:mod:`invgrad.replication.registry`).
* :func:`load_tables` — ``{experiment: (images.csv or None, table.csv or None)}`` from a results folder.
* :func:`decide` — one row per (claim, compared pair): the columns of ``figures/claims.csv`` (:data:`COLUMNS`).
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .claimdefs import ATTACKABLE_DB, Claim, Select, eq  # noqa: F401  (re-exported: the claims' data types)

ALPHA = 0.05
MIN_PAIRS = 10
RESAMPLES = 10_000
SEED = 0
# Equivalence margin for "matches the paper": 2 dB is 0.6 of the paper's per-image SD (3.33 dB), i.e. two per-image
# PSNR distributions that still overlap by about 76%; shifts of that size come from seeds, initialisation and
# library versions alone, while a larger shift changes how the number reads next to the paper's.
DELTA_DB = 2.0
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
# The paper's budget per method family (Table 4 / the DLG paper): neither method may be starved against the other.
PAPER_BUDGET = {"ours": (4800, "signed-Adam iterations"), "zhu": (500, "L-BFGS steps")}
PRESET_OF_METHOD = {"ours": "ours", "zhu": "zhu", "zhu_halfce": "zhu"}
VERDICTS = ("supported", "contradicted", "inconclusive", "not comparable", "not run")
COLUMNS = [
    "claim",
    "text",
    "comparison",
    "setting",
    "cells",
    "verdict",
    "n",
    "failures",
    "statistic",
    "p_value",
    "ci_low",
    "ci_high",
    "margin",
    "ours",
    "paper",
    "victim_source",
    "reason",
]
OPS = {"==": operator.eq, ">": operator.gt, "<": operator.lt, "!=": operator.ne}


def _registered_claims() -> tuple[Claim, ...]:
    from . import registry

    return registry.all_claims()


CLAIMS: tuple[Claim, ...] = (
    _registered_claims()
)  # each experiment module declares its own (registry/<name>.py)


# ---------------------------------------------------------------------------------------------------------------
# Tables


def load_tables(results_dir: str | Path) -> dict[str, tuple[pd.DataFrame | None, pd.DataFrame | None]]:
    """``{experiment: (images.csv or None, table.csv or None)}`` for every experiment folder with either file."""
    root = Path(results_dir)
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        images, table = (folder / "images.csv", folder / "table.csv")
        if images.exists() or table.exists():
            out[folder.name] = tuple(pd.read_csv(f) if f.exists() else None for f in (images, table))
    return out


def _filter(df: pd.DataFrame | None, sel: Select, fixed: dict[str, Any]) -> pd.DataFrame:
    if df is None:
        return pd.DataFrame()
    conditions = [(c, "==", v) for c, v in fixed.items()] + list(sel.where)
    mask = pd.Series(True, index=df.index)
    for column, op, value in conditions:
        if column not in df.columns:
            return df.iloc[0:0]
        mask &= OPS[op](df[column], value)
    rows = df[mask]
    if sel.pick and len(rows) and sel.pick[0] in rows.columns:
        column, how = sel.pick
        rows = rows[rows[column] == getattr(rows[column], how)()]
    return rows


def _frame(tables, experiment: str, which: int) -> pd.DataFrame | None:
    return tables.get(experiment, (None, None))[which]


def _primary(tables, experiment: str) -> pd.DataFrame | None:
    """The per-image table when there is one, else the per-cell one (the analytic experiment has only that)."""
    images, table = tables.get(experiment, (None, None))
    return images if images is not None else table


def _expansions(claim: Claim, tables) -> list[dict[str, Any]]:
    if not claim.per:
        return [{}]
    seen: list[dict[str, Any]] = []
    for sel in claim.cells:
        rows = _filter(_primary(tables, sel.experiment), Select(sel.experiment, sel.where), {})
        if not set(claim.per) <= set(rows.columns):
            continue
        for values in rows[list(claim.per)].drop_duplicates().itertuples(index=False):
            fixed = dict(zip(claim.per, values, strict=True))
            if fixed not in seen:
                seen.append(fixed)
    return seen or [{}]


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def _finite(value) -> bool:
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def paired_test(diff: np.ndarray, seed: int = SEED, resamples: int = RESAMPLES) -> dict[str, float]:
    """Mean paired difference, two-sided Wilcoxon signed-rank p, paired-bootstrap 95% CI of the mean."""
    diff = np.asarray(diff, dtype=float)
    p = 1.0 if np.allclose(diff, 0.0) else float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"statistic": float(diff.mean()), "p_value": p, "ci_low": float(low), "ci_high": float(high)}


def verdict_of(test: dict[str, float], margin: float) -> str:
    """supported: p < α and CI above the margin; contradicted: CI below the margin (and p < α when margin is 0)."""
    significant = test["p_value"] < ALPHA
    if significant and test["ci_low"] > margin:
        return "supported"
    if test["ci_high"] < min(margin, 0.0) and significant or (margin > 0 and test["ci_high"] < margin):
        return "contradicted"
    return "inconclusive"


SWAP = {"supported": "contradicted", "contradicted": "supported"}
RULE = {  # why verdict_of decided as it did (before SWAP), for the reason column
    "supported": "p < {alpha} and CI above {margin:g} dB",
    "contradicted": "CI below {margin:g} dB",
    "inconclusive": "CI includes {margin:g} dB or p ≥ {alpha}",
}


# ---------------------------------------------------------------------------------------------------------------
# Cells and gates


@dataclass
class CellData:
    name: str
    images: pd.DataFrame  # the cell's attacked rows (status != "not run"), one per target
    summary: pd.Series | None  # the cell's table.csv row
    status: str
    reason: str


def _cell(tables, sel: Select, fixed: dict[str, Any]) -> CellData | str:
    """The selected cell, or the reason it cannot be read ("not run: ...")."""
    rows = _filter(_primary(tables, sel.experiment), sel, fixed)
    where = sel.describe(fixed)
    if rows.empty or "cell" not in rows.columns:
        return f"not run: cell {where} not in this config"
    names = list(dict.fromkeys(rows.cell))
    if len(names) > 1:
        return f"not run: selection {where} matches {len(names)} cells ({', '.join(map(str, names))})"
    name = names[0]
    table = _filter(_frame(tables, sel.experiment, 1), sel, fixed)
    summary = (
        table[table.cell == name].iloc[0] if "cell" in table.columns and (table.cell == name).any() else None
    )
    status = rows.status if "status" in rows.columns else pd.Series(["ok"] * len(rows), index=rows.index)
    attacked = rows[status != "not run"]
    if summary is not None and "status" in summary.index and summary.status == "not run" or attacked.empty:
        reason = rows.reason.iloc[0] if "reason" in rows.columns else ""
        if summary is not None and "reason" in summary.index and _text(summary.reason):
            reason = summary.reason
        return f"not run: {_text(reason) or 'cell ' + str(name) + ' was not run'}"
    if "target" in attacked.columns:
        attacked = attacked.drop_duplicates("target")
    return CellData(str(name), attacked, summary, "ok", "")


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _indices(cell: CellData) -> dict[str, Any]:
    if "indices" not in cell.images.columns:
        return {}
    out = {}
    for target, raw in zip(cell.images.target.astype(str), cell.images.indices, strict=True):
        out[target] = json.loads(raw) if isinstance(raw, str) and raw.strip() else None
    return out


def _gate_images(a: CellData, b: CellData) -> str:
    ta, tb = set(a.images.target.astype(str)), set(b.images.target.astype(str))
    if ta != tb:
        return f"not comparable: {a.name} and {b.name} attacked different targets ({len(ta ^ tb)} not shared)"
    ia, ib = _indices(a), _indices(b)
    differ = [t for t in sorted(ta) if ia.get(t) != ib.get(t)] if ia or ib else []
    if differ:
        return f"not comparable: {a.name} and {b.name} attacked different images (target {differ[0]}: indices differ)"
    return ""


def _first(cell: CellData, column: str):
    if column in cell.images.columns and cell.images[column].notna().any():
        return cell.images[column].dropna().iloc[0]
    if cell.summary is not None and column in cell.summary.index:
        return cell.summary[column]
    return None


def _victim_sources(cells: list[CellData]) -> str:
    """What the compared cells' victims were trained on (source and data hash), once each; '' when all untrained."""
    sources = [_text(_first(c, "victim_source")) for c in cells]
    return "; ".join(dict.fromkeys(s for s in sources if s and s != "untrained"))


def _gate_victim(cell: CellData) -> str:
    accuracy, floor = _first(cell, "victim_accuracy"), _first(cell, "victim_floor")
    if _finite(accuracy) and _finite(floor) and float(accuracy) < float(floor):
        return (
            f"not comparable: victim of {cell.name} at {float(accuracy):.1%} < floor {float(floor) * 100:g}%"
        )
    return ""


def _preset(cell: CellData) -> str | None:
    preset = _first(cell, "preset")
    if _text(preset):
        return str(preset)
    return PRESET_OF_METHOD.get(str(_first(cell, "method")))


def _gate_budget(cell: CellData) -> str:
    preset, iterations = _preset(cell), _first(cell, "iterations")
    if preset not in PAPER_BUDGET or not _finite(iterations):
        return ""
    budget, unit = PAPER_BUDGET[preset]
    if float(iterations) < budget:
        return f"not comparable: {cell.name} ran {int(float(iterations)):,} of the paper's {budget:,} {unit}"
    return ""


def _gate_convergence(cell: CellData) -> str:
    summary = cell.summary
    converged = summary.get("converged") if summary is not None else None
    if not _text(converged):
        return f"not comparable: no convergence snapshots for {cell.name}"
    if str(converged).strip().lower() in ("false", "0", "0.0"):
        gain = summary.get("convergence_gain_db")
        more = f" (+{float(gain):.2f} dB from half to full budget)" if _finite(gain) else ""
        return f"not comparable: {cell.name} not converged{more}"
    return ""


def _gates(claim: Claim, cells: list[CellData]) -> str:
    checks = []
    if len(cells) == 2:
        checks.append(lambda: _gate_images(*cells))
    checks += [lambda c=c: _gate_victim(c) for c in cells]
    if claim.paper_budget:
        checks += [lambda c=c: _gate_budget(c) for c in cells]
    checks += [lambda c=c: _gate_convergence(c) for c in cells]
    for check in checks:
        if reason := check():
            return reason
    return ""


# ---------------------------------------------------------------------------------------------------------------
# Comparisons: each returns the row's statistic fields and a verdict (gates already passed, except n)


def _psnr(df: pd.DataFrame, column: str = "psnr") -> np.ndarray:
    return np.nan_to_num(df[column].astype(float).to_numpy(), nan=0.0)


def _failures(df: pd.DataFrame, column: str = "psnr") -> int:
    return int(df[column].isna().sum())


def _paired(claim: Claim, cells: list[CellData], **_) -> dict[str, Any]:
    a, b = cells
    merged = a.images.merge(b.images, on="target", suffixes=("_a", "_b"))
    x, y = _psnr(merged, "psnr_a"), _psnr(merged, "psnr_b")
    row = {
        "n": len(merged),
        "failures": _failures(merged, "psnr_a") + _failures(merged, "psnr_b"),
        "ours": f"{x.mean():.2f} vs {y.mean():.2f} dB",
    }
    return _with_test(row, x - y, claim.margin)


def _with_test(row: dict[str, Any], diff: np.ndarray, margin: float, swap: bool = False) -> dict[str, Any]:
    if len(diff) < MIN_PAIRS:
        return {**row, "verdict": "not comparable", "reason": f"n={len(diff)} < {MIN_PAIRS} paired images"}
    test = paired_test(diff)
    verdict = verdict_of(test, margin)
    reason = RULE[verdict].format(margin=margin, alpha=ALPHA)
    return {**row, **test, "verdict": SWAP.get(verdict, verdict) if swap else verdict, "reason": reason}


def _prior_diff(cell: CellData) -> tuple[np.ndarray, np.ndarray] | str:
    if "psnr_prior" not in cell.images.columns or cell.images.psnr_prior.isna().all():
        return f"not run: {cell.name} has no psnr_prior column (the mean-colour baseline)"
    return _psnr(cell.images), np.nan_to_num(cell.images.psnr_prior.astype(float).to_numpy(), nan=0.0)


def _beats_prior(claim: Claim, cells: list[CellData], swap: bool = False, **_) -> dict[str, Any]:
    (cell,) = cells
    pair = _prior_diff(cell)
    if isinstance(pair, str):
        return {"verdict": "not run", "reason": pair}
    x, prior = pair
    row = {
        "n": len(x),
        "failures": _failures(cell.images),
        "ours": f"{x.mean():.2f} dB vs prior {prior.mean():.2f} dB",
    }
    return _with_test(row, x - prior, claim.margin, swap=swap)


def _fails_to_beat_prior(claim: Claim, cells: list[CellData], **_) -> dict[str, Any]:
    return _beats_prior(claim, cells, swap=True)


def _matches_paper(claim: Claim, cells: list[CellData], **_) -> dict[str, Any]:
    (cell,) = cells
    x = _psnr(cell.images)
    row = {"n": len(x), "failures": _failures(cell.images), "ours": f"{x.mean():.2f} ± {x.std():.2f} dB"}
    if len(x) < MIN_PAIRS:
        return {**row, "verdict": "not comparable", "reason": f"n={len(x)} < {MIN_PAIRS} images"}
    rng = np.random.default_rng(SEED)
    ours = x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))].mean(axis=1)
    paper = rng.normal(claim.paper_mean, claim.paper_sd / math.sqrt(claim.paper_n), size=RESAMPLES)
    low, high = np.percentile(ours - paper, [2.5, 97.5])
    if -DELTA_DB <= low and high <= DELTA_DB:
        verdict = "supported"
    elif high < -DELTA_DB or low > DELTA_DB:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return {
        **row,
        "statistic": float(x.mean() - claim.paper_mean),
        "ci_low": float(low),
        "ci_high": float(high),
        "margin": DELTA_DB,
        "verdict": verdict,
        "reason": f"equivalence margin ±{DELTA_DB:g} dB",
    }


def _within_tolerance(claim: Claim, rows: pd.DataFrame, fixed: dict[str, Any]) -> dict[str, Any]:
    dtype = str(fixed.get("dtype", rows.dtype.iloc[0] if "dtype" in rows.columns else "float32"))
    tolerance = TOLERANCE.get(dtype, TOLERANCE["float32"])
    worst = float(rows.rel_error_max.astype(float).max())
    ok = worst < tolerance
    return {
        "n": len(rows),
        "failures": int(rows.rel_error_max.isna().sum()),
        "statistic": worst,
        "margin": tolerance,
        "ours": f"max relative error {worst:.1e}",
        "verdict": "supported" if ok else "contradicted",
        "reason": f"{dtype}: {'below' if ok else 'not below'} tolerance {tolerance:.0e}",
    }


def _batch_leaks(claim: Claim, cells: list[CellData], recovered: float = 18.0, **_) -> dict[str, Any]:
    (cell,) = cells
    columns = {"psnr_per_image", "psnr_prior_per_image"}
    if not columns <= set(cell.images.columns):
        return {"verdict": "not run", "reason": f"{cell.name} has no per-image PSNR / prior columns"}
    values, priors = [], []
    for raw, raw_prior in zip(cell.images.psnr_per_image, cell.images.psnr_prior_per_image, strict=True):
        v, p = json.loads(raw), json.loads(raw_prior)
        if len(v) != len(p):
            return {"verdict": "not comparable", "reason": f"{cell.name}: {len(v)} PSNRs but {len(p)} priors"}
        values += v
        priors += p
    x = np.nan_to_num(np.array(values, dtype=float), nan=0.0)
    prior = np.nan_to_num(np.array(priors, dtype=float), nan=0.0)
    hits = int((x >= recovered).sum())
    row = {
        "n": len(x),
        "failures": int(np.isnan(np.array(values, dtype=float)).sum()),
        "ours": f"mean {x.mean():.2f} dB, max {x.max():.2f} dB, {hits}/{len(x)} ≥ {recovered:g} dB",
    }
    row = _with_test(row, x - prior, claim.margin)
    if row["verdict"] == "supported" and hits == 0:
        row.update(verdict="inconclusive", reason=f"beats the prior but no image ≥ {recovered:g} dB")
    elif row["verdict"] in ("supported", "contradicted", "inconclusive"):
        row["reason"] += f"; {hits} image(s) ≥ {recovered:g} dB"
    return row


COMPARISONS = {
    "paired_greater": _paired,
    "beats_prior": _beats_prior,
    "fails_to_beat_prior": _fails_to_beat_prior,
    "matches_paper": _matches_paper,
    "batch_leaks": _batch_leaks,
}
CELL_LESS = {"within_tolerance": _within_tolerance}  # comparisons over a per-cell table, not attacked images


# ---------------------------------------------------------------------------------------------------------------
# Deciding


def _base(claim: Claim, fixed: dict[str, Any]) -> dict[str, Any]:
    setting = " ".join(str(v) for v in fixed.values())
    if claim.label:
        setting = f"{setting}, vs {claim.label}".strip(", ")
    return {
        **dict.fromkeys(COLUMNS, None),
        "claim": claim.id,
        "text": claim.text,
        "comparison": claim.comparison,
        "setting": setting,
        "cells": " vs ".join(sel.describe(fixed) for sel in claim.cells),
        "margin": claim.margin,
        "paper": claim.paper,
        "reason": "",
    }


def _decide_one(claim: Claim, fixed: dict[str, Any], tables, recovered: float) -> dict[str, Any]:
    row = _base(claim, fixed)
    if claim.comparison in CELL_LESS:
        sel = claim.cells[0]
        rows = _filter(_primary(tables, sel.experiment), sel, fixed)
        if rows.empty:
            return {
                **row,
                "verdict": "not run",
                "reason": f"not run: cell {sel.describe(fixed)} not in this config",
            }
        return {**row, **CELL_LESS[claim.comparison](claim, rows, fixed)}
    cells = [_cell(tables, sel, fixed) for sel in claim.cells]
    for cell in cells:
        if isinstance(cell, str):
            return {**row, "verdict": "not run", "reason": cell}
    row["cells"] = " vs ".join(c.name for c in cells)
    row["victim_source"] = _victim_sources(cells)
    if len(cells) == 2 and cells[0].name == cells[1].name:
        return {
            **row,
            "verdict": "not run",
            "reason": f"not run: both sides select {cells[0].name} (one value only)",
        }
    if reason := _gates(claim, cells):
        shown = _withheld(claim, cells, reason, recovered)
        note = shown.pop("reason_note", "")
        return {**row, **shown, "verdict": "not comparable", "reason": reason + note}
    result = COMPARISONS[claim.comparison](claim, cells, recovered=recovered)
    if result.get("verdict") == "not run" and not result["reason"].startswith("not run"):
        result["reason"] = "not run: " + result["reason"]
    if result.get("verdict") == "not comparable" and not result["reason"].startswith("not comparable"):
        result["reason"] = "not comparable: " + result["reason"]
    return {**row, **result}


WITHHELD_GATES = ("not converged", " ran ", "< floor")  # the evidence exists but may not be read as a verdict


def _unconverged_gain(cell: CellData) -> float:
    summary = cell.summary
    converged = summary.get("converged") if summary is not None else None
    gain = summary.get("convergence_gain_db") if summary is not None else None
    if str(converged).strip().lower() in ("false", "0", "0.0") and _finite(gain):
        return max(float(gain), 0.0)
    return 0.0


def _shifted(cell: CellData, gain: float) -> CellData:
    images = cell.images.copy()
    images["psnr"] = images.psnr.astype(float) + gain
    return CellData(cell.name, images, cell.summary, cell.status, cell.reason)


def _withheld(claim: Claim, cells: list[CellData], reason: str, recovered: float) -> dict[str, Any]:
    """For a gate that withholds a verdict although the images were attacked alike (not converged, a budget below
    the paper's, a victim below its floor): the statistic anyway, so a reader sees the evidence, and in the reason
    what it would read — also after one more doubling of the budget (each unconverged cell gaining again what its
    last doubling gained). The verdict stays "not comparable"."""
    if not any(gate in reason for gate in WITHHELD_GATES) or claim.comparison not in COMPARISONS:
        return {}
    shown = COMPARISONS[claim.comparison](claim, cells, recovered=recovered)
    if shown.get("verdict") not in ("supported", "contradicted", "inconclusive"):
        return {}
    gains = [_unconverged_gain(c) for c in cells]
    note = f"; withheld: the paired statistic would read '{shown['verdict']}'"
    if any(gains):
        again = COMPARISONS[claim.comparison](
            claim, [_shifted(c, g) for c, g in zip(cells, gains, strict=True)], recovered=recovered
        )
        extra = ", ".join(f"{c.name} +{g:.2f} dB" for c, g in zip(cells, gains, strict=True) if g)
        note += f", and '{again.get('verdict')}' after one more doubling ({extra})"
    fields = {k: shown.get(k) for k in ("n", "failures", "statistic", "p_value", "ci_low", "ci_high", "ours")}
    return {**fields, "reason_note": note}


def decide(tables, claims: tuple[Claim, ...] = CLAIMS, recovered: float = 18.0) -> pd.DataFrame:
    """Every claim's verdict, one row per (claim, compared pair), columns :data:`COLUMNS`."""
    rows = [
        _decide_one(claim, fixed, tables, recovered)
        for claim in claims
        for fixed in _expansions(claim, tables)
    ]
    out = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("statistic", "p_value", "ci_low", "ci_high", "margin"):
        out[column] = pd.to_numeric(out[column]).astype(float)
    for column in ("n", "failures"):
        out[column] = pd.to_numeric(out[column]).astype("Int64")
    assert out.verdict.isin(VERDICTS).all(), out.verdict.unique()
    return out
