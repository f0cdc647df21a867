"""What the analysis notebooks share: their first cell (:func:`results_or_committed`, :func:`setup`), their
plotting helpers, and the figure source data committed with the figures (:func:`export_figure_data`).

Cheap by design: tables and ``images.pt`` only, never an attack. No matplotlib backend is chosen here: run by a
person, Jupyter's inline backend shows every figure; run by papermill (the workflow) or nbconvert, the kernel is the
same, and :func:`save_figure` writes the PNG and PDF files either way (``Figure.savefig`` needs no display).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..victim.training import NOT_RUN

COMMITTED = Path("figures/data")  # each experiment's figure source data, committed with the figures
KEPT_TARGETS = 8  # images per cell kept in the committed copy, besides the best, median and worst by PSNR
TABLES = ("table.csv", "images.csv", "trials.csv")
# What a reader sees instead of the ids in cell names (one mapping, used by every figure).
METHOD_NAMES = {"ours": "proposed", "zhu": "DLG", "zhu_halfce": "DLG (user 0.5·CE)"}
WEIGHT_NAMES = {"untrained": "untrained", "trained": "trained"}
MODEL_NAMES = {"LeNetZhu": "LeNet (Zhu)"}


class NoResults(FileNotFoundError):
    """Neither a run's results nor a committed copy: shown by IPython as its one line, no traceback."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def results_or_committed(results_dir: str | Path, committed: str | Path = COMMITTED) -> Path:
    """``results/<experiment>`` when a run wrote its table, else the committed ``figures/data/<experiment>`` (the
    run the committed figures come from), so every notebook runs in a fresh clone. Prints which one it reads."""
    results_dir = Path(results_dir)
    _to_project_root(results_dir)
    fallback = Path(committed) / results_dir.name
    for folder in (results_dir, fallback):
        if (folder / "table.csv").is_file():
            print("reading", folder)
            return folder
    raise NoResults(
        f"no results yet: run `make` (or `snakemake --cores all {results_dir}/table.csv`) to write "
        f"{results_dir}/; a clone's committed copy {fallback}/ is missing too"
    )


def _to_project_root(results_dir: Path) -> None:
    """Jupyter and nbconvert start the kernel in notebooks/; the parameters are relative to the project root (where
    papermill runs them): move there, so results/, figures/data/ and figures/ mean the same in every way of running."""
    if results_dir.is_absolute() or Path("workflow/Snakefile").is_file():
        return
    root = next((p for p in Path.cwd().parents if (p / "workflow/Snakefile").is_file()), None)
    if root is not None:
        os.chdir(root)
        print("working directory:", root)


def export_figure_data(results_dir: str | Path, out_dir: str | Path, keep: int = KEPT_TARGETS) -> Path:
    """Copy what an experiment's notebook reads into ``out_dir``: its tables, and per cell ``images.pt`` reduced to
    a few images (the best, median and worst by PSNR and the first ``keep``) with their per-image JSONs."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        if (results_dir / name).is_file():
            shutil.copy2(results_dir / name, out_dir / name)
    images_csv = _read_csv(results_dir / "images.csv")
    for cell, store in load_cell_images(results_dir).items():
        targets = store.get("targets", {})
        wanted = list(targets)[:keep]
        if images_csv is not None and "psnr" in images_csv.columns:
            wanted += [
                t for _, t, _ in best_median_worst(images_csv, cell) if t in targets and t not in wanted
            ]
        (out_dir / cell).mkdir(exist_ok=True)
        io.save_tensors({**store, "targets": {t: targets[t] for t in wanted}}, out_dir / cell / "images.pt")
        for target in wanted:
            record = results_dir / targets[target].get("run", cell) / f"{target}.json"
            if record.is_file():
                shutil.copy2(record, out_dir / cell / record.name)
    return out_dir


def _read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path) if path.is_file() else None


def setup(results_dir: str | Path, config_label: str):
    """A notebook's first cell: the seaborn theme, the experiment's ``table.csv`` (and ``images.csv`` when written),
    and a printed line naming the config and the cells that did not run. Returns ``(table, images_csv, note)``."""
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    results_dir = Path(results_dir)
    table = pd.read_csv(results_dir / "table.csv")
    images_path = results_dir / "images.csv"
    images_csv = pd.read_csv(images_path) if images_path.exists() else None
    note = not_run_note(table)
    print("config:", config_label)
    print(note or "all cells ran")
    return table, images_csv, note


def load_cell_images(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{cell: images.pt content}`` for every cell folder under ``results_dir``; a cell of several victim seeds
    (``<cell>/seed<k>/images.pt``) gives its seeds' targets merged (the first seed's where a target repeats), each
    with the folder it came from (``"run"``)."""
    out: dict[str, dict[str, Any]] = {}
    root = Path(results_dir)
    for path in sorted(root.glob("*/images.pt")) + sorted(root.glob("*/seed*/images.pt")):
        run = path.parent.relative_to(root).as_posix()
        cell = run.split("/")[0]
        store = io.load_tensors(path)
        if cell not in out:
            out[cell] = {**store, "targets": {}}
        if not isinstance(store, dict):
            continue
        for target, images in (store.get("targets") or {}).items():
            out[cell]["targets"].setdefault(target, {**images, "run": run})
        if store.get("status") == "ok":
            out[cell]["status"] = "ok"
    return out


def best_median_worst(images_csv, cell: str) -> list[tuple[str, str, float]]:
    """(label, target, psnr) of the best, median and worst finite image of a cell (fewer when the cell is small)."""
    rows = images_csv[(images_csv.cell == cell) & images_csv.psnr.notna()].sort_values("psnr")
    if rows.empty:
        return []
    picks = {"worst": rows.iloc[0], "median": rows.iloc[len(rows) // 2], "best": rows.iloc[-1]}
    seen, out = set(), []
    for label in ("best", "median", "worst"):
        row = picks[label]
        if row.target not in seen:
            seen.add(row.target)
            out.append((label, str(row.target), float(row.psnr)))
    return out


def save_figure(fig, figures_dir: str | Path, stem: str) -> None:
    """PNG (for the report) and PDF (for papers) side by side."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        io.save_figure(fig, figures_dir / f"{stem}.{ext}", dpi=150, bbox_inches="tight")


def show_image(ax, tensor: torch.Tensor, title: str = "") -> None:
    """[C,H,W] in [0,1] on an axis, NaN shown black."""
    ax.imshow(torch.nan_to_num(tensor.detach().cpu(), nan=0.0).clamp(0, 1).permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def human_label(cell: str) -> str:
    """A cell id such as ``LeNetZhu_untrained_zhu_halfce`` as a reader's label ("untrained LeNet (Zhu), DLG (user
    0.5·CE)"): known model, weight and method ids are named, the other parts joined by spaces."""
    parts = str(cell).split("_")
    model = MODEL_NAMES.get(parts[0], parts[0]) if parts else ""
    rest = parts[1:]
    weights = WEIGHT_NAMES.get(rest[0]) if rest else None
    if weights is not None:
        rest = rest[1:]
    method_id = "_".join(rest)
    method = METHOD_NAMES.get(method_id, " ".join(rest))
    network = f"{weights} {model}" if weights else model
    return f"{network}, {method}" if method else network


def add_footer(fig, text: str, y: float = -0.02) -> None:
    """The config label (and commit) under the figure (``y`` in figure coordinates), never in its title."""
    if text:
        fig.text(0.5, y, text, ha="center", va="top", fontsize=6, color="0.35")


def convergence_figure(images_csv, title: str, footer: str = ""):
    """PSNR of each cell's mean reconstruction against the iterations spent (the snapshots kept during the attack
    and scored afterwards): one curve per cell, so a reader sees whether its budget was enough."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(5, 3))
    ran = images_csv[images_csv.status != NOT_RUN] if images_csv is not None else None
    if ran is None or ran.empty or "snapshots" not in ran.columns:
        ax.axis("off")
        ax.text(0.5, 0.5, "no cell ran", ha="center")
    else:
        for cell, rows in ran.groupby("cell", sort=False):
            curves = [dict((int(i), p) for i, p in json.loads(s)) for s in rows.snapshots.drop_duplicates()]
            iterations = sorted(set().union(*curves))
            means = [
                sum(0.0 if c.get(i) is None or c[i] != c[i] else c[i] for c in curves) / len(curves)
                for i in iterations
            ]
            (line,) = ax.plot(iterations, means, marker="o", label=f"{human_label(cell)} (n={len(curves)})")
            runs = rows.get("psnr_half_budget_run")
            if runs is not None and runs.notna().all():  # the same attack run at half the budget
                half = sum(0.0 if v != v else v for v in runs) / len(runs)
                ax.plot([iterations[-1] // 2], [half], marker="s", mfc="none", color=line.get_color(), ls="")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
        ticks = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xticks(ticks, [str(t) for t in ticks])  # the snapshot iterations themselves
        ax.set_xlabel("iterations; □ = the attack run at half the budget")
        ax.set_ylabel("mean PSNR [dB] (failures as 0)")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False)
    ax.set_title(title, fontsize=8)
    add_footer(fig, footer, y=-0.17)  # below the legend
    return fig


def not_run_note(table) -> str:
    """One line naming the cells that were not run and why ('' when all ran)."""
    if "status" not in table.columns:
        return ""
    missing = table[table.status == NOT_RUN]
    if missing.empty:
        return ""
    reasons = sorted(set(missing.reason))
    return f"{len(missing)} cell(s) {'; '.join(reasons)}: " + ", ".join(missing.cell)
