"""Reading the experiment tables: load a results folder, select a claim's rows, and read one cell's attacked
images, with its victim seeds (column ``victim_seed``; one seed when the table has none)."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..claimdefs import Claim, Select

OPS = {"==": operator.eq, ">": operator.gt, "<": operator.lt, "!=": operator.ne}
SEED_COLUMN = "victim_seed"


def load_tables(results_dir: str | Path) -> dict[str, tuple[pd.DataFrame | None, pd.DataFrame | None]]:
    """``{experiment: (images.csv or None, table.csv or None)}`` for every experiment folder with either file."""
    root = Path(results_dir)
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        images, table = (folder / "images.csv", folder / "table.csv")
        if images.exists() or table.exists():
            out[folder.name] = tuple(pd.read_csv(f) if f.exists() else None for f in (images, table))
    return out


def text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def finite(value) -> bool:
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def select(df: pd.DataFrame | None, sel: Select, fixed: dict[str, Any]) -> pd.DataFrame:
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


def primary(tables, experiment: str) -> pd.DataFrame | None:
    """The per-image table when there is one, else the per-cell one (the analytic experiment has only that)."""
    images, table = tables.get(experiment, (None, None))
    return images if images is not None else table


def expansions(claim: Claim, tables) -> list[dict[str, Any]]:
    """One ``{column: value}`` per distinct value of the claim's ``per`` columns in its tables."""
    if not claim.per:
        return [{}]
    seen: list[dict[str, Any]] = []
    for sel in claim.cells:
        rows = select(primary(tables, sel.experiment), Select(sel.experiment, sel.where), {})
        if not set(claim.per) <= set(rows.columns):
            continue
        for values in rows[list(claim.per)].drop_duplicates().itertuples(index=False):
            fixed = dict(zip(claim.per, values, strict=True))
            if fixed not in seen:
                seen.append(fixed)
    return seen or [{}]


@dataclass
class CellData:
    """One cell's attacked images (one row per (victim seed, target)), its table.csv row, and the victim seeds
    left out because their victim is below its accuracy floor (``{seed: reason}``); ``attacked``: every attacked
    row, those seeds included (the images gate compares what was attacked)."""

    name: str
    images: pd.DataFrame
    summary: pd.Series | None
    below_floor: dict[Any, str] = field(default_factory=dict)
    attacked: pd.DataFrame | None = None

    @property
    def seeds(self) -> list[Any]:
        return list(dict.fromkeys(self.images[SEED_COLUMN]))

    def first(self, column: str):
        if column in self.images.columns and self.images[column].notna().any():
            return self.images[column].dropna().iloc[0]
        if self.summary is not None and column in self.summary.index:
            return self.summary[column]
        return None


def _below_floor(rows: pd.DataFrame, name: str) -> dict[Any, str]:
    if not {"victim_accuracy", "victim_floor"} <= set(rows.columns):
        return {}
    out = {}
    for seed, group in rows.groupby(SEED_COLUMN, sort=False):
        accuracy, floor = group.victim_accuracy.iloc[0], group.victim_floor.iloc[0]
        if finite(accuracy) and finite(floor) and float(accuracy) < float(floor):
            out[seed] = (
                f"victim seed {seed} of {name} at {float(accuracy):.1%} < floor {float(floor) * 100:g}%"
            )
    return out


def read_cell(tables, sel: Select, fixed: dict[str, Any]) -> CellData | str:
    """The selected cell, or the reason it cannot be read ("not run: ...")."""
    rows = select(primary(tables, sel.experiment), sel, fixed)
    where = sel.describe(fixed)
    if rows.empty or "cell" not in rows.columns:
        return f"not run: cell {where} not in this config"
    names = list(dict.fromkeys(rows.cell))
    if len(names) > 1:
        return f"not run: selection {where} matches {len(names)} cells ({', '.join(map(str, names))})"
    name = names[0]
    table = select(tables.get(sel.experiment, (None, None))[1], sel, fixed)
    summary = (
        table[table.cell == name].iloc[0] if "cell" in table.columns and (table.cell == name).any() else None
    )
    status = rows.status if "status" in rows.columns else pd.Series(["ok"] * len(rows), index=rows.index)
    attacked = rows[status != "not run"]
    if summary is not None and "status" in summary.index and summary.status == "not run" or attacked.empty:
        reason = rows.reason.iloc[0] if "reason" in rows.columns else ""
        if summary is not None and "reason" in summary.index and text(summary.reason):
            reason = summary.reason
        return f"not run: {text(reason) or 'cell ' + str(name) + ' was not run'}"
    if SEED_COLUMN not in attacked.columns:
        attacked = attacked.assign(**{SEED_COLUMN: 0})
    if "target" in attacked.columns:
        attacked = attacked.drop_duplicates([SEED_COLUMN, "target"])
    below = _below_floor(attacked, str(name))
    kept = attacked[~attacked[SEED_COLUMN].isin(list(below))]
    return CellData(str(name), kept, summary, below, attacked)
