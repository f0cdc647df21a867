"""One function, :func:`decide`, from the experiment tables to every claim's row (columns :data:`COLUMNS`).

The one decision rule, for every claim: the difference is tested against the claim's margin
(:data:`invgrad.replication.claimdefs.MARGINS`) both ways; *supported* when the 95% CI lies on the claim's side of
the margin and the Holm-corrected p (across the report's rows) is below α, *contradicted* when the CI lies on the
other side and the Holm-corrected p of that direction is below α, *inconclusive* otherwise. Gates
(:mod:`.gates`) come first and give "not run" / "not comparable" with their reason; convergence never vetoes.
The same test on the cells' runs at twice the budget (``psnr_2x``) gives ``verdict_2x``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..claimdefs import Claim, margin_of
from .comparisons import BELOW_MARGIN, CELL_LESS, COMPARISONS
from .gates import Gate, GateKind, common_seeds, gates
from .statistics import ALPHA, holm
from .tables import expansions, finite, primary, read_cell, select, text

VERDICTS = ("supported", "contradicted", "inconclusive", "not comparable", "not run")
NO_2X = "not run: no 2x run"
COLUMNS = [
    "claim",
    "text",
    "comparison",
    "setting",
    "cells",
    "verdict",
    "verdict_2x",
    "robustness",
    "n",
    "seeds",
    "failures",
    "method",
    "statistic",
    "p_value",
    "p_holm",
    "ci_low",
    "ci_high",
    "margin",
    "margin_name",
    "mde_db",
    "win_rate",
    "sign_p",
    "recovery",
    "mcnemar_p",
    "statistic_2x",
    "p_holm_2x",
    "ours",
    "paper",
    "victim_source",
    "image_source",
    "reason",
    "note",
]
EVIDENCE = ("n", "seeds", "failures", "method", "statistic", "p_value", "ci_low", "ci_high", "mde_db", "ours")
EXTRAS = ("win_rate", "sign_p", "recovery", "mcnemar_p", "note")
RULE = {
    "supported": "CI above {margin:g} and Holm p < {alpha}",
    "contradicted": "CI below {margin:g} and Holm p < {alpha} (the other way)",
    "inconclusive": "CI includes {margin:g} or Holm p ≥ {alpha}",
}
RULE_BELOW = {  # claims that the difference lies below the margin (e.g. DLG does not beat the prior by 3 dB)
    "supported": "CI below {margin:g} and Holm p < {alpha}",
    "contradicted": "CI above {margin:g} and Holm p < {alpha} (the other way)",
    "inconclusive": RULE["inconclusive"],
}
RULE_EQUIVALENCE = {
    "supported": "CI within ±{margin:g} and Holm p < {alpha}",
    "contradicted": "CI outside ±{margin:g} and Holm p < {alpha}",
    "inconclusive": "CI overlaps ±{margin:g} or Holm p ≥ {alpha}",
}


def registered_claims() -> tuple[Claim, ...]:
    """The registry's claims now (modules a config loads later are included when they have registered)."""
    from .. import registry

    return registry.all_claims()


def _base(claim: Claim, fixed: dict[str, Any]) -> dict[str, Any]:
    setting = " ".join(str(v) for v in fixed.values())
    if claim.label:
        setting = f"{setting}, vs {claim.label}".strip(", ")
    name, margin = margin_of(claim)
    return {
        **dict.fromkeys(COLUMNS, None),
        "claim": claim.id,
        "text": claim.text,
        "comparison": claim.comparison,
        "setting": setting,
        "cells": " vs ".join(sel.describe(fixed) for sel in claim.cells),
        "margin": margin.value,
        "margin_name": name,
        "paper": claim.paper,
        "reason": "",
        "note": "",
    }


def _once_each(values) -> str:
    """The compared cells' values joined once each, in order, leaving out blanks."""
    return "; ".join(dict.fromkeys(v for v in values if v))


def _victim_sources(cells) -> str:
    """What the compared cells' victims were trained on (source and data hash), once each; '' when all untrained."""
    return _once_each(s for s in (text(c.first("victim_source")) for c in cells) if s != "untrained")


def _image_sources(cells) -> str:
    """Where the compared cells' images came from (table.csv's ``image_source``: source, exact count), once each."""
    summaries = (c.summary for c in cells)
    return _once_each(text(s["image_source"]) for s in summaries if s is not None and "image_source" in s)


def _asked(cell) -> int:
    """The victim seeds the config asked for this cell (its records' ``victim_seeds``; 1 when they do not say)."""
    value = cell.first("victim_seeds")
    return int(float(value)) if finite(value) else 1


def _stated(row: dict[str, Any], gate: Gate) -> dict[str, Any]:
    return {**row, "verdict": gate.verdict, "verdict_2x": gate.verdict, "reason": gate.reason}


def _evaluate(claim: Claim, fixed: dict[str, Any], tables, recovered: float, asked: int) -> dict[str, Any]:
    """The row before Holm: either a stated verdict, or the evidence (``_main``, ``_2x``) to be judged."""
    row = _base(claim, fixed)
    if claim.comparison in CELL_LESS:
        sel = claim.cells[0]
        rows = select(primary(tables, sel.experiment), sel, fixed)
        if rows.empty:
            return _stated(row, Gate(GateKind.NOT_RUN, f"cell {sel.describe(fixed)} not in this config"))
        return {**row, **CELL_LESS[claim.comparison](claim, rows, fixed), "verdict_2x": "not run: no budget"}
    cells = [read_cell(tables, sel, fixed) for sel in claim.cells]
    for cell in cells:
        if isinstance(cell, str):
            return _stated(row, Gate(GateKind.NOT_RUN, cell))
    row["cells"] = " vs ".join(c.name for c in cells)
    row["victim_source"] = _victim_sources(cells)
    row["image_source"] = _image_sources(cells)
    if len(cells) == 2 and cells[0].name == cells[1].name:
        return _stated(row, Gate(GateKind.SAME_CELL, f"both sides select {cells[0].name} (one value only)"))
    gate = gates(claim, cells, max([asked, *(_asked(c) for c in cells)]))
    if gate and not gate.kind.shows_evidence:
        return _stated(row, gate)
    main = COMPARISONS[claim.comparison](claim, cells, "psnr", recovered)
    if isinstance(main, Gate):
        return _stated(row, gate or main)
    row.update({k: main.get(k) for k in EVIDENCE + EXTRAS if k in main})
    if gate:  # the images were attacked alike: the evidence is shown, never judged
        return {**row, "verdict": gate.verdict, "verdict_2x": gate.verdict, "reason": gate.reason}
    left_out = [reason for c in cells for reason in c.below_floor.values()]
    if left_out:
        row["reason"] = (
            f"{'; '.join(left_out)}: its images left out, {len(common_seeds(cells))} seed(s) remain; "
        )
    double = COMPARISONS[claim.comparison](claim, cells, "psnr_2x", recovered)
    return {**row, "_main": main, "_2x": None if isinstance(double, Gate) else double}


def _verdict(evidence: dict[str, Any], p_holm: float) -> str:
    significant = p_holm < ALPHA
    if evidence["holds"] and evidence["side"] == "for" and significant:
        return "supported"
    if evidence["fails"] and evidence["side"] == "against" and significant:
        return "contradicted"
    return "inconclusive"


def _robustness(verdict: str, verdict_2x: str) -> str:
    if verdict_2x not in VERDICTS[:3] or verdict not in VERDICTS[:3]:
        return "not measured: no 2x run" if verdict_2x == NO_2X else ""
    return "stable at 2x" if verdict == verdict_2x else f"budget-sensitive ({verdict_2x} at 2x)"


def decide(tables, claims: tuple[Claim, ...] | None = None, recovered: float = 18.0, seeds: int = 1):
    """Every claim's row, one per (claim, compared pair): columns :data:`COLUMNS`. ``claims`` default to the
    registry's at call time; ``seeds``: the victim seeds per cell the config asks for at least (each cell's
    records also say how many their config asked for, ``victim_seeds``; the larger number is asked)."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"victim seeds per cell must be an integer ≥ 1, got {seeds!r}")
    claims = registered_claims() if claims is None else claims
    rows = [_evaluate(c, fixed, tables, recovered, seeds) for c in claims for fixed in expansions(c, tables)]
    p_main = holm([r["_main"]["p_value"] if r.get("_main") else np.nan for r in rows])
    p_double = holm([r["_2x"]["p_value"] if r.get("_2x") else np.nan for r in rows])
    for row, p, p2 in zip(rows, p_main, p_double, strict=True):
        main, double = row.pop("_main", None), row.pop("_2x", None)
        if main is None:
            continue
        rule = {"matches_paper": RULE_EQUIVALENCE, **dict.fromkeys(BELOW_MARGIN, RULE_BELOW)}.get(
            row["comparison"], RULE
        )
        verdict = _verdict(main, p)
        why = rule[verdict].format(margin=row["margin"], alpha=ALPHA)
        if verdict == "inconclusive" and main.get("why"):
            why = main["why"]
        row.update(verdict=verdict, p_holm=p, reason=row["reason"] + why)
        if double is None:
            row["verdict_2x"] = NO_2X
        else:
            row.update(verdict_2x=_verdict(double, p2), statistic_2x=double["statistic"], p_holm_2x=p2)
        row["robustness"] = _robustness(verdict, row["verdict_2x"])
    out = pd.DataFrame(rows, columns=COLUMNS)
    for column in COLUMNS:
        if column in ("n", "seeds", "failures"):
            out[column] = pd.to_numeric(out[column]).astype("Int64")
        elif column in ("statistic", "p_value", "p_holm", "ci_low", "ci_high", "margin", "mde_db") + (
            "win_rate",
            "sign_p",
            "mcnemar_p",
            "statistic_2x",
            "p_holm_2x",
        ):
            out[column] = pd.to_numeric(out[column]).astype(float)
    if not out.verdict.isin(VERDICTS).all():
        raise ValueError(f"verdicts outside {VERDICTS}: {sorted(set(out.verdict) - set(VERDICTS))}")
    return out
