"""Every figure of the replication, one function per figure stem of the experiment registry (``FIGURES``).

The notebooks are thin: they load an :class:`ExperimentData` and call :func:`draw`, so one test renders every
figure from the committed ``figures/data`` and checks what a reader sees (no cell ids, no page beyond 4:1).
"""

from __future__ import annotations

from .base import ExperimentData, convergence, convergence_of, human_label, network_label
from .charts import (
    analytic_error,
    architecture_curves,
    batch_psnr,
    defenses_curves,
    fedavg_psnr,
    labels_accuracy,
    table1_psnr,
)
from .grids import batch_grid, fedavg_grid, imagenet_grid, table1_grid

__all__ = ["FIGURES", "ExperimentData", "convergence", "draw", "human_label", "network_label"]

FIGURES = {
    "table1": {
        "table1_psnr": table1_psnr,
        "table1_grid": table1_grid,
        "table1_convergence": convergence_of("Table 1: mean PSNR against the attack's budget"),
    },
    "fedavg": {
        "fedavg_psnr": fedavg_psnr,
        "fedavg_grid": fedavg_grid,
        "fedavg_convergence": convergence_of("FedAvg: mean PSNR against the attack's budget"),
    },
    "batch": {
        "batch_grid": batch_grid,
        "batch_psnr": batch_psnr,
        "batch_convergence": convergence_of("Fig. 6 batch: mean PSNR against the attack's budget"),
    },
    "defenses": {
        "defenses_curves": defenses_curves,
        "defenses_convergence": convergence_of("Defenses: mean PSNR against the attack's budget"),
    },
    "architecture": {
        "architecture_curves": architecture_curves,
        "architecture_convergence": convergence_of("Architecture: mean PSNR against the attack's budget"),
    },
    "imagenet": {
        "imagenet_grid": imagenet_grid,
        "imagenet_convergence": convergence_of("ImageNet: mean PSNR against the attack's budget"),
    },
    "labels": {"labels_accuracy": labels_accuracy},
    "analytic": {"analytic_error": analytic_error},
}


def draw(stem: str, data: ExperimentData):
    """The figure ``stem`` (a registry figure name, e.g. ``table1_grid``) drawn from ``data``."""
    for figures in FIGURES.values():
        if stem in figures:
            return figures[stem](data)
    raise KeyError(f"no figure {stem!r}; known: {sorted(s for f in FIGURES.values() for s in f)}")
