"""One experiment's per-image records as tables: images.csv (one row per image and sweep) and table.csv (per cell).

Statistics per cell: :func:`invgrad.metrics.summarize` (mean, np.std, median, min, max, failures); "not run" cells
keep their reason and no numbers. A cell whose records come from more than one spec (a by-hand ``--only`` rerun
with another config, say) is never averaged: it reads ``not run: mixed specs (n of m records from another spec)``.
``scripts/make_table.py`` is the command line of :func:`tables`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping

import pandas as pd

from ..metrics import psnr_for_mean, summarize
from . import registry
from .records import common_row

NOT_RUN = "not run"


def rows(record: dict) -> list[dict]:
    """A record's rows of images.csv: the common columns, the experiment's own (``Experiment.row``), and one row
    per sweep the cell belongs to (``axis``, ``value``)."""
    row = common_row(record)
    row.update(registry.get(record["experiment"]).row(record["spec"], record))
    sweeps = record["spec"].get("sweeps")
    if sweeps:
        return [{**row, "axis": s["axis"], "value": s["value"]} for s in sweeps]
    return [row]


def mean_db(values: Iterable) -> float:
    """Mean PSNR under the one failure rule (:func:`invgrad.metrics.psnr_for_mean`)."""
    return float(psnr_for_mean(list(values)).mean())


def convergence(ran: pd.DataFrame, threshold_db: float) -> dict:
    """Did the last doubling of the budget gain less than ``threshold_db`` of mean PSNR (failures as 0 dB)?

    Half the budget means the same attack run at half the budget (``psnr_half_budget_run``) when the schedule
    decays with the budget — its iterate at half-time has not annealed yet — and otherwise the iterate kept at
    half the budget (L-BFGS, constant step sizes), which is exactly what half the budget gives. No snapshots:
    unknown (None)."""
    curves = [dict((int(i), p) for i, p in json.loads(s)) for s in ran.snapshots]
    if not curves or any(not c for c in curves):
        return {
            "converged": None,
            "convergence_gain_db": None,
            "psnr_mean_half": None,
            "convergence_basis": None,
        }
    last = max(curves[0])
    full = mean_db(c.get(last) for c in curves)
    runs = ran.get("psnr_half_budget_run")
    if runs is not None and runs.notna().all():
        half, basis = mean_db(runs), "half-budget run"
    else:
        at = min(curves[0], key=lambda i: abs(i - last / 2))
        half, basis = mean_db(c.get(at) for c in curves), "iterate at half the budget"
    gain = full - half
    return {
        "converged": bool(gain < threshold_db),
        "convergence_gain_db": gain,
        "psnr_mean_half": half,
        "convergence_basis": basis,
    }


def foreign_records(
    images: pd.DataFrame, expected: Mapping[str, str] | None = None
) -> dict[str, tuple[int, int]]:
    """Per cell whose records do not all come from its spec: (records from another spec, records).

    ``expected``: cell -> :func:`~invgrad.replication.records.spec_digest` of the spec the workflow runs it with;
    a cell it does not name is held to the spec most of its records share."""
    mixed = {}
    for cell, group in images.drop_duplicates(["cell", "target"]).groupby("cell", sort=False):
        digests = group.spec_sha256.tolist()
        want = (expected or {}).get(cell) or Counter(digests).most_common(1)[0][0]
        other = sum(d != want for d in digests)
        if other:
            mixed[cell] = (other, len(digests))
    return mixed


def _cell_entry(ran: pd.DataFrame, convergence_db: float) -> dict:
    stats = summarize(ran.psnr.astype(float).tolist())
    entry = {
        "status": "ok",
        "reason": "",
        **{f"psnr_{k}" if k not in ("n", "failures") else k: v for k, v in stats.items()},
        "ssim_mean": float(ran.ssim.astype(float).mean()),
        "seconds_per_image": float(ran.seconds.astype(float).mean()),
        "victim_accuracy": ran.victim_accuracy.iloc[0],
        "iterations": int(ran.iterations.iloc[0]),
        "restarts": int(ran.restarts.iloc[0]),
        "tv": float(ran.tv.iloc[0]),
    }
    for extra in ("epsilon", "psnr_max"):
        if extra in ran.columns:
            entry[extra] = ran[extra].iloc[0]
    entry.update(convergence(ran, convergence_db))
    return entry


def _remedy(experiment: str, cell: str) -> str:
    return f"rerun the cell: snakemake --forcerun results/{experiment}/{cell}/images.pt"


def tables(
    records: Iterable[dict],
    experiment: str,
    convergence_db: float = 1.0,
    expected: Mapping[str, str] | None = None,
    missing: Mapping[str, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, table) of one experiment: one row per image (and sweep), and one per cell and ``group_keys``.

    ``expected``: see :func:`foreign_records`. ``missing``: cell -> records its folder lacks (deleted by hand,
    say); such a cell reads "not run" until a run of the cell rewrites them."""
    images = pd.DataFrame([row for record in records for row in rows(record)])
    if images.empty:  # every record of the experiment is missing
        images = pd.DataFrame(columns=["cell", "target", "spec_sha256", "status"])
    mixed = foreign_records(images, expected)
    missing = {cell: n for cell, n in (missing or {}).items() if n}
    keys = ["cell", *[k for k in registry.get(experiment).group_keys if k in images.columns]]
    table = []
    for key, group in images.groupby(keys, sort=False, dropna=False):
        entry = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        ran = group[group.status != NOT_RUN]
        if entry["cell"] in missing:
            count = missing[entry["cell"]]
            reason = f"missing records ({count}; {_remedy(experiment, entry['cell'])})"
            entry.update(status=NOT_RUN, reason=reason, n=len(group))
        elif entry["cell"] in mixed:
            other, total = mixed[entry["cell"]]
            reason = f"mixed specs ({other} of {total} records from another spec)"
            entry.update(status=NOT_RUN, reason=reason, n=len(group))
        elif ran.empty:
            entry.update(status=NOT_RUN, reason=group.reason.iloc[0], n=len(group))
        else:
            entry.update(_cell_entry(ran, convergence_db))
        table.append(entry)
    for cell in missing.keys() - set(images.get("cell", ())):  # every record of the cell is missing
        reason = f"missing records ({missing[cell]}; {_remedy(experiment, cell)})"
        table.append({"cell": cell, "status": NOT_RUN, "reason": reason, "n": 0})
    return images, pd.DataFrame(table)
