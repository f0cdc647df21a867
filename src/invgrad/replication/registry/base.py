"""What an experiment module declares (:class:`Experiment`) and the helpers its ``cells`` function builds specs with.

Torch-free on purpose: the workflow plans from these at parse time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...config import make_config
from ..claimdefs import Claim
from ..records import COLUMN_NAMES

CACHE_DIR = "data/cache"
VICTIM_DIR = "results/victims"
THREAT_KEYS = ("preset", "user_loss_scale")  # per-method keys of a config block that are not attack settings
# Columns every attack experiment's images.csv has, whatever the experiment (one definition: records.COLUMNS).
COMMON_COLUMNS = COLUMN_NAMES
SWEEP_COLUMNS = ("axis", "value")  # rows of a cell that belongs to several sweeps (spec["sweeps"])

Cells = dict[str, dict[str, Any]]


def _no_row(spec: dict, record: dict) -> dict[str, Any]:
    return {}


def _no_problems(block: dict) -> list[str]:
    return []


@dataclass(frozen=True)
class Experiment:
    """One experiment, declared once.

    * ``schema`` — the JSON-schema fragment of ``experiments.<name>`` (may ``$ref`` the shared ``#/$defs``).
    * ``cells(config, block) -> {cell: spec}`` — an attack experiment's grid (``None``: a compute experiment,
      whose spec is its config block and whose table ``script`` writes table.csv and trials.csv).
    * ``row(spec, record) -> dict`` — the experiment's own columns of images.csv; ``columns`` names them.
    * ``group_keys`` — the columns table.csv groups images by (besides ``cell``).
    * ``figures`` — the stems its notebook writes under figures/ (``.png`` and ``.pdf``).
    * ``claims`` — the claims of the paper (arXiv 2003.14053) decided from its tables; checked at plan time against ``columns``.
    * ``check(block) -> [problem]`` — what the schema cannot say about the block.
    * ``script`` — a compute experiment's table script (``--spec <block as JSON> --out table.csv``).
    * ``notebook`` — default ``notebooks/<name>.ipynb``; ``caption`` — what its figures show (HTML report).
    """

    name: str
    schema: dict[str, Any]
    figures: tuple[str, ...]
    cells: Callable[[dict, dict], Cells] | None = None
    row: Callable[[dict, dict], dict[str, Any]] = _no_row
    columns: tuple[str, ...] = ()
    group_keys: tuple[str, ...] = ()
    claims: tuple[Claim, ...] = ()
    check: Callable[[dict], list[str]] = _no_problems
    script: str | None = None
    notebook: str | None = None
    caption: str = ""

    @property
    def attacks(self) -> bool:
        return self.cells is not None

    @property
    def notebook_path(self) -> str:
        return self.notebook or f"notebooks/{self.name}.ipynb"

    def table_columns(self) -> set[str]:
        """Every column a claim may select on: the common ones and this experiment's own."""
        base = set(COMMON_COLUMNS) | set(SWEEP_COLUMNS) if self.attacks else {"cell"}
        return base | set(self.columns) | set(self.group_keys)


# ----------------------------------------------------------------------------------------------------------------
# Helpers for the cells functions
# ----------------------------------------------------------------------------------------------------------------
def fmt(value: float) -> str:
    """Compact, path-safe number: 0.0001 -> 1e-04, 0.5 -> 0.5, 3 -> 3."""
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    text = f"{value:g}"
    return text.replace("+", "")


def victim_path(model: str, dataset: str, epochs: int, seed: int | None = None) -> str:
    """A trained victim's checkpoint; ``seed``: one of several independently trained victims (``_s<seed>``)."""
    suffix = "" if seed is None else f"_s{seed}"
    return f"{VICTIM_DIR}/{dataset}/{model}_e{epochs}{suffix}.pt"


def victim_seeds(config: dict, block: dict) -> list[int]:
    """The victim seeds of an experiment's cells: ``victim_seeds`` of its block, else of the config (default 1),
    numbered from ``seed`` × count, so another base seed gives a disjoint set (seed 0: 0, 1, 2; seed 1: 3, 4, 5)."""
    count = int(block.get("victim_seeds", config.get("victim_seeds", 1)))
    return [config["seed"] * count + k for k in range(count)]


def distinct_images(config: dict, block: dict) -> bool:
    """Does each victim seed attack its own images (the next ``images`` after the previous seed's)?"""
    return bool(block.get("distinct_images", config.get("distinct_images", False)))


def double_budget(config: dict, block: dict) -> bool:
    """Does every cell of the experiment also run at twice its budget (``double_budget``, block over config)?"""
    return bool(block.get("double_budget", config.get("double_budget", False)))


def split_cache(dataset: str, split: str) -> str:
    """The decoded split file (uint8 tensors) a victim trains or is measured on."""
    return f"{CACHE_DIR}/{dataset}-{split}.pt"


def attack_config(preset: str, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """The cell's attack config: ``preset`` with the block's settings over it; the block may set its own ``seed``."""
    overrides = {k: v for k, v in overrides.items() if k not in THREAT_KEYS}
    overrides.setdefault("seed", seed)
    return make_config(preset, **overrides)


def selection(start: int, users: int, per_user: int, rule: str) -> dict[str, Any]:
    """Which validation images each simulated user holds."""
    # single consecutive images are named by their validation index; users with (possibly) several images u0, u1, ...
    single = per_user == 1 and rule == "consecutive"
    names = [str(start + e) for e in range(users)] if single else [f"u{e}" for e in range(users)]
    return {"rule": rule, "start": start, "users": users, "per_user": per_user, "names": names}


def cell(config, experiment, model, dataset, weights, attack, selection, **extra) -> dict[str, Any]:
    """One cell's spec: everything its job needs, JSON-able; ``extra`` adds or overrides keys."""
    epochs = extra.pop("epochs", config["training"]["epochs"])
    victim = victim_path(model, dataset, epochs) if weights == "trained" else None
    floor = config["training"].get("floors", {}).get(model) if weights == "trained" else None
    return {
        "experiment": experiment,
        "model": model,
        "dataset": dataset,
        "val_source": config["data"]["val"][dataset],
        "data_root": config["data"]["root"],
        "weights": weights,
        "victim": victim,
        "epochs": epochs if weights == "trained" else None,
        "attack": attack,
        "selection": selection,
        "seed": config["seed"],
        "device": config["device"],
        "threat": "gradient",
        "image_size": None,
        "note": "",
        "victim_floor": floor,
        "user_loss_scale": 1.0,
        "preset": "ours",
        **extra,
    }
