"""The paper's image grid (arXiv 2003.14053, Figs. 2-6): a ground-truth row above one row per reconstruction,
the PSNR (and LPIPS where it was computed) under each reconstructed image and class names above the truth.

Long batches wrap into blocks so the page stays near the paper's 2-3:1 landscape shape instead of one long strip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from . import metrics as _metrics

TARGET_ASPECT = 2.5  # width : height of the paper's grids
_LABEL_BAND, _TEXT_LINE, _GAP = 0.22, 0.17, 0.06  # inches, per image of ``size`` inches


def _as_rows(reconstructions, metrics) -> tuple[list[str], list[torch.Tensor], list]:
    """One tensor or a name → tensor mapping; metrics alike (an ``image_metrics`` dict, or one per name)."""
    if isinstance(reconstructions, torch.Tensor):
        return ["reconstruction"], [reconstructions], [metrics]
    names = list(reconstructions)
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ValueError("with several reconstruction rows, metrics must map each row's name to its metrics")
    per_row = [None if metrics is None else metrics.get(name) for name in names]
    return names, [reconstructions[name] for name in names], per_row


def _captions(rec: torch.Tensor, truth: torch.Tensor, scores: Mapping | None) -> list[str]:
    """ "PSNR xx.xx dB" (+ "LPIPS 0.xxx" where a number exists) per image; PSNR computed if not given."""
    psnr = (
        list(scores["psnr"]) if scores and "psnr" in scores else _metrics.psnr_per_image(rec, truth).tolist()
    )
    lpips = scores.get("lpips") if scores else None
    lines = []
    for i, value in enumerate(psnr):
        text = "failed (NaN)" if math.isnan(value) else ("∞ dB" if math.isinf(value) else f"{value:.2f} dB")
        if isinstance(lpips, Sequence) and not isinstance(lpips, str):
            text += f"\nLPIPS {lpips[i]:.3f}"
        lines.append(text)
    return lines


def _per_line(widths: list[float], line_h: float, left: float, max_columns: int, counts: list[int]) -> int:
    """Units (images, or groups of images) per line whose page comes closest to TARGET_ASPECT (log scale),
    fewer lines on ties; lines balanced (no count that leaves a ragged last line where fewer lines would do); a
    line holds at most ``max_columns`` images unless one unit alone is wider."""
    best, best_k, units = math.inf, 1, len(widths)
    for k in range(units, 0, -1):
        if k != math.ceil(units / math.ceil(units / k)):
            continue
        if k > 1 and max(sum(counts[i : i + k]) for i in range(0, len(counts), k)) > max_columns:
            continue
        width = left + max(sum(widths[i : i + k]) for i in range(0, len(widths), k))
        distance = abs(math.log(width / (math.ceil(len(widths) / k) * line_h) / TARGET_ASPECT))
        if distance < best - 1e-9:
            best, best_k = distance, k
    return best_k


def display_array(tensor: torch.Tensor) -> np.ndarray:
    array = torch.nan_to_num(tensor.detach().float().cpu(), nan=0.0).clamp(0, 1).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def grid(
    ground_truth: torch.Tensor,
    reconstructions: torch.Tensor | Mapping[str, torch.Tensor],
    metrics: Mapping | None = None,
    labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    caption: str | None = None,
    truth_name: str = "ground truth",
    size: float = 1.0,
    max_columns: int = 12,
    groups: Sequence[tuple[str, int]] | None = None,
) -> Figure:
    """Draw the paper's grid and return the matplotlib Figure (no pyplot state; save it with ``savefig``).

    ground_truth: [N, C, H, W] in [0, 1] (de-normalised, e.g. by :func:`invgrad.metrics.to_unit_range`).
    reconstructions: one [N, C, H, W] tensor in [0, 1], already paired with the truth (``record["order"]``), or
        a mapping of row names (e.g. "proposed", "DLG") to such tensors, drawn in that order.
    metrics: :func:`invgrad.metrics.image_metrics` output for the one tensor, or a name → output mapping; its
        ``psnr`` goes under each image, its ``lpips`` too where it is a list (an "n/a: ..." text is not drawn).
        Without metrics the PSNR is computed here against ``ground_truth`` in the given order.
    labels: N class names drawn above the ground-truth images. title / caption: above / below the grid.
    size: inches per image; max_columns: images per row before the batch wraps into another block.
    groups: (title, count) per run of consecutive images (e.g. one FedAvg user's K images, or one cell's best,
        median and worst), counts summing to N: each group stays together under its title, groups side by side.
    """
    names, recs, scores = _as_rows(reconstructions, metrics)
    n = ground_truth.shape[0]
    for name, rec in zip(names, recs, strict=True):
        if rec.shape != ground_truth.shape:
            raise ValueError(
                f"reconstruction {name!r} has shape {tuple(rec.shape)}, ground truth {tuple(ground_truth.shape)}"
            )
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} images")
    if groups is not None and (sum(c for _, c in groups) != n or any(c < 1 for _, c in groups)):
        raise ValueError(f"groups count {[c for _, c in groups]} images, ground truth has {n}")
    captions = [_captions(rec, ground_truth, s) for rec, s in zip(recs, scores, strict=True)]
    lines = max(c.count("\n") + 1 for row in captions for c in row)

    truth_h = size * (1 + (_LABEL_BAND if labels is not None else 0) + _GAP)
    rec_h = size * (1 + lines * _TEXT_LINE + _GAP)
    cell_w = size * (1 + _GAP)
    # row names, written vertically, left of every line (and of every group, which carries its own margin)
    gap = size * 0.35 if groups is not None else 0.0
    left = size * 0.35 - gap
    units = list(groups) if groups is not None else [("", 1)] * n
    counts = [c for _, c in units]
    starts = [sum(counts[:u]) for u in range(len(units))]
    title_band = size * _TEXT_LINE * max((t.count("\n") + 1 for t, _ in units if t), default=0)
    block_h = title_band + truth_h + len(recs) * rec_h
    widths = [c * cell_w + gap for c in counts]
    per_line = _per_line(widths, block_h, left, max_columns, counts)
    blocks = math.ceil(len(units) / per_line)
    title_lines, caption_lines = (title or "").splitlines() or [""], (caption or "").splitlines() or [""]
    top = (0.2 + 0.17 * len(title_lines)) if title else size * 0.1
    bottom = (0.15 + 0.12 * len(caption_lines)) if caption else size * 0.05
    line_widths = [sum(widths[b * per_line : (b + 1) * per_line]) for b in range(blocks)]
    width, height = left + max(line_widths) + size * 0.05, top + blocks * block_h + bottom
    # A title or caption wider than the images widens the page (about 0.6 em per character); images centred.
    longest = max(max(map(len, title_lines)) * 10, max(map(len, caption_lines)) * 7)
    text_width = longest * 0.6 / 72 + 0.3
    if text_width > width:
        left, width = left + (text_width - width) / 2, text_width
    fig = Figure(figsize=(width, height))
    label_size = 8 if labels is None or max(len(str(t)) for t in labels) <= 14 * size else 6.5

    def axes_at(x: float, y_top: float):
        """An image's axes at x inches from the left, its top y_top inches from the figure's top."""
        return fig.add_axes((x / width, 1 - (y_top + size) / height, size / width, size / height))

    for u, ((group_title, count), first) in enumerate(zip(units, starts, strict=True)):
        b, slot = divmod(u, per_line)
        y = top + b * block_h + title_band
        x0 = left + sum(widths[b * per_line : u]) + gap
        if group_title:
            centre = (x0 + (count * cell_w - size * _GAP) / 2) / width
            fig.text(centre, 1 - (y - title_band) / height, group_title, ha="center", va="top", fontsize=8)
        for j, i in enumerate(range(first, first + count)):
            x = x0 + j * cell_w
            ax = axes_at(x, y + (size * _LABEL_BAND if labels is not None else 0))
            ax.imshow(display_array(ground_truth[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=label_size, pad=2)
            if j == 0 and (groups is not None or slot == 0):
                ax.set_ylabel(truth_name, fontsize=8)
            for r, (name, rec) in enumerate(zip(names, recs, strict=True)):
                ax = axes_at(x, y + truth_h + r * rec_h)
                ax.imshow(display_array(rec[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xlabel(captions[r][i], fontsize=7, labelpad=2)
                if j == 0 and (groups is not None or slot == 0):
                    ax.set_ylabel(name, fontsize=8)
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.text(0.5, 1 - 0.08 / height, title, ha="center", va="top", fontsize=10)
    if caption:
        fig.text(0.5, 0.06 / height, caption, ha="center", va="bottom", fontsize=7, color="0.3")
    return fig


def records_grid(results, class_names, method: str, title: str = "", caption: str = ""):
    """:func:`grid` of attack results (``invgrad.replication.cells.UserResult``: truth, reconstruction and the
    record's per-image ``psnr``/``lpips``/``labels``), one row named ``method``; LPIPS only where it is a number."""
    records = [r.record for r in results]
    scores = {"psnr": [v for rec in records for v in rec["psnr"]]}
    if all(not isinstance(rec.get("lpips"), str) and rec.get("lpips") is not None for rec in records):
        scores["lpips"] = [v for rec in records for v in rec["lpips"]]
    labels = [
        class_names[label].replace("_", " ") if class_names else f"class {label}"
        for rec in records
        for label in rec["labels"]
    ]
    return grid(
        torch.cat([r.truth for r in results]),
        {method: torch.cat([r.reconstruction for r in results])},
        metrics={method: scores},
        labels=labels,
        title=title,
        caption=caption,
    )
