"""figures/claims.csv (every claim's verdict, decided by invgrad.replication.claims) and figures/REPORT.md rendered from it.

python scripts/make_report.py --results results --benchmarks results/benchmarks --config-label config/config.yaml \
    --recovered-psnr 18 --claims figures/claims.csv --out figures/REPORT.md
Verdicts come from paired tests against pre-declared margins (invgrad.replication.claims); "not run" / "not comparable"
carry a reason.
"""

from __future__ import annotations

import argparse
import math
import subprocess
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
    stat, low, high, p = (_num(row[c]) for c in ("statistic", "ci_low", "ci_high", "p_holm"))
    if stat is None:
        return "—"
    if row["comparison"] == "within_tolerance":
        return f"{stat:.1e} (tolerance {_num(row['margin']):.0e})"
    name = "ours − paper" if row["comparison"] == "matches_paper" else "Δ"
    text = f"{name} {stat:+.2f} dB"
    if low is not None and high is not None:
        text += f", 95% CI [{low:+.2f}, {high:+.2f}]"
    if p is not None:
        text += f", Holm p={p:.2g}"
    mde = _num(row.get("mde_db"))
    if mde is not None:
        text += f", MDE {mde:.2f} dB"
    return text


def per_image_text(row) -> str:
    """Win rate (sign test) and recovery (McNemar) of a method comparison, and where mean and majority disagree."""
    win, sign, mcnemar = (_num(row.get(c)) for c in ("win_rate", "sign_p", "mcnemar_p"))
    parts = []
    if win is not None:
        parts.append(f"wins {win:.0%} (sign p={sign:.2g})")
    if _cell_text(row.get("recovery")):
        parts.append(f"{_cell_text(row['recovery'])} (McNemar p={mcnemar:.2g})")
    if _cell_text(row.get("note")):
        parts.append(_cell_text(row["note"]))
    return "; ".join(parts) or "—"


def robustness_text(row) -> str:
    verdict_2x, robustness = _cell_text(row.get("verdict_2x")), _cell_text(row.get("robustness"))
    stat = _num(row.get("statistic_2x"))
    reading = f" (Δ {stat:+.2f} dB)" if stat is not None else ""
    return f"{verdict_2x}{reading}" + (f" — {robustness}" if robustness else "") if verdict_2x else "—"


def claim_lines(table: pd.DataFrame) -> list[str]:
    lines = [
        "| claim (arXiv 2003.14053) | paper | ours | n (failed: NaN, counted as 0 dB) | seeds | statistic / CI "
        "| per image | verdict | at 2× budget | reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        setting = _cell_text(row["setting"])
        claim = f"{row['claim']}. {row['text']}" + (f" — {setting}" if setting else "")
        n, failures, seeds = _num(row["n"]), _num(row["failures"]), _num(row.get("seeds"))
        count = "—" if n is None else f"{int(n)}" + ("" if failures is None else f" ({int(failures)} failed)")
        if _cell_text(row.get("image_source")):
            count += f"; images: {_cell_text(row['image_source'])}"
        lines.append(
            f"| {_cell_text(claim)} | {_cell_text(row['paper'])} | {_cell_text(row['ours']) or '—'} | {count} | "
            f"{'—' if seeds is None else int(seeds)} | {statistic_text(row)} | {_cell_text(per_image_text(row))} | "
            f"**{row['verdict']}** | {_cell_text(robustness_text(row))} | {_cell_text(row['reason'])} |"
        )
    return lines


def method_lines(table: pd.DataFrame) -> list[str]:
    """How every verdict is decided, and the pre-declared margin table it uses."""
    alpha, power = claims_mod.ALPHA, claims_mod.POWER
    lines = [
        "\n## Method\n",
        "Every claim is judged at the paper's protocol: each method at the paper's budget (4,800 signed-Adam "
        "iterations, 500 L-BFGS steps), or at the config's stated budget where the paper gives none; convergence "
        "never vetoes a verdict. One rule decides every claim: the paired per-image difference (same images, same "
        "victim seeds) is tested against the claim's margin in both directions. *Supported*: the 95% CI lies on the "
        f"claim's side of the margin and the Holm-corrected p (across all rows of this report) is below {alpha}; "
        "*contradicted*: the CI lies on the other side and the Holm-corrected p of that direction is below "
        f"{alpha}; *inconclusive* otherwise. The CI is a cluster bootstrap ({claims_mod.RESAMPLES:,} resamples: "
        "victim seeds with replacement, then images within each drawn seed; with one seed, a plain image "
        "bootstrap). The test is a one-sided Wilcoxon signed-rank test of (difference − margin) per image, or, "
        "with ≥ 3 victim seeds, a one-sided t-test on the per-seed mean differences (column `method` names it). "
        "The paper-number claim is an equivalence test (TOST on the combined standard error of our mean and the "
        "paper's). A failed image (NaN PSNR) counts as 0 dB; a perfect match (+inf) wins every per-image "
        f"comparison and is capped at {claims_mod.PSNR_CAP_DB:g} dB in means and tests of the mean. "
        f"`mde_db`, the smallest effect (distance from the margin) detected with {power:.0%} power: "
        f"MDE = (z₁₋α/₂ + z_{power:g}) · SD / √n, with α = {alpha}, SD the sample SD of the paired differences "
        "and n the number of test units (images, or seeds for the per-seed test). Method comparisons also give the "
        "per-image win rate of the claimed winner (exact sign test, ties dropped) and each method's recovery rate "
        "at the report's recovered-PSNR line (exact McNemar test on the discordant images; the line, 18 dB by "
        "default, is the paper's own Table-1 mean for its attack on untrained LeNet (Zhu), arXiv 2003.14053: an "
        "image counts as recovered when it comes back at least as well as the paper's average image); DLG's share below "
        "that line stands beside its mean. `verdict_2x`: the same test on the cells' runs at twice the budget "
        "(Holm-corrected among themselves); a row is *stable at 2×* when both agree, else *budget-sensitive*. "
        f"Rows are *not comparable* below {claims_mod.MIN_PAIRS} paired images, when cells attacked different "
        "images, ran budgets other than the declared ones, or have fewer victim seeds than the config asks "
        "(a seed whose victim is below its accuracy floor is left out and the row says how many remain). "
        "Images that share one update (a FedAvg user's K images, a batch) share one reconstruction, so the update "
        "is their cluster: claim 6 tests its users' images clustered by user, and claim 7 needs ≥ 3 independent "
        "batches (one batch reads *not comparable*).\n",
        "\n### Margins (declared before any result)\n",
        "| margin | value | claims | reason |",
        "|---|---|---|---|",
    ]
    used = table.groupby("margin_name", sort=False).claim.unique() if "margin_name" in table else {}
    named = dict(claims_mod.MARGINS)
    for name in used.index if len(used) else []:  # a claim's own numeric margin is a row of its own
        if name not in named:
            named[name] = claims_mod.Margin(
                float(table[table.margin_name == name].margin.iloc[0]), "", "declared by the claim"
            )
    for name, margin in named.items():
        claims = ", ".join(map(str, used[name])) if name in used else "—"
        lines.append(f"| {name} | {margin.value:g} {margin.unit} | {claims} | {_cell_text(margin.reason)} |")
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
    for record_file in sorted(results.glob("*/*/**/*.json")):  # <experiment>/<cell>[/seed<k>]/<target>.json
        experiment = record_file.relative_to(results).parts[0]
        if experiment == "victims":
            continue
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue
        victim = record.get("victim") if isinstance(record, dict) else None
        if isinstance(victim, dict) and victim.get("sha256"):
            key = (experiment, str(record_file.parent.relative_to(results / experiment)))
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


def runtimes(bench: Path) -> list[tuple[str, int, float, float]]:
    """Per stage: (stage, jobs, job seconds summed, CPU seconds summed) from Snakemake's benchmark files."""

    def read(files) -> tuple[float, float]:
        frames = [pd.read_csv(f, sep="\t") for f in files]
        cpu = sum(float(f["cpu_time"].iloc[0]) for f in frames if "cpu_time" in f.columns)
        return sum(float(f["s"].iloc[0]) for f in frames), cpu

    out = []
    for stage in sorted(p for p in bench.iterdir() if p.is_dir()) if bench.exists() else []:
        files = sorted(stage.rglob("*.tsv"))
        out.append((stage.name, len(files), *read(files)))
    top = bench / "report.tsv"
    if top.exists():
        out.append(("report", 1, *read([top])))
    return out


def source_commit(folder: str | Path = ".") -> str:
    """The commit the report is made from (with "+ local changes" when tracked files differ from it), or why not.

    figures/ is left out: the run itself rewrites the committed figures before this report is written."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)figures")
    return f"{commit[:12]}" + (" + local changes" if dirty else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default="results")
    p.add_argument("--benchmarks", default="results/benchmarks")
    p.add_argument("--config-label", default="config/config.yaml")
    p.add_argument("--recovered-psnr", type=float, default=18.0)
    p.add_argument("--victim-seeds", type=int, default=1, help="victim seeds per cell the config asks for")
    p.add_argument("--claims", default="figures/claims.csv", help="where the verdict table is written")
    p.add_argument("--out", default="figures/REPORT.md")
    p.add_argument(
        "--module", action="append", default=[], help="an extra experiment module (config experiment_modules)"
    )
    args = p.parse_args(argv)
    registry.load_modules(args.module)  # their claims are decided too
    results = Path(args.results)
    tables = claims_mod.load_tables(results)
    save_csv(
        claims_mod.decide(
            tables, registry.all_claims(), recovered=args.recovered_psnr, seeds=args.victim_seeds
        ),
        args.claims,
    )
    verdicts = pd.read_csv(args.claims)  # the report shows what claims.csv says, nothing else
    lines = [
        "# Replication report — Inverting Gradients (Geiping et al. 2020)\n",
        f"Made from commit `{source_commit()}` with config `{args.config_label}` (`make`, i.e. "
        "`snakemake --cores all`).\n",
        "PSNR on de-normalised images clamped to [0,1], per image. Verdicts "
        f'from `{Path(args.claims).name}`, decided as the Method section below says. "Prior" = the PSNR of '
        "the data set's mean-colour image (an attacker who learned nothing).\n",
        *claim_lines(verdicts),
    ]
    lines += method_lines(verdicts)
    lines += dlg_lines(verdicts)
    lines += extra_lines(tables)
    lines += victim_lines(results)
    lines += [
        "\n## Runtime per stage (Snakemake benchmark files)\n",
        "Job seconds: each job's wall time, summed over the stage's jobs (jobs run side by side, so this is not the "
        "stage's wall time); CPU seconds: their core-seconds.\n",
        "| stage | jobs | job seconds (sum) | CPU seconds (sum) |",
        "|---|---|---|---|",
    ]
    for stage, jobs, seconds, cpu in runtimes(Path(args.benchmarks)):
        lines.append(f"| {stage} | {jobs} | {seconds:.1f} | {cpu:.1f} |")
    lines += ["\n## Figures\n"] + [
        f"- [{f.name}]({f.name})" for f in sorted(Path(args.out).parent.glob("*.png"))
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_text("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
