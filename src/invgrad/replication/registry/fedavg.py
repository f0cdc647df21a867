"""Table 2 / Fig. 5 (arXiv 2003.14053 §5): FedAvg updates over local steps n, learning rate τ, images K, batch B."""

from __future__ import annotations

import yaml

from ..claimdefs import ATTACKABLE_DB, Claim, Select
from .base import Experiment, attack_config, cell, fmt, selection

SCHEMA = yaml.safe_load(
    """
type: object
additionalProperties: false
required: [enabled, dataset, model, weights, local_steps, local_lr, images, batch_size, users, start, attack]
properties:
  enabled: {$ref: "#/$defs/enabled"}
  dataset: {$ref: "#/$defs/dataset"}
  model: {$ref: "#/$defs/model"}
  weights: {type: string, enum: [untrained, trained]}
  local_steps: {type: array, minItems: 1, uniqueItems: true, items: {type: integer, minimum: 1}}
  local_lr: {type: array, minItems: 1, uniqueItems: true, items: {type: number, exclusiveMinimum: 0}}
  images: {type: array, minItems: 1, uniqueItems: true, items: {type: integer, minimum: 1, maximum: 100}}
  batch_size: {type: array, minItems: 1, uniqueItems: true, items: {type: integer, minimum: 0}}
  users: {$ref: "#/$defs/count"}
  start: {$ref: "#/$defs/start"}
  attack: {$ref: "#/$defs/attack"}
"""
)


def cells(config: dict, block: dict) -> dict:
    attack = attack_config("ours", block["attack"], config["seed"])
    out = {}
    for steps in block["local_steps"]:
        for lr in block["local_lr"]:
            for k in block["images"]:
                for b in block["batch_size"]:
                    if b > 0 and k % b:
                        continue  # a mini-batch size must divide the user's image count
                    out[f"n{steps}_lr{fmt(lr)}_K{k}_B{b}"] = cell(
                        config,
                        "fedavg",
                        block["model"],
                        block["dataset"],
                        block["weights"],
                        attack,
                        selection(block["start"], block["users"], k, "unique"),
                        threat="fedavg",
                        fedavg={"local_steps": steps, "local_lr": lr, "batch_size": b},
                    )
    return out


def row(spec: dict, record: dict) -> dict:
    fed, k = spec["fedavg"], spec["selection"]["per_user"]
    epochs = fed["local_steps"] if fed["batch_size"] == 0 else fed["local_steps"] * fed["batch_size"] / k
    return {
        "local_steps": fed["local_steps"],
        "local_lr": fed["local_lr"],
        "images": k,
        "batch_size": fed["batch_size"],
        "local_epochs": epochs,
        "update_cosine": record.get("update_cosine"),
    }


def check(block: dict) -> list[str]:
    if not any(b == 0 or k % b == 0 for k in block["images"] for b in block["batch_size"]):
        return ["experiments.fedavg: no batch_size divides any images value: the grid is empty"]
    return []


CLAIMS = (
    Claim(
        "6",
        f"Several local steps (FedAvg) do not protect: beats the prior by ≥ {ATTACKABLE_DB:g} dB (Table 2, Fig. 5)",
        "not published; notebook 1 image 5 steps ≈25.1 dB, 8 images ≈15.8 dB [derived]",
        "beats_prior",
        (Select("fedavg", (("local_steps", ">", 1),)),),
        per=("cell",),
        margin="beats_prior",
    ),
)

CAPTION = (
    "Table 2 / Fig. 5 (federated averaging): mean PSNR over local steps n, local learning rate τ, images "
    "K and batch size B."
)

EXPERIMENT = Experiment(
    name="fedavg",
    schema=SCHEMA,
    cells=cells,
    row=row,
    columns=("local_steps", "local_lr", "images", "batch_size", "local_epochs", "update_cosine"),
    group_keys=("local_steps", "local_lr", "images", "batch_size", "local_epochs"),
    figures=("fedavg_psnr", "fedavg_grid", "fedavg_convergence"),
    claims=CLAIMS,
    check=check,
    caption=CAPTION,
)
