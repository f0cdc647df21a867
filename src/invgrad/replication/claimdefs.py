"""The claims' data types (torch-, pandas- and scipy-free): experiment modules declare their claims with these;
:mod:`invgrad.replication.claims` decides them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ATTACKABLE_DB = 3.0  # "beats the prior by 3 dB": clearly more than an attacker who learned nothing outputs


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

    ``paper_budget``: every cell must have run its method's paper budget (:data:`invgrad.replication.claims.PAPER_BUDGET`) — set for claims
    that compare methods (neither may be starved) or compare with a paper number.
    """

    id: str
    text: str
    paper: str
    comparison: str
    cells: tuple[Select, ...]
    per: tuple[str, ...] = ()
    margin: float = 0.0
    paper_budget: bool = False
    paper_mean: float | None = None
    paper_sd: float | None = None
    paper_n: int | None = None
    label: str = ""


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
