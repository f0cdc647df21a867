"""A toy attack experiment registered from the test suite (tests/test_registry.py): one cheap cell per model on
one embedded CIFAR-10 image. It is what docs/EXTENDING.md walks through: a module, a config block, a notebook."""

from __future__ import annotations

from invgrad.replication.claimdefs import Claim, Select, eq
from invgrad.replication.registry.base import Experiment, attack_config, cell, selection

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["enabled", "models", "image", "attack"],
    "properties": {
        "enabled": {"$ref": "#/$defs/enabled"},
        "models": {"$ref": "#/$defs/models"},
        "image": {"$ref": "#/$defs/start"},
        "attack": {"$ref": "#/$defs/attack"},
    },
}


def cells(config: dict, block: dict) -> dict:
    attack = attack_config("ours", block["attack"], config["seed"])
    sel = selection(block["image"], 1, 1, "consecutive")
    return {
        f"{model}_tiny": cell(config, "toy", model, "CIFAR10", "untrained", attack, sel)
        for model in block["models"]
    }


def row(spec: dict, record: dict) -> dict:
    return {"budget": spec["attack"]["max_iterations"]}


EXPERIMENT = Experiment(
    name="toy",
    schema=SCHEMA,
    cells=cells,
    row=row,
    columns=("budget",),
    group_keys=("model", "budget"),
    figures=("toy_psnr",),
    claims=(
        Claim(
            "9t",
            "toy: an untrained LeNet (Zhu) leaks its image (beats the prior by 3 dB)",
            "none (a test)",
            "beats_prior",
            (Select("toy", eq(model="LeNetZhu")),),
            per=("cell",),
            margin=3.0,
        ),
    ),
    notebook="toy/toy.ipynb",
)
