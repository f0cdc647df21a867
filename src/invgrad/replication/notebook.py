"""What the analysis notebooks share: their first cell (:func:`results_or_committed`, :func:`setup`), their
plotting helpers, and the figure source data committed with the figures (:func:`export_figure_data`).

Cheap by design: tables and ``images.pt`` only, never an attack. No matplotlib backend is chosen here: run by a
person, Jupyter's inline backend shows every figure; run by papermill (the workflow) or nbconvert, the kernel is the
same, and :func:`save_figure` writes the PNG and PDF files either way (``Figure.savefig`` needs no display).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .. import io
from ..victim.training import NOT_RUN

COMMITTED = Path("figures/data")  # each experiment's figure source data, committed with the figures
KEPT_TARGETS = 8  # images per cell kept in the committed copy, besides the best, median and worst by PSNR
TABLES = ("table.csv", "images.csv", "trials.csv")


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


def save_and_show(fig, figures_dir: str | Path, stem: str) -> None:
    """Save the figure (:func:`save_figure`) and show it once inline (a pyplot figure is closed after display, so
    Jupyter's inline backend does not draw it a second time)."""
    save_figure(fig, figures_dir, stem)
    try:
        from IPython.display import display

        display(fig)
    except ImportError:  # plain Python: the files are what matters
        pass
    import matplotlib.pyplot as plt

    plt.close(fig)  # a no-op for a Figure pyplot does not manage


def not_run_note(table) -> str:
    """One line naming the cells that were not run, by their reader's labels, and why ('' when all ran)."""
    from .figures.base import human_label  # figures import this module

    if "status" not in table.columns:
        return ""
    missing = table[table.status == NOT_RUN]
    if missing.empty:
        return ""
    reasons = sorted(set(missing.reason))
    return f"{len(missing)} cell(s) {'; '.join(reasons)}: " + "; ".join(map(human_label, missing.cell))
