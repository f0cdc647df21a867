"""Write the training spec of every victim the config needs (what DVC's `victims` stage depends on).

python scripts/victim_plan.py --spec '{"results/victims/CIFAR10/LeNetZhu_e15.pt": {...}}' --out results/victim_plan.json
"""

from __future__ import annotations

import sys

from _common import stage_args

from invgrad.io import save_json


def main(argv=None) -> int:
    args = stage_args(__doc__, argv)
    save_json(args.spec, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
