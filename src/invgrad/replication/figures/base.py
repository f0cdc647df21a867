"""What every figure shares: :class:`ExperimentData` (an experiment's tables and images), reader's labels for
cell ids, the footer under the data, and the convergence figure every attack experiment draws.

Conventions, one place: reader's labels (:func:`human_label`), the config in a footer never in the title, Adam
iterations and L-BFGS steps on separate panels, legends outside the data, spread shown only from n = 5.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ...config import PRESETS
from ...data.catalog import dataset_info
from ...victim.training import NOT_RUN
from .. import notebook as _nb

METHOD_NAMES = {"ours": "proposed", "zhu": "DLG", "zhu_halfce": "DLG (user 0.5·CE)"}
WEIGHT_NAMES = {"untrained": "untrained", "trained": "trained", "pretrained": "pretrained"}
MODEL_NAMES = {"LeNetZhu": "LeNet (Zhu)", "efficientnet-lite0": "EfficientNet-Lite0"}
MIN_SPREAD_N = 5  # below this many values per point, no band or error bar is drawn
OPTIMIZER_AXES = {"lbfgs": "L-BFGS steps", "adam": "signed-Adam iterations", "sgd": "SGD iterations"}


# Cell ids that are not <model>_<weights>_<method>: the experiment settings they encode, in words.
SETTING_LABELS = (
    (re.compile(r"^n(\d+)_lr([^_]+)_K(\d+)_B0$"), "{0} local step(s), τ={1}, K={2}, full batch"),
    (re.compile(r"^n(\d+)_lr([^_]+)_K(\d+)_B(\d+)$"), "{0} local step(s), τ={1}, K={2}, B={3}"),
    (re.compile(r"^noise-(.+)$"), "Gaussian noise σ={0}"),
    (re.compile(r"^prune-(.+)$"), "pruned, {0} of the entries kept"),
    (re.compile(r"^none$"), "no defense"),
)


def human_label(cell: str) -> str:
    """A cell id such as ``LeNetZhu_untrained_zhu_halfce`` as a reader's label ("untrained LeNet (Zhu), DLG (user
    0.5·CE)"): known model, weight and method ids are named, settings (FedAvg, defenses, ``K18``) spelt out."""
    for pattern, text in SETTING_LABELS:
        if match := pattern.match(str(cell)):
            return text.format(*match.groups())
    parts = str(cell).split("_")
    model = MODEL_NAMES.get(parts[0], parts[0]) if parts else ""
    rest = parts[1:]
    weights = WEIGHT_NAMES.get(rest[0]) if rest else None
    if weights is not None:
        rest = rest[1:]
    rest = [f"{p[1:]} images" if re.fullmatch(r"K\d+", p) else p for p in rest]
    method = METHOD_NAMES.get("_".join(rest), " ".join(rest))
    network = f"{weights} {model}" if weights else model
    return f"{network}, {method}" if method else network


def in_words(text: str) -> str:
    """A config's free text (a cell's note) with the model ids it names written as the reader's names."""
    for model, name in MODEL_NAMES.items():
        text = re.sub(rf"(?<![\w-]){re.escape(model)}(?![\w-])", name, text)
    return text


def network_label(model: str, weights: str) -> str:
    return f"{WEIGHT_NAMES.get(weights, weights)} {MODEL_NAMES.get(model, model)}"


@dataclass
class ExperimentData:
    """What an experiment's figures read: its tables, per-cell images and the run's labels."""

    results_dir: Path
    table: object
    images_csv: object = None
    note: str = ""
    config_label: str = ""
    recovered_psnr: float = 18.0

    @classmethod
    def load(cls, results_dir, config_label: str = "", recovered_psnr: float = 18.0) -> ExperimentData:
        table, images_csv, note = _nb.setup(results_dir, config_label)
        return cls(Path(results_dir), table, images_csv, note, config_label, recovered_psnr)

    @property
    def footer(self) -> str:
        text = f"config: {self.config_label}" if self.config_label else ""
        return "\n".join(t for t in (text, textwrap.fill(self.note, 110) if self.note else "") if t)

    @property
    def ran(self):
        return self.images_csv[self.images_csv.status != NOT_RUN]

    @cached_property
    def store(self) -> dict:
        return _nb.load_cell_images(self.results_dir)

    def trials(self):
        import pandas as pd

        return pd.read_csv(self.results_dir / "trials.csv")

    def record(self, cell: str, target: str) -> dict:
        run = self.store.get(cell, {}).get("targets", {}).get(target, {}).get("run", cell)
        path = self.results_dir / run / f"{target}.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def footer_below(fig, text: str) -> None:
    """The footer (config, cells not run) under everything the figure draws (tick labels and legends included)."""
    if not text:
        return
    fig.canvas.draw()
    lowest = fig.get_tightbbox(fig.canvas.get_renderer()).y0  # inches from the bottom
    fig.text(0.5, lowest / fig.get_figheight() - 0.03, text, ha="center", va="top", fontsize=6, color="0.35")


def finish(fig, data: ExperimentData, title: str):
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    footer_below(fig, data.footer)
    return fig


def message(text: str, data: ExperimentData, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(text, 80), ha="center", va="center", fontsize=8)
    return finish(fig, data, title)


def _class_names(record: dict) -> tuple[str, ...] | None:
    try:
        return dataset_info(record.get("dataset", "")).class_names
    except (KeyError, ValueError, TypeError):
        return None


def label_names(record: dict) -> list[str]:
    names = _class_names(record)
    return [names[i].replace("_", " ") if names else f"class {i}" for i in record.get("labels", [])]


def _optimizer(preset) -> str:
    return PRESETS.get(str(preset), {}).get("optim", "adam")


def convergence(data: ExperimentData, title: str):
    """PSNR of each cell's mean reconstruction against the iterations spent (snapshots kept during the attack,
    scored afterwards), one panel per optimizer family, so Adam iterations and L-BFGS steps never share an axis."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ran = data.ran if data.images_csv is not None else None
    if ran is None or ran.empty or "snapshots" not in ran.columns:
        return message("no cell ran", data, title)
    families = ran.preset.map(_optimizer) if "preset" in ran.columns else ran.cell.map(lambda _: "adam")
    groups = [(OPTIMIZER_AXES.get(f, f), ran[families == f]) for f in dict.fromkeys(families)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.8 * len(groups), 3.2), squeeze=False)
    for ax, (xlabel, part) in zip(axes[0], groups, strict=True):
        for cell, rows in part.groupby("cell", sort=False):
            curves = [dict((int(i), p) for i, p in json.loads(s)) for s in rows.snapshots.drop_duplicates()]
            iterations = sorted(set().union(*curves))
            means = [
                sum(0.0 if c.get(i) is None or c[i] != c[i] else c[i] for c in curves) / len(curves)
                for i in iterations
            ]
            ax.plot(iterations, means, marker="o", label=f"{human_label(cell)} (n={len(curves)})")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean PSNR [dB] (failures as 0)")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return finish(fig, data, title)


def convergence_of(title: str):
    """The convergence figure with its title, as a one-argument figure function."""
    return lambda data: convergence(data, title)
