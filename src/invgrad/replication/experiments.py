"""Running a cell (and the notebooks' plotting helpers); planning lives in :mod:`invgrad.replication.plan`.

* :func:`run_cell` — simulate the users, attack all their updates in one batched ``reconstruct_many`` call, and
  write one JSON per image (plus ``images.pt`` with truths and reconstructions for the figures).

The planning names (``plan``, ``validate``, ``victims``, ...) are re-exported here for existing callers; new code
imports them from :mod:`invgrad.replication.plan` (torch-free) and the experiments from
:mod:`invgrad.replication.registry`.

The attacker only ever receives the model, the shared update, the protocol's public parameters and the labels
(granted by the paper's threat model); ground truth is used after the attack, for scoring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import data, io, metrics
from ..attack.engine import snapshot_iterations
from ..io import image_grid, load_tensors, save_json, save_png, save_tensors, to_uint8
from ..user.gradient import shared_gradient
from ..victim.models import build_model
from ..victim.training import NOT_RUN, load_checkpoint
from . import registry
from .plan import (  # noqa: F401  (re-exported planning names)
    CACHE_DIR,
    EMBEDDED_IMAGES,
    HELD_OUT_EXCLUDES,
    NO_VAL_FOLDER,
    VICTIM_DIR,
    PlanError,
    _folder_of,
    attacked_images,
    check,
    compute_specs,
    plan,
    split_cache,
    targets,
    training_data_status,
    validate,
    victim_path,
    victims,
)
from .registry.base import THREAT_KEYS  # noqa: F401

ATTACK_EXPERIMENTS = registry.names(attacks=True)
COMPUTE_EXPERIMENTS = registry.names(attacks=False)
EXPERIMENTS = ATTACK_EXPERIMENTS + COMPUTE_EXPERIMENTS
NO_TRAINING_DATA = data.NO_TRAINING_DATA


# ----------------------------------------------------------------------------------------------------------------
# Running a cell
# ----------------------------------------------------------------------------------------------------------------
def _load_victim(spec: dict) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    info = data.dataset_info(spec["dataset"])
    num_classes = None if spec["weights"] == "pretrained" else info.num_classes
    if spec["weights"] == "untrained":
        model = build_model(spec["model"], num_classes=num_classes, seed=spec["seed"])
        return model, {"weights": "untrained", "init_seed": spec["seed"]}
    if spec["weights"] == "pretrained":
        model = build_model(spec["model"], pretrained=True)
        return model, {"weights": "pretrained", "source": "published ImageNet weights"}
    state, meta = load_checkpoint(spec["victim"])
    if meta.get("status") == NOT_RUN:
        return None, meta
    model = build_model(spec["model"], num_classes=num_classes, seed=spec["seed"])
    model.load_state_dict(state)
    return model, meta


def _select(spec: dict, dataset) -> list[list[int]]:
    sel = spec["selection"]
    if sel["rule"] == "list":
        return [[i] for i in sel["indices"]]
    rows = []
    for e in range(sel["users"]):
        start = sel["start"] + e * sel["per_user"]
        if sel["rule"] == "consecutive":
            rows.append(data.consecutive_indices(dataset, start, sel["per_user"]))
        else:
            rows.append(data.unique_label_indices(dataset, start, sel["per_user"]))
    return rows


def _normalisation(model, spec) -> tuple[torch.Tensor, torch.Tensor]:
    own = getattr(model, "input_normalization", None)
    if own is not None and spec["weights"] == "pretrained":
        return tuple(torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in own)
    return data.mean_std(spec["dataset"])


def _prepare(images: torch.Tensor, spec: dict, dm, ds) -> torch.Tensor:
    """Data-set normalisation → [0,1] → (optional resize) → the model's normalisation."""
    unit = data.denormalize(images, spec["dataset"]).clamp(0, 1)
    size = spec.get("image_size")
    if size and tuple(unit.shape[-2:]) != (size, size):
        unit = torch.nn.functional.interpolate(unit, size=(size, size), mode="bilinear", antialias=True)
        unit = unit.clamp(0, 1)
    return (unit - dm) / ds


def _not_run_record(spec: dict, cell: str, name: str, reason: str) -> dict[str, Any]:
    return {
        "experiment": spec["experiment"],
        "cell": cell,
        "target": name,
        "status": NOT_RUN,
        "reason": reason,
        "model": spec["model"],
        "weights": spec["weights"],
        "psnr": math.nan,
        "spec": spec,
    }


def _not_run_cell(spec, cell, out_dir, names, positions, only, log, reason) -> list[dict[str, Any]]:
    records = [_not_run_record(spec, cell, names[p], reason) for p in positions]
    for record in records:
        save_json(record, out_dir / f"{record['target']}.json")
    if not only or not (out_dir / "images.pt").exists():
        save_tensors({"status": NOT_RUN, "reason": reason, "targets": {}}, out_dir / "images.pt")
    log(f"{cell}: {reason}")
    return records


def _user_updates(model, spec, truths, labels) -> tuple[list, list[dict]]:
    """What each simulated user shares (the only thing handed to the attacker) and per-user defense facts."""
    if spec["threat"] == "fedavg":
        from .federated import local_update

        fed = spec["fedavg"]
        updates = [
            local_update(
                model, x, y, fed["local_steps"], fed["local_lr"], fed["batch_size"], use_updates=True
            )
            for x, y in zip(truths, labels, strict=True)
        ]
        return updates, [{} for _ in updates]
    scale = spec.get("user_loss_scale", 1.0)  # 0.5: the paper code's user loss before 2021-03 (attacker: CE)
    updates = [shared_gradient(model, x, y, loss_scale=scale) for x, y in zip(truths, labels, strict=True)]
    if spec.get("defense"):
        from .defenses import Defense

        facts = []
        for e, update in enumerate(updates):
            defense = Defense(seed=spec["seed"] + e, **spec["defense"])
            updates[e] = defense.apply(update)
            facts.append({"defense": defense.as_dict(), "privacy": defense.privacy(spec["delta"])})
        return updates, facts
    return updates, [{} for _ in updates]


def _reconstructor(model, spec, dm, ds, num_images):
    if spec["threat"] == "fedavg":
        from .federated import FedAvgReconstructor

        fed = spec["fedavg"]
        return FedAvgReconstructor(
            model,
            (dm, ds),
            fed["local_steps"],
            fed["local_lr"],
            spec["attack"],
            num_images=num_images,
            use_updates=True,
            batch_size=fed["batch_size"],
        )
    from ..attack.reconstructor import GradientReconstructor

    return GradientReconstructor(model, (dm, ds), spec["attack"], num_images=num_images)


def run_cell(
    spec: dict[str, Any],
    cell: str,
    out_dir: str | Path,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Attack every user of one cell in one batched call; write ``<target>.json`` per user and ``images.pt``.

    ``only``: target names to (re)compute alone — each keeps the seed it has in the full batch, so a rerun of one
    image reproduces that image's result; ``images.pt`` is updated in place for those targets.
    """
    out_dir = Path(out_dir)
    names = spec["selection"]["names"]
    positions = list(range(len(names))) if not only else [names.index(n) for n in only]
    device = torch.device(spec["device"])
    model, victim_meta = _load_victim(spec)
    if model is None:
        reason = victim_meta.get("reason", NOT_RUN)
        return _not_run_cell(spec, cell, out_dir, names, positions, only, log, reason)
    model = model.to(device).eval()
    folder = _folder_of(spec["val_source"])
    if folder is not None and not folder.is_dir():
        return _not_run_cell(
            spec,
            cell,
            out_dir,
            names,
            positions,
            only,
            log,
            NO_VAL_FOLDER.format(dataset=spec["dataset"], folder=folder),
        )
    dataset = data.load_dataset(
        spec["val_source"],
        split="val",
        root=data.source_root(spec["val_source"], spec["data_root"]),
        stats=spec["dataset"],
    )
    index_rows = [_select(spec, dataset)[p] for p in positions]
    dm, ds = (t.to(device) for t in _normalisation(model, spec))
    truths, labels = [], []
    for rows in index_rows:
        x, y = data.load_targets(dataset, rows)
        truths.append(_prepare(x, spec, dm.cpu(), ds.cpu()).to(device))
        labels.append(y.to(device))
    updates, facts = _user_updates(model, spec, truths, labels)  # all the server sees

    num_images = spec["selection"]["per_user"]
    attack = dict(spec["attack"])
    attack["seed"] = spec["attack"]["seed"] + positions[0]
    runs = (
        [positions]
        if positions == list(range(positions[0], positions[0] + len(positions)))
        else [[p] for p in positions]
    )
    outputs, stats_rows, seconds, snapshots, half_budget = {}, {}, {}, {}, {}
    keep = snapshot_iterations(attack["max_iterations"])
    for group in runs:  # one batched call for a contiguous block (the whole cell in the normal case)
        attack["seed"] = spec["attack"]["seed"] + group[0]
        attacker = _reconstructor(model, {**spec, "attack": attack}, dm, ds, num_images)
        where = [positions.index(p) for p in group]
        start = time.perf_counter()
        out, stats = attacker.reconstruct_many(
            [updates[i] for i in where],
            [labels[i] for i in where],
            img_shape=tuple(truths[0].shape[1:]),
            state_path=out_dir / f".attack_state_{group[0]}.pt",  # a preempted job resumes from here
            snapshots=keep,
        )
        elapsed = time.perf_counter() - start
        for j, p in enumerate(group):
            outputs[p] = out[j]
            stats_rows[p] = {
                key: (value[j] if isinstance(value, list | torch.Tensor) else value)
                for key, value in stats.items()
                if key in ("opt", "chosen", "failures", "restart_losses", "labels")
            }
            seconds[p] = elapsed / len(group)
            snapshots[p] = {it: images[j] for it, images in stats["snapshots"].items()}
        log(f"{cell}: attacked {len(group)} user(s) × {num_images} image(s) in {elapsed:.1f} s")
        if attack["lr_decay"] and attack["max_iterations"] >= 2:
            # A decaying schedule anneals at its end, so the iterate at half the budget is not what half the
            # budget would give: run the same attack (same seeds) at half the budget to measure the last doubling.
            half = _reconstructor(
                model,
                {**spec, "attack": {**attack, "max_iterations": attack["max_iterations"] // 2}},
                dm,
                ds,
                num_images,
            )
            out_half, _ = half.reconstruct_many(
                [updates[i] for i in where],
                [labels[i] for i in where],
                img_shape=tuple(truths[0].shape[1:]),
                state_path=out_dir / f".attack_state_half_{group[0]}.pt",
            )
            for j, p in enumerate(group):
                half_budget[p] = out_half[j]
            log(f"{cell}: the same attack at half the budget for the convergence check")

    records, tensors = [], {}
    for i, p in enumerate(positions):
        truth01 = metrics.to_unit_range(truths[i], dm, ds)
        rec01 = metrics.to_unit_range(outputs[p], dm, ds)
        scores = metrics.image_metrics(rec01, truth01, match=num_images > 1)
        prior01 = metrics.to_unit_range(torch.zeros_like(truths[i]), dm, ds)  # the data set's mean colour
        prior = metrics.psnr_per_image(prior01, truth01).tolist()
        curve = [  # scored after the attack, with the final image pairing; the attacker never saw these
            [
                it,
                float(
                    metrics.psnr_per_image(metrics.to_unit_range(x, dm, ds)[scores["order"]], truth01).mean()
                ),
            ]
            for it, x in sorted(snapshots[p].items())
        ]
        if p in half_budget:
            half_scores = metrics.image_metrics(
                metrics.to_unit_range(half_budget[p], dm, ds), truth01, num_images > 1
            )
            half_run = {"iterations": attack["max_iterations"] // 2, "psnr": half_scores["psnr_mean"]}
        else:
            half_run = None
        failed = stats_rows[p]["chosen"] is None
        record = {
            "experiment": spec["experiment"],
            "cell": cell,
            "target": names[p],
            "status": "failed" if failed else "ok",
            "model": spec["model"],
            "weights": spec["weights"],
            "dataset": spec["dataset"],
            "val_source": spec["val_source"],
            "indices": index_rows[i],
            "labels": labels[i].tolist(),
            **scores,
            "psnr_per_image": scores["psnr"],
            "ssim_per_image": scores["ssim"],
            "psnr": scores["psnr_mean"],
            "psnr_prior_per_image": prior,
            "psnr_prior": sum(prior) / len(prior),
            "snapshots": curve,
            "half_budget_run": half_run,
            "fmse": math.nan if failed else metrics.feature_mse(model, outputs[p], truths[i]),
            "rec_loss": stats_rows[p]["opt"],
            "chosen_restart": stats_rows[p]["chosen"],
            "failed_restarts": stats_rows[p]["failures"],
            "seconds": seconds[p],
            "attack_seed": spec["attack"]["seed"] + p,
            "victim": victim_meta,
            "device": str(device),
            "torch": str(torch.__version__),
            "spec": spec,
            **facts[i],
        }
        records.append(record)
        save_json(record, out_dir / f"{names[p]}.json")
        tensors[names[p]] = {"truth": truth01, "reconstruction": rec01[scores["order"]]}
    previous = {}
    if only and (out_dir / "images.pt").exists():
        old = load_tensors(out_dir / "images.pt")
        previous = old.get("targets", {}) if isinstance(old, dict) else {}
    save_tensors({"status": "ok", "targets": {**previous, **tensors}}, out_dir / "images.pt")
    rows = []
    for name in names:
        if name in tensors:
            rows += [to_uint8(tensors[name]["truth"]), to_uint8(tensors[name]["reconstruction"])]
    if rows and num_images == 1:
        pairs = [[r[0] for r in rows[0::2]], [r[0] for r in rows[1::2]]]
        save_png(image_grid(pairs, scale=max(1, 128 // truths[0].shape[-1])), out_dir / "preview.png")
    return records


# ----------------------------------------------------------------------------------------------------------------
# Helpers for the analysis notebooks (cheap: tables and images.pt only, never an attack)
# ----------------------------------------------------------------------------------------------------------------
def load_cell_images(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{cell: images.pt content}`` for every cell folder under ``results_dir``."""
    out = {}
    for path in sorted(Path(results_dir).glob("*/images.pt")):
        out[path.parent.name] = load_tensors(path)
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


def convergence_figure(images_csv, title: str):
    """PSNR of each cell's mean reconstruction against the iterations spent (the snapshots kept during the attack
    and scored afterwards): one curve per cell, so a reader sees whether its budget was enough."""
    import json

    import matplotlib.pyplot as plt

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
            (line,) = ax.plot(iterations, means, marker="o", label=f"{cell} (n={len(curves)})")
            runs = rows.get("psnr_half_budget_run")
            if runs is not None and runs.notna().all():  # the same attack run at half the budget
                half = sum(0.0 if v != v else v for v in runs) / len(runs)
                ax.plot([iterations[-1] // 2], [half], marker="s", mfc="none", color=line.get_color(), ls="")
        ax.set_xscale("log")
        ax.set_xlabel("iterations (L-BFGS: outer steps); □ = the attack run at half the budget")
        ax.set_ylabel("mean PSNR [dB] (failures as 0)")
        ax.legend(fontsize=6)
    ax.set_title(title, fontsize=8)
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
