"""Width and depth sweeps of CIFAR ResNets (arXiv 2003.14053 §5); a cell may sit on both sweeps."""

from __future__ import annotations

import yaml

from ..claimdefs import Claim, Select, eq
from .base import Experiment, attack_config, cell, selection

SCHEMA = yaml.safe_load(
    """
type: object
additionalProperties: false
required: [enabled, dataset, width_depth, widths, depth_width, depths, weights, start, images, attack]
properties:
  enabled: {$ref: "#/$defs/enabled"}
  dataset: {$ref: "#/$defs/dataset"}
  width_depth: {type: integer, enum: [20, 32, 44, 56, 110]}
  widths: {type: array, minItems: 1, uniqueItems: true, items: {type: integer, minimum: 1, maximum: 64}}
  depth_width: {type: integer, minimum: 1, maximum: 64}
  depths: {type: array, minItems: 1, uniqueItems: true, items: {type: integer, enum: [20, 32, 44, 56, 110]}}
  weights: {$ref: "#/$defs/weights_list"}
  start: {$ref: "#/$defs/start"}
  images: {$ref: "#/$defs/count"}
  attack: {$ref: "#/$defs/attack"}
"""
)


def cells(config: dict, block: dict) -> dict:
    attack = attack_config("ours", block["attack"], config["seed"])
    sel = selection(block["start"], block["images"], 1, "consecutive")
    out: dict = {}
    sweeps = [(f"ResNet{block['width_depth']}-{k}", "width", k) for k in block["widths"]]
    sweeps += [(f"ResNet{d}-{block['depth_width']}", "depth", d) for d in block["depths"]]
    for model, axis, value in sweeps:
        for weights in block["weights"]:
            name = f"{model}_{weights}"
            spec = out.get(name) or cell(
                config, "architecture", model, block["dataset"], weights, attack, sel, sweeps=[]
            )
            spec["sweeps"].append({"axis": axis, "value": value})  # images.csv: one row per sweep
            out[name] = spec
    return out


CLAIMS = (
    Claim(
        "4",
        "Wider networks leak more (widest vs narrowest width, same depth)",
        "not published",
        "paired_greater",
        (
            Select("architecture", eq(axis="width"), pick=("value", "max")),
            Select("architecture", eq(axis="width"), pick=("value", "min")),
        ),
        per=("weights",),
        margin="method",
    ),
)

CAPTION = "Architecture study: PSNR against ResNet width and depth, trained and untrained."

EXPERIMENT = Experiment(
    name="architecture",
    schema=SCHEMA,
    cells=cells,
    group_keys=("axis", "value", "model", "weights"),
    figures=("architecture_curves", "architecture_convergence"),
    claims=CLAIMS,
    caption=CAPTION,
)
