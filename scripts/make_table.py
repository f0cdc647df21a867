"""Collect one experiment's per-image JSONs into tables: images.csv (one row per image) and table.csv (per cell).

python scripts/make_table.py --experiment table1 --out results/table1/table.csv results/table1/*/*.json
Statistics per cell: invgrad.metrics.summarize (mean, np.std, median, min, max, failures); "not run" cells keep
their reason and no numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from invgrad.io import save_csv
from invgrad.metrics import summarize
from invgrad.replication import registry


def victim_source(victim: dict) -> str:
    """The training data a victim learned from, with the hash of its decoded tensors (else where its weights came
    from: 'untrained', or the published weights of a pretrained model)."""
    if not victim.get("training_data"):
        return victim.get("source") or victim.get("weights") or "untrained"
    sha = victim.get("training_data_sha256") or ""
    origin = victim.get("training_data_origin") or victim["training_data"]
    return f"{origin} (sha256 {sha[:12]})" if sha else origin


def axes(record: dict) -> list[dict]:
    """The grid coordinates of a record (one dict per sweep the cell belongs to); the experiment's module adds its
    own columns (``Experiment.row``)."""
    spec = record["spec"]
    victim = record.get("victim") or {}
    row = {
        "experiment": record["experiment"],
        "cell": record["cell"],
        "target": record["target"],
        "status": record["status"],
        "reason": record.get("reason", ""),
        "model": record["model"],
        "weights": record["weights"],
        "victim_accuracy": victim.get("val_accuracy"),
        "victim_floor": spec.get("victim_floor"),
        "victim_source": victim_source(victim),
        "preset": spec.get("preset", "ours"),
        "user_loss_scale": spec.get("user_loss_scale", 1.0),
        "indices": json.dumps(record.get("indices", [])),
        "psnr_prior": record.get("psnr_prior"),
        "psnr_per_image": json.dumps(record.get("psnr_per_image", [])),
        "psnr_prior_per_image": json.dumps(record.get("psnr_prior_per_image", [])),
        "snapshots": json.dumps(record.get("snapshots", [])),
        "psnr_half_budget_run": (record.get("half_budget_run") or {}).get("psnr"),
        "victim_epochs": victim.get("epochs"),
        "victim_training_images": victim.get("training_images"),
        "iterations": spec["attack"]["max_iterations"],
        "restarts": spec["attack"]["restarts"],
        "tv": spec["attack"]["total_variation"],
        "note": spec.get("note", ""),
    }
    for key in ("psnr", "ssim_mean", "mse_mean", "fmse", "rec_loss", "seconds"):
        row[key] = record.get(key)
    row["ssim"] = row.pop("ssim_mean")
    row["mse"] = row.pop("mse_mean")
    row.update(registry.get(record["experiment"]).row(spec, record))  # the experiment's own columns
    sweeps = spec.get("sweeps")
    if sweeps:
        return [{**row, "axis": s["axis"], "value": s["value"]} for s in sweeps]
    return [row]


def _mean_dB(values) -> float:
    """Mean PSNR with failures (NaN) counted as 0 dB, as the paper's aggregation does."""
    values = [0.0 if v is None or v != v else float(v) for v in values]
    return sum(values) / len(values)


def convergence(ran: pd.DataFrame, threshold_db: float) -> dict:
    """Did the last doubling of the budget gain less than ``threshold_db`` of mean PSNR (NaN as 0 dB)?

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
    full = _mean_dB(c.get(last) for c in curves)
    runs = ran.get("psnr_half_budget_run")
    if runs is not None and runs.notna().all():
        half, basis = _mean_dB(runs), "half-budget run"
    else:
        at = min(curves[0], key=lambda i: abs(i - last / 2))
        half, basis = _mean_dB(c.get(at) for c in curves), "iterate at half the budget"
    gain = full - half
    return {
        "converged": bool(gain < threshold_db),
        "convergence_gain_db": gain,
        "psnr_mean_half": half,
        "convergence_basis": basis,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True, help="table.csv (images.csv is written beside it)")
    p.add_argument("--convergence-db", type=float, default=1.0, help="see convergence()")
    p.add_argument(
        "--module", action="append", default=[], help="an extra experiment module (config experiment_modules)"
    )
    p.add_argument("records", nargs="+")
    args = p.parse_args(argv)
    registry.load_modules(args.module)
    rows = []
    for path in args.records:
        record = json.loads(Path(path).read_text())
        rows += axes(record)
    images = pd.DataFrame(rows)
    out = Path(args.out)
    save_csv(images, out.with_name("images.csv"))
    keys = ["cell", *[k for k in registry.get(args.experiment).group_keys if k in images.columns]]
    table = []
    for key, group in images.groupby(keys, sort=False, dropna=False):
        entry = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        ran = group[group.status != "not run"]
        if ran.empty:
            entry.update(status="not run", reason=group.reason.iloc[0], n=len(group))
        else:
            stats = summarize(ran.psnr.astype(float).tolist())
            entry.update(
                status="ok",
                reason="",
                **{f"psnr_{k}" if k not in ("n", "failures") else k: v for k, v in stats.items()},
            )
            entry.update(
                ssim_mean=float(ran.ssim.astype(float).mean()),
                seconds_per_image=float(ran.seconds.astype(float).mean()),
                victim_accuracy=ran.victim_accuracy.iloc[0],
                iterations=int(ran.iterations.iloc[0]),
                restarts=int(ran.restarts.iloc[0]),
                tv=float(ran.tv.iloc[0]),
            )
            for extra in ("epsilon", "psnr_max"):
                if extra in ran.columns:
                    entry[extra] = ran[extra].iloc[0]
            entry.update(convergence(ran, args.convergence_db))
        table.append(entry)
    save_csv(pd.DataFrame(table), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
