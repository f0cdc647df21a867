"""figures/stability.csv: each claim's verdict beside the verdict of the same config run with another base seed.

python scripts/stability.py --base figures/claims.csv --other <other run>/figures/claims.csv \
    --out figures/stability.csv
Goal (invgrad.replication.claims.stability): no claim swaps supported <-> contradicted, at most one moves between
a decisive verdict and inconclusive. Prints the counts; exits 0 whatever they are (the report states them).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from invgrad.io import save_csv
from invgrad.replication.claims import stability


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="claims.csv of the committed run")
    p.add_argument("--other", required=True, help="claims.csv of the run with another base seed")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    table = stability.compare(pd.read_csv(args.base), pd.read_csv(args.other))
    save_csv(table, args.out)
    counts = stability.summary(table)
    print(
        f"{counts['rows']} rows: {counts['same']} same, {counts['swaps']} swapped, {counts['moves']} moved "
        f"(decisive <-> inconclusive), {counts['other']} not judged in one run; "
        f"goal {'met' if counts['goal_met'] else 'not met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
