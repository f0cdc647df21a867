"""Attack one cell of an experiment: all its users in one batched call; one JSON per image.

From the workflow:   python scripts/attack_cell.py --spec '<json>' --cell NAME --out results/<exp>/<cell>
By hand (one image): python scripts/attack_cell.py --config config/config.yaml --experiment table1 \
                         --cell LeNetZhu_untrained_ours --only 3
A killed job resumes where it stopped when run again (invgrad.replication.cellfiles).
"""

from __future__ import annotations

import argparse
import sys

from _common import load_config, log, set_threads, spec_arg

from invgrad.replication import cells, plan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", type=spec_arg, help="the cell's spec as JSON (what the workflow passes)")
    p.add_argument(
        "--config", nargs="+", help="config YAML file(s), merged left to right (instead of --spec)"
    )
    p.add_argument("--experiment", help="experiment name (with --config)")
    p.add_argument("--cell", required=True, help="cell name, e.g. LeNetZhu_untrained_ours")
    p.add_argument("--out", help="output folder (default results/<experiment>/<cell>)")
    p.add_argument(
        "--only",
        nargs="+",
        help="rewrite only these targets' records (image indices / user names), and any record that is missing or "
        "of another spec. The whole batch is attacked again (same seeds and group shape, as long as the whole "
        "cell), so each record reproduces the batched one bit for bit; one image attacked alone would give a "
        "statistically equivalent result, not the same number",
    )
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    spec = args.spec
    if spec is None:
        if not (args.config and args.experiment):
            p.error("give --spec, or --config and --experiment")
        planned = plan.validate(load_config(args.config))
        if args.experiment not in planned:
            p.error(f"experiment {args.experiment!r} is not enabled; enabled: {sorted(planned)}")
        if args.cell not in planned[args.experiment]:
            p.error(f"unknown cell {args.cell!r}; cells: {sorted(planned[args.experiment])}")
        spec = planned[args.experiment][args.cell]
    names = spec["selection"]["names"]
    bad = [n for n in args.only or [] if n not in names]
    if bad:
        p.error(f"unknown target(s) {bad} for cell {args.cell}; targets: {names}")
    set_threads(args.threads)
    out = args.out or f"results/{spec['experiment']}/{args.cell}"
    records = cells.run_cell(spec, args.cell, out, only=args.only, log=log)
    for r in records:
        log(f"{r['cell']}/{r['target']}: {r['status']} PSNR {r['psnr']:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
