"""Defenses (arXiv 2003.14053 §6 discussion): clipped Gaussian noise and gradient pruning, with (ε, δ)."""

from __future__ import annotations

import yaml

from .base import Experiment, attack_config, cell, fmt, selection

SCHEMA = yaml.safe_load(
    """
type: object
additionalProperties: false
required: [enabled, dataset, model, weights, clip, noise, prune, delta, start, images, attack]
properties:
  enabled: {$ref: "#/$defs/enabled"}
  dataset: {$ref: "#/$defs/dataset"}
  model: {$ref: "#/$defs/model"}
  weights: {type: string, enum: [untrained, trained]}
  clip: {type: number, exclusiveMinimum: 0}
  noise: {type: array, uniqueItems: true, items: {type: number, exclusiveMinimum: 0}}
  prune: {type: array, uniqueItems: true, items: {type: number, exclusiveMinimum: 0, maximum: 1}}
  delta: {type: number, exclusiveMinimum: 0, exclusiveMaximum: 1}
  start: {$ref: "#/$defs/start"}
  images: {$ref: "#/$defs/count"}
  attack: {$ref: "#/$defs/attack"}
"""
)


def cells(config: dict, block: dict) -> dict:
    attack = attack_config("ours", block["attack"], config["seed"])
    sel = selection(block["start"], block["images"], 1, "consecutive")
    settings = [("none", 0, None)]
    settings += [("noise", s, {"clip": block["clip"], "noise": s}) for s in block["noise"]]
    settings += [("prune", p, {"prune": p}) for p in block["prune"]]
    out = {}
    for kind, value, defense in settings:
        name = "none" if kind == "none" else f"{kind}-{fmt(value)}"
        out[name] = cell(
            config,
            "defenses",
            block["model"],
            block["dataset"],
            block["weights"],
            attack,
            sel,
            defense=defense,
            defense_kind=kind,
            defense_value=value,
            delta=block["delta"],
        )
    return out


def row(spec: dict, record: dict) -> dict:
    epsilon = (record.get("privacy") or {}).get("epsilon")
    return {"defense": spec["defense_kind"], "level": spec["defense_value"], "epsilon": epsilon}


CAPTION = (
    "Defenses: PSNR against Gaussian noise scale (with clipping; ε of one release at the configured δ) "
    "and pruning fraction kept."
)

EXPERIMENT = Experiment(
    name="defenses",
    schema=SCHEMA,
    cells=cells,
    row=row,
    columns=("defense", "level", "epsilon"),
    group_keys=("defense", "level"),
    figures=("defenses_curves", "defenses_convergence"),
    caption=CAPTION,
)
