"""Copy one experiment's figure source data next to the figures, to be committed with them.

python scripts/export_figure_data.py --results results/table1 --out figures/data/table1
The tables, and per cell a few images and their per-image JSONs (invgrad.replication.notebook.export_figure_data):
what the notebook needs to redraw the figures in a clone that has no results/.
"""

from __future__ import annotations

import argparse

from invgrad.replication.notebook import export_figure_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", required=True, help="results/<experiment>")
    p.add_argument("--out", required=True, help="figures/data/<experiment>")
    args = p.parse_args(argv)
    print("wrote", export_figure_data(args.results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
