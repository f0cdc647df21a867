"""Verdicts of two runs of one config that differ only in the base seed, side by side (``figures/stability.csv``).

A verdict that another seed swaps (supported ↔ contradicted) is no verdict; one that moves between a decisive verdict
and "inconclusive" sits near the decision line. The goal: no swap, at most one such move.
"""

from __future__ import annotations

import pandas as pd

from .decide import VERDICTS

DECISIVE = VERDICTS[:2]  # supported, contradicted
JUDGED = VERDICTS[:3]  # ... and inconclusive: what a run with evidence can say
COLUMNS = ("claim", "setting", "verdict", "verdict_other_seed", "change")


def change(verdict: str, other: str) -> str:
    """``same``, ``swap`` (supported ↔ contradicted), ``move`` (decisive ↔ inconclusive) or ``other`` (a row that
    one run could not judge: not run, not comparable, or missing)."""
    if verdict == other:
        return "same"
    if verdict in DECISIVE and other in DECISIVE:
        return "swap"
    if {verdict, other} <= set(JUDGED):
        return "move"
    return "other"


def compare(base: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """One row per (claim, setting) of either run; a row only one run has reads ``missing`` on the other side."""
    keys = ["claim", "setting"]

    def verdicts(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.assign(setting=frame.setting.fillna("").astype(str), claim=frame.claim.astype(str))
        if frame.duplicated(keys).any():
            raise ValueError(
                f"claims.csv repeats (claim, setting): {frame[frame.duplicated(keys)][keys].values}"
            )
        return frame[[*keys, "verdict"]]

    both = verdicts(base).merge(
        verdicts(other), on=keys, how="outer", suffixes=("", "_other_seed"), sort=False
    )
    both = both.fillna({"verdict": "missing", "verdict_other_seed": "missing"})
    both["change"] = [change(a, b) for a, b in zip(both.verdict, both.verdict_other_seed, strict=True)]
    return both[list(COLUMNS)]


def summary(table: pd.DataFrame) -> dict:
    """Counts of each change and whether the goal (no swap, at most one move) holds."""
    counts = table.change.value_counts().to_dict()
    swaps, moves = counts.get("swap", 0), counts.get("move", 0)
    return {
        "rows": len(table),
        "same": counts.get("same", 0),
        "swaps": swaps,
        "moves": moves,
        "other": counts.get("other", 0),
        "goal_met": swaps == 0 and moves <= 1,
    }
