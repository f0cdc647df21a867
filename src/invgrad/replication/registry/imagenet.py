"""Fig. 1/3 (arXiv 2003.14053 §4): pretrained ImageNet networks, chosen validation images (needs a local folder)."""

from __future__ import annotations

import yaml

from ..claimdefs import ATTACKABLE_DB, Claim, Select, eq
from .base import Experiment, attack_config, cell

SCHEMA = yaml.safe_load(
    """
type: object
additionalProperties: false
required: [enabled, models, indices, image_size, note, attack]
properties:
  enabled: {$ref: "#/$defs/enabled"}
  models:
    type: array
    minItems: 1
    uniqueItems: true
    items: {type: string, enum: [torchvision-resnet18, torchvision-resnet152, efficientnet-lite0]}
  indices: {type: array, minItems: 1, uniqueItems: true, items: {type: integer, minimum: 0}}
  image_size: {type: integer, minimum: 16, maximum: 512}
  note: {type: string}
  attack: {$ref: "#/$defs/attack"}
  dlg:
    type: boolean
    description: also attack each model with DLG (the zhu preset, 500 L-BFGS steps) for claim 8b
"""
)


def cells(config: dict, block: dict) -> dict:
    attack = attack_config("ours", block["attack"], config["seed"])
    sel = {
        "rule": "list",
        "indices": list(block["indices"]),
        "per_user": 1,
        "users": len(block["indices"]),
        "names": [str(i) for i in block["indices"]],
    }
    methods = {"ours": attack}
    if block.get("dlg"):  # claim 8b: DLG on ImageNet-sized images, at its own preset's budget
        methods["zhu"] = attack_config("zhu", {}, config["seed"])
    out = {}
    for model in block["models"]:
        for method, config_of in methods.items():
            extra = {} if method == "ours" else {"preset": method}
            out[model if method == "ours" else f"{model}_{method}"] = cell(
                config,
                "imagenet",
                model,
                "ImageNet",
                "pretrained",
                config_of,
                sel,
                image_size=block["image_size"],
                note=block["note"],
                **extra,
            )
    return out


def row(spec: dict, record: dict) -> dict:
    # method: the attack method (always the proposed one here), so that claim 8b can ask for a DLG cell
    return {"image_size": spec.get("image_size"), "method": spec.get("method", spec.get("preset", "ours"))}


CLAIMS = (
    Claim(
        "2b",
        f"Pretrained ImageNet networks are attackable: beats the prior by ≥ {ATTACKABLE_DB:g} dB (Fig. 1/3)",
        "qualitative; notebook ≈9.9 dB (R18) / ≈10.9 dB (R152), one image [derived]",
        "beats_prior",
        (Select("imagenet"),),
        per=("cell",),
        margin="beats_prior",
    ),
    Claim(
        "8b",
        "DLG cannot attack ImageNet-sized data",
        "qualitative",
        "fails_to_beat_prior",
        (Select("imagenet", eq(method="zhu")),),
        per=("cell",),
        margin="beats_prior",
    ),
)

CAPTION = (
    "Fig. 1 / 3 (ImageNet): ground truth vs reconstruction from a pretrained network's gradient. Quick "
    "config: a labelled substitute (see the figure title)."
)

EXPERIMENT = Experiment(
    name="imagenet",
    schema=SCHEMA,
    cells=cells,
    row=row,
    columns=("image_size", "method"),
    group_keys=("model", "image_size"),
    figures=("imagenet_grid", "imagenet_convergence"),
    claims=CLAIMS,
    caption=CAPTION,
)
