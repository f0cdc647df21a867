"""figures/claims.csv (every claim's verdict, decided by invgrad.replication.claims) and figures/REPORT.md rendered from it.

python scripts/make_report.py --results results --benchmarks results/benchmarks --config-label config/config.yaml \
    --recovered-psnr 18 --claims figures/claims.csv --out figures/REPORT.md
Verdicts come from paired tests on the same images (invgrad.replication.claims); "not run" / "not comparable" carry a reason.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from invgrad.io import save_csv, save_text
from invgrad.replication import claims as claims_mod
from invgrad.replication import registry


def _num(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _cell_text(value) -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else str(value).replace("|", "/")
    )


def statistic_text(row) -> str:
    """The statistic and its CI as the comparison defines them."""
    stat, low, high, p = (_num(row[c]) for c in ("statistic", "ci_low", "ci_high", "p_value"))
    if stat is None:
        return "—"
    if row["comparison"] == "within_tolerance":
        return f"{stat:.1e} (tolerance {_num(row['margin']):.0e})"
    name = "ours − paper" if row["comparison"] == "matches_paper" else "Δ"
    text = f"{name} {stat:+.2f} dB"
    if low is not None and high is not None:
        text += f", 95% CI [{low:+.2f}, {high:+.2f}]"
    if p is not None:
        text += f", p={p:.2g}"
    return text


def claim_lines(table: pd.DataFrame) -> list[str]:
    lines = [
        "| claim (arXiv 2003.14053) | paper | ours | n (failed: NaN, counted as 0 dB) | statistic / CI | verdict | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        setting = _cell_text(row["setting"])
        claim = f"{row['claim']}. {row['text']}" + (f" — {setting}" if setting else "")
        n = _num(row["n"])
        failures = _num(row["failures"])
        count = "—" if n is None else f"{int(n)}" + ("" if failures is None else f" ({int(failures)} failed)")
        lines.append(
            f"| {_cell_text(claim)} | {_cell_text(row['paper'])} | {_cell_text(row['ours']) or '—'} | {count} | "
            f"{statistic_text(row)} | **{row['verdict']}** | {_cell_text(row['reason'])} |"
        )
    return lines


DLG_READING = {
    "supported": 'DLG loses to the proposed attack on the same images: reproduces the paper\'s "DLG fails"',
    "contradicted": 'DLG beats the proposed attack on the same images: does not reproduce "DLG fails"',
    "inconclusive": 'no significant difference: does not show "DLG fails"',
}


def dlg_lines(table: pd.DataFrame) -> list[str]:
    """Which DLG setting (user loss 0.5·CE vs CE on both sides) reproduces the paper's "DLG fails", from claim 1b."""
    rows = table[table.claim == "1b"]
    lines = [
        "\n## The DLG discrepancy\n",
        "Until 2021-03 the paper's code trained the user with 0.5·CE while the attacker assumed CE; this scales the "
        "gradient the Euclidean (DLG) loss matches, not the scale-invariant cosine loss. `zhu_halfce` is DLG under that "
        "mismatch, `zhu` DLG with the same loss on both sides (claim 1b rows above).\n",
    ]
    if rows.empty:
        return lines + ["No claim-1b rows: table1 did not plan these cells.\n"]
    for row in rows.to_dict("records"):
        reading = DLG_READING.get(row["verdict"], f"cannot tell ({_cell_text(row['reason'])})")
        lines.append(f"- LeNet (Zhu) {_cell_text(row['setting'])}: **{row['verdict']}** — {reading}.")
    return lines


def extra_lines(tables) -> list[str]:
    """Numbers that are not claims of the paper: label recovery and defenses (reported, no verdict)."""
    lines = []
    labels = tables.get("labels", (None, None))[1]
    if labels is not None and {"model", "batch_size", "accuracy_mean"} <= set(labels.columns):
        lines.append(
            "- labels recoverable from the last layer (the attack assumes known labels): "
            + "; ".join(f"{r.model} K={r.batch_size}: {r.accuracy_mean:.2f}" for r in labels.itertuples())
        )
    defenses = tables.get("defenses", (None, None))[1]
    if defenses is not None and "psnr_mean" in defenses.columns:
        ran = defenses[defenses.status == "ok"] if "status" in defenses.columns else defenses
        lines.append(
            "- defenses (not in the paper), mean PSNR: "
            + "; ".join(f"{r.cell}: {r.psnr_mean:.2f} dB" for r in ran.itertuples())
        )
    return ["\n## Extras (reported, no verdict)\n", *lines] if lines else []


def victim_lines(results: Path) -> list[str]:
    """The victims (metadata + the sha256 of each checkpoint) and, per result, the checkpoint it was attacked with."""
    import json

    victims = sorted((results / "victims").glob("*/*.json"))
    lines: list[str] = []
    if victims:
        lines += [
            "\n## Victims\n",
            "| checkpoint | sha256 | status | epochs | seed | training data | training images | training data sha256 "
            "| val. accuracy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in victims:
            m = json.loads(v.read_text())
            acc = m.get("val_accuracy")
            accuracy = "—" if acc is None else f"{acc:.3f} on {m.get('val_images')}"
            data_hash = m.get("training_data_sha256")
            lines.append(
                f"| {v.parent.name}/{v.stem} | `{m.get('sha256') or '—'}` | {m.get('status')} {m.get('reason', '')} | "
                f"{m.get('epochs')} | {m.get('seed')} | {m.get('training_data_origin') or m.get('training_data') or '—'} | "
                f"{m.get('training_images', '—')} | "
                f"{f'`{data_hash[:16]}…`' if data_hash else '—'} | {accuracy} |"
            )
    used: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for record_file in sorted(results.glob("*/*/*.json")):
        if record_file.parts[-3] == "victims":
            continue
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue
        victim = record.get("victim") if isinstance(record, dict) else None
        if isinstance(victim, dict) and victim.get("sha256"):
            key = (record_file.parts[-3], record_file.parent.name)
            used.setdefault(key, set()).add((str(victim.get("checkpoint")), victim["sha256"]))
    if used:
        lines += [
            "\n## Checkpoint used by each result\n",
            "Every trained cell was attacked with the checkpoint of this sha256, verified on load against the one "
            "recorded in `results/victims/<dataset>/<model>.json` (DVC pins the same files in `dvc.lock`).\n",
            "| experiment | cell | checkpoint | sha256 |",
            "|---|---|---|---|",
        ]
        for (experiment, cell), checkpoints in sorted(used.items()):
            for path, digest in sorted(checkpoints):
                lines.append(f"| {experiment} | {cell} | {path} | `{digest[:16]}…` |")
    return lines


def runtimes(bench: Path) -> list[tuple[str, int, float]]:
    out = []
    for stage in sorted(p for p in bench.iterdir() if p.is_dir()) if bench.exists() else []:
        files = list(stage.glob("*.tsv"))
        total = sum(float(pd.read_csv(f, sep="\t")["s"].iloc[0]) for f in files)
        out.append((stage.name, len(files), total))
    top = bench / "report.tsv"
    if top.exists():
        out.append(("report", 1, float(pd.read_csv(top, sep="\t")["s"].iloc[0])))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default="results")
    p.add_argument("--benchmarks", default="results/benchmarks")
    p.add_argument("--config-label", default="config/config.yaml")
    p.add_argument("--recovered-psnr", type=float, default=18.0)
    p.add_argument("--claims", default="figures/claims.csv", help="where the verdict table is written")
    p.add_argument("--out", default="figures/REPORT.md")
    p.add_argument(
        "--module", action="append", default=[], help="an extra experiment module (config experiment_modules)"
    )
    args = p.parse_args(argv)
    registry.load_modules(args.module)  # their claims are decided too
    results = Path(args.results)
    tables = claims_mod.load_tables(results)
    save_csv(claims_mod.decide(tables, registry.all_claims(), recovered=args.recovered_psnr), args.claims)
    verdicts = pd.read_csv(args.claims)  # the report shows what claims.csv says, nothing else
    lines = [
        "# Replication report — Inverting Gradients (Geiping et al. 2020)\n",
        f"Config: `{args.config_label}`. PSNR on de-normalised images clamped to [0,1], per image. Verdicts "
        f"(from `{Path(args.claims).name}`): paired per image (same images), two-sided Wilcoxon signed-rank p and a "
        f"paired-bootstrap 95% CI ({claims_mod.RESAMPLES:,} resamples) of the mean difference; *supported* needs "
        f"p < {claims_mod.ALPHA} and the CI above the claim's margin, *contradicted* the CI below it. A failed "
        'reconstruction (NaN PSNR) counts as 0 dB. "Prior" = the PSNR of the data set\'s mean-colour image (an '
        f'attacker who learned nothing); "attackable" = beats it by {claims_mod.ATTACKABLE_DB:g} dB. Paper '
        f"equivalence margin ±{claims_mod.DELTA_DB:g} dB (0.6 of the paper's per-image SD). Cells are *not "
        f"comparable* below {claims_mod.MIN_PAIRS} paired images, below the paper's budget when methods are "
        "compared, with a victim below its accuracy floor, or without convergence evidence.\n",
        *claim_lines(verdicts),
    ]
    lines += dlg_lines(verdicts)
    lines += extra_lines(tables)
    lines += victim_lines(results)
    lines += [
        "\n## Runtime per stage (Snakemake benchmark files)\n",
        "| stage | jobs | seconds (sum) |",
        "|---|---|---|",
    ]
    for stage, jobs, seconds in runtimes(Path(args.benchmarks)):
        lines.append(f"| {stage} | {jobs} | {seconds:.1f} |")
    lines += ["\n## Figures\n"] + [
        f"- [{f.name}]({f.name})" for f in sorted(Path(args.out).parent.glob("*.png"))
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_text("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
