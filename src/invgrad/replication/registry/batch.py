"""Fig. 6 (arXiv 2003.14053 §5): users sharing a batch of many images each (the batch is the unit of claim 7)."""

from __future__ import annotations

import yaml

from ..claimdefs import ATTACKABLE_DB, Claim, Select
from .base import Experiment, attack_config, cell, selection

SCHEMA = yaml.safe_load(
    """
type: object
additionalProperties: false
required: [enabled, dataset, model, weights, train_epochs, start, images, batches, note, attack]
properties:
  enabled: {$ref: "#/$defs/enabled"}
  dataset: {$ref: "#/$defs/dataset"}
  model: {$ref: "#/$defs/model"}
  weights: {type: string, enum: [untrained, trained]}
  train_epochs: {type: integer, minimum: 1}
  start: {$ref: "#/$defs/start"}
  images: {type: integer, minimum: 1, maximum: 100}
  batches: {type: integer, minimum: 1, description: independent batches (users), each of `images` images}
  note: {type: string}
  attack: {$ref: "#/$defs/attack"}
"""
)


def cells(config: dict, block: dict) -> dict:
    name = f"{block['model']}_{block['weights']}_K{block['images']}"
    return {
        name: cell(
            config,
            "batch",
            block["model"],
            block["dataset"],
            block["weights"],
            attack_config("ours", block["attack"], config["seed"]),
            selection(block["start"], block["batches"], block["images"], "unique"),
            epochs=block["train_epochs"],
            note=block["note"],
        )
    }


def row(spec: dict, record: dict) -> dict:
    per_image = [v for v in record.get("psnr_per_image", []) if v == v]
    return {
        "images": spec["selection"]["per_user"],
        "psnr_max": max(per_image) if per_image else float("nan"),
    }


CLAIMS = (
    Claim(
        "7",
        f"A batch of many images still leaks some of them (Fig. 6): beats the prior by ≥ {ATTACKABLE_DB:g} dB, "
        "≥ 1 image recovered",
        "not published; breaching rerun (untrained): avg 11.20 dB, max 16.82 dB",
        "batch_leaks",
        (Select("batch"),),
        per=("cell",),
        margin="beats_prior",
    ),
)

CAPTION = (
    "Fig. 6 (large batch, CIFAR-100): every image of the batch with its reconstruction (Hungarian-"
    "matched) and the PSNR distribution."
)

EXPERIMENT = Experiment(
    name="batch",
    schema=SCHEMA,
    cells=cells,
    row=row,
    columns=("images", "psnr_max"),
    group_keys=("model", "weights", "images"),
    figures=("batch_grid", "batch_psnr", "batch_convergence"),
    claims=CLAIMS,
    caption=CAPTION,
)
