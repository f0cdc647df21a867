"""Plot a victim's held-out accuracy against epochs from the ``accuracy_curve`` its checkpoint records.

python scripts/victim_curve.py --meta results/curve/LeNetZhu_e80.json --out figures/victim_accuracy
Writes <out>.csv (epoch, accuracy), <out>.png and <out>.pdf. The curve comes from ONE one-cycle run
(train_victim.py with spec eval_every): its accuracy at epoch e < E is not what a run trained for e epochs gives.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meta", required=True, help="the checkpoint's .json sidecar")
    parser.add_argument("--out", required=True, help="output path without suffix")
    args = parser.parse_args(argv)
    meta = json.loads(Path(args.meta).read_text())
    curve = meta.get("accuracy_curve")
    if not curve:
        raise SystemExit(f"error: {args.meta} records no accuracy_curve (train with spec eval_every > 0)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python scripts/victim_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        handle.write(f"# {command} (commit {commit})\n")
        writer = csv.writer(handle)
        writer.writerow(["epoch", "held_out_accuracy"])
        writer.writerows(curve)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, accuracy = zip(*curve, strict=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(epochs, [100 * a for a in accuracy], marker="o")
    if meta.get("floor") is not None:
        ax.axhline(
            100 * meta["floor"], color="grey", linestyle="--", label=f"floor {100 * meta['floor']:.0f}%"
        )
        ax.legend(loc="lower right")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(
        f"LeNet (Zhu) on CIFAR-10: one {meta['epochs']}-epoch {meta['schedule'].replace('onecycle', 'one-cycle')} run"
    )
    ax.grid(alpha=0.3)
    fig.text(
        0.01,
        0.01,
        f"{meta['val_images']} held-out test images; seed {meta['seed']}; {meta['seconds']:.0f} s on 1 CPU thread; "
        f"config/config.yaml training recipe, epochs {meta['epochs']}, eval every {meta.get('eval_every')}.\n"
        "One-cycle schedule: accuracy at epoch e < E is not what an e-epoch run gives.\n"
        f"{command} (commit {commit})",
        fontsize=7,
        va="bottom",
    )
    fig.subplots_adjust(bottom=0.25)
    for suffix in (".png", ".pdf"):
        fig.savefig(out.with_suffix(suffix), dpi=150)
    return 0


if __name__ == "__main__":
    sys.exit(main())
