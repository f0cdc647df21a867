"""The claims' data types and the one margin table (torch-, pandas- and scipy-free): experiment modules declare
their claims with these; :mod:`invgrad.replication.claims` decides them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Margin:
    """A pre-declared margin: the value a claim's difference is tested against, and why that value."""

    value: float
    unit: str
    reason: str


# The one margin table, declared before any result is read. A claim names its row (``Claim.margin``); an extension
# module may give a number instead, which the report marks "declared by the claim".
MARGINS: dict[str, Margin] = {
    "beats_prior": Margin(
        3.0,
        "dB",
        "beats the prior: 3 dB over the PSNR of the data set's mean-colour image (an attacker who learned nothing) "
        "is an error halved in RMS terms (+6 dB is ×0.5 RMS; +3 dB is ×0.71), clearly more than an uninformed guess",
    ),
    "method": Margin(
        0.0,
        "dB",
        "method comparison: the paper claims an ordering (one attack or setting recovers more), not a size; the "
        "smallest size the design can detect is stated per row (mde_db)",
    ),
    "paper_match": Margin(
        2.5,
        "dB",
        "match to the paper's number (equivalence, ±): the smallest margin at which the default design (n = 20, "
        "per-image SD ≈ 3.3 dB on both sides, combined SE ≈ 0.82 dB) shows an exact match equivalent with 80% power "
        "(TOST: (z_0.95 + z_0.90) · SE = 2.39 dB); 0.75 of the paper's per-image SD",
    ),
    "exact_float32": Margin(
        1e-4,
        "relative error",
        "exact recovery in float32: round-off of a chain of float32 products stays below 1e-4",
    ),
    "exact_float64": Margin(
        1e-10, "relative error", "exact recovery in float64: the same chain in float64 stays below 1e-10"
    ),
}
DEFAULT_MARGIN = {  # the margin row a comparison reads when its claim names none
    "paired_greater": "method",
    "beats_prior": "beats_prior",
    "fails_to_beat_prior": "beats_prior",
    "batch_leaks": "beats_prior",
    "matches_paper": "paper_match",
    "within_tolerance": "exact_float32",  # per dtype when decided: float64 rows read exact_float64
}
ATTACKABLE_DB = MARGINS["beats_prior"].value


@dataclass(frozen=True)
class Select:
    """Rows of one experiment: ``where`` holds (column, op, value) filters; ``pick`` keeps the max/min of a column."""

    experiment: str
    where: tuple[tuple[str, str, Any], ...] = ()
    pick: tuple[str, str] | None = None

    def describe(self, fixed: dict[str, Any]) -> str:
        parts = [f"{c}={v}" for c, v in fixed.items()]
        parts += [f"{c}{'=' if op == '==' else op}{v}" for c, op, v in self.where]
        parts += [f"{self.pick[1]} {self.pick[0]}"] if self.pick else []
        return " ".join([self.experiment, *parts])


def eq(**columns) -> tuple[tuple[str, str, Any], ...]:
    return tuple((c, "==", v) for c, v in columns.items())


@dataclass(frozen=True)
class Claim:
    """One claim; ``per`` expands it into one row per distinct value of those columns in the tables.

    ``margin``: a row of :data:`MARGINS` (by name), or a number for a claim outside the paper; ``None`` takes the
    comparison's default row (:data:`DEFAULT_MARGIN`). ``paper_budget``: every cell must have run its method's
    paper budget (:data:`invgrad.replication.claims.gates.PAPER_BUDGET`) — set for claims that compare methods or
    compare with a paper number; other claims are judged at the config's stated budget.
    """

    id: str
    text: str
    paper: str
    comparison: str
    cells: tuple[Select, ...]
    per: tuple[str, ...] = ()
    margin: str | float | None = None
    paper_budget: bool = False
    paper_mean: float | None = None
    paper_sd: float | None = None
    paper_n: int | None = None
    label: str = ""


def margin_of(claim: Claim) -> tuple[str, Margin]:
    """The claim's margin row: (name, Margin); a numeric margin is its own row, "declared by the claim"."""
    key = DEFAULT_MARGIN.get(claim.comparison, "method") if claim.margin is None else claim.margin
    if isinstance(key, str):
        return key, MARGINS[key]
    return f"{float(key):g} dB", Margin(float(key), "dB", f"declared by claim {claim.id}")


def selected_columns(claim: Claim) -> dict[str, set[str]]:
    """``{experiment: columns}`` a claim reads: its filters, picks and ``per`` columns."""
    out: dict[str, set[str]] = {}
    for sel in claim.cells:
        used = out.setdefault(sel.experiment, set())
        used |= {column for column, _, _ in sel.where} | set(claim.per)
        if sel.pick:
            used.add(sel.pick[0])
    return out


def order_key(claim: Claim) -> tuple[int, str]:
    """Claims sort by number, then suffix: 1, 1a, 1b, 2, 2b, ..., 8b (a stable sort keeps same-id rows in order)."""
    match = re.fullmatch(r"(\d+)(.*)", claim.id)
    return (int(match.group(1)), match.group(2)) if match else (10**9, claim.id)
