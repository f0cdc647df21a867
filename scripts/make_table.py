"""Collect one experiment's per-image JSONs into tables: images.csv (one row per image) and table.csv (per cell).

python scripts/make_table.py --experiment table1 --out results/table1/table.csv results/table1/*/*.json
What the tables hold, and when a cell reads "not run": invgrad.replication.tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from invgrad.io import save_csv
from invgrad.replication import registry
from invgrad.replication.tables import convergence, tables

__all__ = ["convergence", "main"]  # convergence: re-exported for the scripts' tests


def run_of(path: Path, experiment: str) -> str:
    """The job a record belongs to: .../<experiment>/<run>/<target>.json, where run is <cell> or <cell>/seed<k>."""
    parts = path.parent.parts
    if experiment not in parts:
        return path.parent.name
    return "/".join(parts[len(parts) - parts[::-1].index(experiment) :])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True, help="table.csv (images.csv is written beside it)")
    p.add_argument("--convergence-db", type=float, default=1.0, help="see tables.convergence")
    p.add_argument(
        "--module", action="append", default=[], help="an extra experiment module (config experiment_modules)"
    )
    p.add_argument(
        "--cell-specs",
        type=json.loads,
        default=None,
        help="JSON {run: sha256 of its spec} (what the workflow passes): a cell with a record of another spec "
        "reads 'not run: mixed specs'; by default a cell's records must share one spec",
    )
    p.add_argument("records", nargs="+")
    args = p.parse_args(argv)
    registry.load_modules(args.module)
    paths = [Path(path) for path in args.records]
    records = [json.loads(path.read_text()) for path in paths if path.exists()]
    missing = Counter(run_of(path, args.experiment) for path in paths if not path.exists())
    images, table = tables(records, args.experiment, args.convergence_db, args.cell_specs, missing)
    out = Path(args.out)
    save_csv(images, out.with_name("images.csv"))
    save_csv(table, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
