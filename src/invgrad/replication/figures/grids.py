"""The replication's image grids, ground truth above each reconstruction with the class name above and the PSNR
below (the paper's Figs. 1-6): Table 1's best, median and worst, FedAvg users, the large batch, ImageNet."""

from __future__ import annotations

import textwrap

from .. import notebook as _nb
from .base import MODEL_NAMES, ExperimentData, human_label, in_words, label_names, message


def _grouped_grid(groups, title: str, data: ExperimentData):
    """:func:`invgrad.plot.grid` of ``groups`` [(title, [(truth, reconstruction, name above, PSNR), ...])]: each
    group its own ground truth over its reconstruction, groups side by side near the paper's aspect ratio."""
    import torch

    from ...plot import grid

    images = [image for _, group in groups for image in group]
    return grid(
        torch.stack([truth for truth, _, _, _ in images]),
        torch.stack([rec for _, rec, _, _ in images]),
        metrics={"psnr": [psnr for _, _, _, psnr in images]},
        labels=[above for _, _, above, _ in images],
        title=title,
        caption=data.footer,
        truth_name="truth",
        groups=[(name, len(group)) for name, group in groups],
    )


def table1_grid(data: ExperimentData):
    """Per cell its best, median and worst image: ground truth (class name above) over its reconstruction (PSNR
    below), one group per cell."""
    title = "Table 1: best, median and worst image per cell"
    cells = [c for c in data.table.cell if c in set(data.ran.cell) and c in data.store]
    groups = []
    for cell in cells:
        images = []
        for label, target, psnr in _nb.best_median_worst(data.images_csv, cell):
            pair, names = data.store[cell]["targets"][target], label_names(data.record(cell, target))
            above = f"{label}: {names[0]}" if names else label
            images.append((pair["truth"][0], pair["reconstruction"][0], above, psnr))
        if images:
            groups.append((human_label(cell), images))
    if not groups:
        return message("no reconstruction to show", data, title)
    return _grouped_grid(groups, title, data)


def fedavg_grid(data: ExperimentData, users: int = 2):
    """Per FedAvg setting, its first users' K images from one weight update each: truth over reconstruction."""
    title = "Fig. 5: FedAvg reconstructions (each user's K images from one weight update)"
    groups = []
    for cell in data.table.cell:
        targets = list(data.store.get(cell, {}).get("targets", {}).items())[:users]
        row = data.table[data.table.cell == cell].iloc[0]
        for target, pair in targets:
            record = data.record(cell, target)
            names, psnrs = label_names(record), record.get("psnr_per_image", [])
            images = [
                (
                    pair["truth"][j],
                    pair["reconstruction"][j],
                    names[j] if j < len(names) else "",
                    psnrs[j] if j < len(psnrs) else float("nan"),
                )
                for j in range(pair["truth"].shape[0])
            ]
            name = f"n = {int(row.local_steps)} local steps, τ = {row.local_lr:g}: user {target.lstrip('u')}"
            groups.append((name, images))
    if not groups:
        return message("no FedAvg reconstruction to show", data, title)
    return _grouped_grid(groups, title, data)


def batch_grid(data: ExperimentData):
    """The one large batch: ground truth with class names, reconstructions with PSNR, ``*`` at the recovered line."""
    from ...plot import grid

    cell = data.table.cell.iloc[0]
    pair = data.store.get(cell, {}).get("targets", {}).get("u0")
    record = data.record(cell, "u0")
    if pair is None or not record:
        return message("the batch did not run", data, "Fig. 6: one batch")
    marks = {"psnr": record["psnr_per_image"]}
    note = in_words(record["spec"].get("note", ""))
    caption = "\n".join([textwrap.fill(note, 120), data.footer]) if note else data.footer
    return grid(
        pair["truth"],
        {"proposed": pair["reconstruction"]},
        metrics={"proposed": marks},
        labels=label_names(record),
        title=f"Fig. 6: one batch of {len(record['labels'])} images; "
        f"{sum(v >= data.recovered_psnr for v in marks['psnr'])} at PSNR ≥ {data.recovered_psnr:g} dB",
        caption=caption,
        max_columns=9,
    )


def imagenet_grid(data: ExperimentData):
    """Each ImageNet image and its reconstruction with PSNR, against the mean-colour prior; where the attack does
    not beat that prior, the figure says in words that the paper's figure is not reproduced at this budget."""
    import torch

    from ...plot import grid

    rows = [
        (c, t, pair)
        for c in data.table.cell
        if c in data.store
        for t, pair in data.store[c]["targets"].items()
    ]
    if not rows:
        return message("no ImageNet cell ran", data, "Fig. 1/3: ImageNet")
    ran = data.ran
    by_target = {(r.cell, str(r.target)): float(r.psnr) for r in ran.itertuples()}
    psnrs = [by_target.get((c, str(t)), float("nan")) for c, t, _ in rows]
    psnr, prior = float(ran.psnr.mean()), float(ran.psnr_prior.mean())
    verdict = (
        f"mean {psnr:.1f} dB beats the mean-colour prior ({prior:.1f} dB)"
        if psnr > prior
        else f"not reproduced at this budget: {psnr:.1f} dB, below the mean-colour prior's {prior:.1f} dB"
    )
    spec = ran.iloc[0]
    model = MODEL_NAMES.get(spec.model, spec.model)
    note = in_words("; ".join(sorted(set(ran.note.dropna())))) if "note" in ran else ""
    return grid(
        torch.cat([pair["truth"] for _, _, pair in rows]),
        {f"{model}, {int(spec.iterations)} it.": torch.cat([pair["reconstruction"] for _, _, pair in rows])},
        metrics={f"{model}, {int(spec.iterations)} it.": {"psnr": psnrs}},
        title=f"Fig. 1/3: ImageNet\n{verdict}",
        caption="\n".join(t for t in (textwrap.fill(note, 90), data.footer) if t),
        size=1.6,
    )
