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

    With a twice-the-budget run (``psnr_2x``) the doubling is measured: that run against the budget's result.
    Without one, the iterate kept at half the budget (snapshots) against the end stands in; that is what half the
    budget gives only without a schedule (L-BFGS, constant steps). Neither: unknown (None). Informational: a claim
    is judged at its declared budget, and its 2x reading is ``verdict_2x``."""
    doubled = ran.get("psnr_2x")
    if doubled is not None and doubled.notna().all() and len(ran):
        low, high, basis = mean_db(ran.psnr), mean_db(doubled), "2x run"
    else:
        curves = [dict((int(i), p) for i, p in json.loads(s)) for s in ran.get("snapshots", [])]
        if not curves or any(not c for c in curves):
            return {
                "converged": None,
                "convergence_gain_db": None,
                "psnr_mean_other": None,
                "convergence_basis": None,
            }
        last = max(curves[0])
        at = min(curves[0], key=lambda i: abs(i - last / 2))
        high, low = mean_db(c.get(last) for c in curves), mean_db(c.get(at) for c in curves)
        basis = "iterate at half the budget"
    gain = high - low
    return {
        "converged": bool(gain < threshold_db),
        "convergence_gain_db": gain,
        "psnr_mean_other": high if basis == "2x run" else low,
        "convergence_basis": basis,
    }


def foreign_records(
    images: pd.DataFrame, expected: Mapping[str, str] | None = None
) -> dict[str, tuple[int, int]]:
    """Per job (``run``: a cell, or one victim seed of it) whose records do not all come from its spec: (records
    from another spec, records).

    ``expected``: run -> :func:`~invgrad.replication.records.spec_digest` of the spec the workflow runs it with;
    a run it does not name is held to the spec most of its records share."""
    by = _run_column(images)
    mixed = {}
    for run, group in images.drop_duplicates([by, "target"]).groupby(by, sort=False):
        digests = group.spec_sha256.tolist()
        want = (expected or {}).get(run) or Counter(digests).most_common(1)[0][0]
        other = sum(d != want for d in digests)
        if other:
            mixed[run] = (other, len(digests))
    return mixed


def _run_column(images: pd.DataFrame) -> str:
    return "run" if "run" in images.columns else "cell"


def cell_of_run(run: str) -> str:
    """The cell a job belongs to: ``<cell>/seed<k>`` -> ``<cell>``."""
    head, _, tail = run.rpartition("/seed")
    return head if head and tail.isdigit() else run


def image_source(ran: pd.DataFrame) -> str:
    """Where a cell's images came from (each configured source once) and, where the source mixes exact images
    with JPEG copies (``first-per-class:``), how many of them are exact."""
    if "image_source" not in ran.columns:
        return ""
    text = "; ".join(dict.fromkeys(str(s) for s in ran.image_source.dropna() if str(s)))
    users = ran.drop_duplicates([c for c in ("run", "target") if c in ran.columns])  # sweeps repeat a user
    exact = pd.to_numeric(users.get("exact_images"), errors="coerce") if "exact_images" in users else None
    if exact is None or exact.isna().any():
        return text
    images = sum(len(json.loads(i)) if isinstance(i, str) else 1 for i in users.indices)
    return f"{text} ({int(exact.sum())} of {images} images exact, the rest JPEG copies)"


def _cell_entry(ran: pd.DataFrame, convergence_db: float) -> dict:
    stats = summarize(ran.psnr.astype(float).tolist())
    seeds = ran.drop_duplicates("victim_seed") if "victim_seed" in ran.columns else ran.iloc[:1]
    doubled = ran.get("psnr_2x")
    entry = {
        "status": "ok",
        "reason": "",
        **{f"psnr_{k}" if k not in ("n", "failures") else k: v for k, v in stats.items()},
        "psnr_2x_mean": mean_db(doubled) if doubled is not None and doubled.notna().all() else None,
        "seeds": len(seeds),
        "ssim_mean": float(ran.ssim.astype(float).mean()),
        "seconds_per_image": float(ran.seconds.astype(float).mean()),
        "victim_accuracy": pd.to_numeric(seeds.victim_accuracy).mean(),  # over the victim seeds
        "victim_accuracy_min": pd.to_numeric(seeds.victim_accuracy).min(),
        "image_source": image_source(ran),
        "iterations": int(ran.iterations.iloc[0]),
        "restarts": int(ran.restarts.iloc[0]),
        "tv": float(ran.tv.iloc[0]),
    }
    for extra in ("epsilon", "psnr_max"):
        if extra in ran.columns:
            entry[extra] = ran[extra].iloc[0]
    if "update_cosine" in ran.columns:  # FedAvg: how far the local steps moved from one gradient, over users
        entry["update_cosine"] = float(pd.to_numeric(ran.update_cosine).mean())
    entry.update(convergence(ran, convergence_db))
    return entry


def _remedy(experiment: str, runs: Iterable[str]) -> str:
    targets = " ".join(f"results/{experiment}/{run}/images.pt" for run in runs)
    return f"rerun the cell: snakemake --forcerun {targets}"


def tables(
    records: Iterable[dict],
    experiment: str,
    convergence_db: float = 1.0,
    expected: Mapping[str, str] | None = None,
    missing: Mapping[str, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, table) of one experiment: one row per image (and sweep), and one per cell and ``group_keys``.

    ``expected``: see :func:`foreign_records`. ``missing``: run -> records its folder lacks (deleted by hand,
    say); such a cell reads "not run" until a run of the cell rewrites them. A cell of several victim seeds
    gathers the rows of all its runs (one per seed)."""
    images = pd.DataFrame([row for record in records for row in rows(record)])
    if images.empty:  # every record of the experiment is missing
        images = pd.DataFrame(columns=["cell", "run", "target", "spec_sha256", "status"])
    mixed = foreign_records(images, expected)
    missing = {run: n for run, n in (missing or {}).items() if n}
    keys = ["cell", *[k for k in registry.get(experiment).group_keys if k in images.columns]]
    table = []
    for key, group in images.groupby(keys, sort=False, dropna=False):
        entry = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        ran = group[group.status != NOT_RUN]
        lacking = [run for run in missing if cell_of_run(run) == entry["cell"]]
        foreign = [run for run in mixed if cell_of_run(run) == entry["cell"]]
        if lacking:
            count = sum(missing[run] for run in lacking)
            reason = f"missing records ({count}; {_remedy(experiment, lacking)})"
            entry.update(status=NOT_RUN, reason=reason, n=len(group))
        elif foreign:
            other, total = (sum(mixed[run][i] for run in foreign) for i in (0, 1))
            reason = f"mixed specs ({other} of {total} records from another spec)"
            entry.update(status=NOT_RUN, reason=reason, n=len(group))
        elif ran.empty:
            entry.update(status=NOT_RUN, reason=group.reason.iloc[0], n=len(group))
        else:
            entry.update(_cell_entry(ran, convergence_db))
        table.append(entry)
    listed = set(images.get("cell", ()))
    absent: dict[str, list[str]] = {}
    for run in missing:  # every record of the cell is missing
        if cell_of_run(run) not in listed:
            absent.setdefault(cell_of_run(run), []).append(run)
    for cell, runs in absent.items():
        reason = f"missing records ({sum(missing[r] for r in runs)}; {_remedy(experiment, runs)})"
        table.append({"cell": cell, "status": NOT_RUN, "reason": reason, "n": 0})
    return images, pd.DataFrame(table)
