"""What every per-image record of an attack cell puts in images.csv, and the digest that names the spec it came from.

One definition for the row builder (:mod:`invgrad.replication.tables`) and for the columns an experiment's claims
may select on (``registry.base.COMMON_COLUMNS``). Torch-free on purpose: the workflow plans from it at parse time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any


def spec_digest(spec: dict[str, Any]) -> str:
    """sha256 of a cell's spec as canonical JSON: a record made from another spec has another digest."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def victim_source(victim: dict) -> str:
    """The training data a victim learned from, with the hash of its decoded tensors (else where its weights came
    from: 'untrained', or the published weights of a pretrained model)."""
    if not victim.get("training_data"):
        return victim.get("source") or victim.get("weights") or "untrained"
    sha = victim.get("training_data_sha256") or ""
    origin = victim.get("training_data_origin") or victim["training_data"]
    return f"{origin} (sha256 {sha[:12]})" if sha else origin


def _victim(record: dict) -> dict:
    return record.get("victim") or {}


def _attack(key: str) -> Callable[[dict], Any]:
    return lambda record: record["spec"]["attack"][key]


def _listed(key: str) -> Callable[[dict], Any]:
    return lambda record: json.dumps(record.get(key, []))


# (column, how to read it from a record), in images.csv's order.
COLUMNS: tuple[tuple[str, Callable[[dict], Any]], ...] = (
    ("experiment", lambda r: r["experiment"]),
    ("cell", lambda r: r["cell"]),
    ("run", lambda r: r.get("run", r["cell"])),  # the cell's job: one per victim seed
    ("victim_seed", lambda r: r.get("victim_seed", r["spec"].get("victim_seed", r["spec"].get("seed")))),
    ("victim_seeds", lambda r: r["spec"].get("victim_seeds", 1)),  # how many the config asks for
    ("target", lambda r: r["target"]),
    ("status", lambda r: r["status"]),
    ("reason", lambda r: r.get("reason", "")),
    ("model", lambda r: r["model"]),
    ("weights", lambda r: r["weights"]),
    ("victim_accuracy", lambda r: _victim(r).get("val_accuracy")),
    ("victim_floor", lambda r: r["spec"].get("victim_floor")),
    ("victim_source", lambda r: victim_source(_victim(r))),
    ("preset", lambda r: r["spec"].get("preset", "ours")),
    ("user_loss_scale", lambda r: r["spec"].get("user_loss_scale", 1.0)),
    ("indices", _listed("indices")),
    ("image_source", lambda r: r.get("val_source", r["spec"].get("val_source", ""))),
    ("exact_images", lambda r: r.get("exact_images")),
    ("psnr_prior", lambda r: r.get("psnr_prior")),
    ("psnr_per_image", _listed("psnr_per_image")),
    ("psnr_prior_per_image", _listed("psnr_prior_per_image")),
    ("snapshots", _listed("snapshots")),
    ("psnr_2x", lambda r: (r.get("double_budget_run") or {}).get("psnr")),
    ("victim_epochs", lambda r: _victim(r).get("epochs")),
    ("victim_training_images", lambda r: _victim(r).get("training_images")),
    ("iterations", _attack("max_iterations")),
    ("restarts", _attack("restarts")),
    ("tv", _attack("total_variation")),
    ("note", lambda r: r["spec"].get("note", "")),
    ("spec_sha256", lambda r: spec_digest(r["spec"])),
    ("psnr", lambda r: r.get("psnr")),
    ("ssim", lambda r: r.get("ssim_mean")),
    ("mse", lambda r: r.get("mse_mean")),
    ("fmse", lambda r: r.get("fmse")),
    ("rec_loss", lambda r: r.get("rec_loss")),
    ("seconds", lambda r: r.get("seconds")),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)


def common_row(record: dict) -> dict[str, Any]:
    """The columns every attack experiment's images.csv has, read from one per-image record."""
    return {name: read(record) for name, read in COLUMNS}
