"""The workflow config expanded into cells, each cell into per-image targets, from the registered experiments.

Torch-free: the Snakefile plans at parse time, and a manual rerun (scripts/attack_cell.py) plans the same way, so a
cell means the same thing to the DAG, to a rerun and to the notebooks.

* :func:`plan` — ``{experiment: {cell: spec}}``; a spec is a JSON-able dict holding everything the cell's job needs
  (model, weights, victim checkpoint, threat model, attack config, which images, seeds). Each experiment's module
  (:mod:`invgrad.replication.registry`) says how its config block expands.
* :func:`check` / :func:`validate` — semantic checks the JSON schema cannot express (a non-finite number, unknown
  model, missing data folder, an image count the data set cannot supply, a claim over a column no cell produces); one
  :class:`PlanError` listing every problem, raised before anything runs.
* :func:`victims` — the trained checkpoints the cells need, ``{path: training spec}``.
* :func:`targets` — per experiment, the per-image JSONs its cells write.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..data.catalog import _FIRST_PER_CLASS_PREFIX as FIRST_PER_CLASS
from ..data.catalog import DATASETS, FIRST_PER_CLASS_IMAGES, image_folder_path
from ..victim.catalog import is_model_name
from . import registry
from .registry.base import (
    CACHE_DIR,
    VICTIM_DIR,
    distinct_images,
    double_budget,
    split_cache,
    victim_path,
    victim_seeds,
)

__all__ = [
    "CACHE_DIR",
    "EMBEDDED_IMAGES",
    "HELD_OUT_EXCLUDES",
    "NO_VAL_FOLDER",
    "VICTIM_DIR",
    "PlanError",
    "attacked_images",
    "check",
    "compute_specs",
    "non_finite",
    "plan",
    "split_cache",
    "targets",
    "training_data_status",
    "validate",
    "victim_path",
    "victims",
]

NO_VAL_FOLDER = (
    "not run: needs an {dataset} validation folder ({folder} does not exist; set data.val.{dataset})"
)
# Held-out accuracy never counts a copy of the first this-many validation images (every experiment attacks within
# them; check() refuses a selection beyond). A constant, so that no attack setting can retrain a victim.
HELD_OUT_EXCLUDES = 2000  # paper.yaml: 3 batches of 100 label-distinct CIFAR-100 images reach index 1224
EMBEDDED_IMAGES = 20


class PlanError(ValueError):
    """The config asks for something that cannot run; the message lists every problem."""


def _enabled(config: dict, name: str) -> dict | None:
    block = config.get("experiments", {}).get(name)
    return block if block and block.get("enabled", True) else None


def load_experiment_modules(config: dict) -> None:
    """Register the experiments of ``experiment_modules`` (importable modules, each with an ``EXPERIMENT``)."""
    registry.load_modules(config.get("experiment_modules", []))


def _claims_or_raise() -> None:
    problems = registry.claim_problems()
    if problems:
        raise PlanError("invalid experiment claims:\n  - " + "\n  - ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------------
def plan(config: dict) -> dict[str, dict[str, dict[str, Any]]]:
    """Every enabled attack experiment's cells, ``{experiment: {cell_name: spec}}`` (registry order).

    Raises :class:`PlanError` when a registered experiment declares a claim over a column its cells do not have."""
    load_experiment_modules(config)
    _claims_or_raise()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for experiment in registry.experiments():
        block = _enabled(config, experiment.name)
        if experiment.attacks and block:
            out[experiment.name] = seeded_cells(config, block, experiment.cells)
    return out


def seeded_cells(config: dict, block: dict, cells) -> dict[str, dict[str, Any]]:
    """An experiment's cells once per victim seed (:func:`~.registry.base.victim_seeds`): the seed initialises an
    untrained victim, trains its own trained one, seeds the attack and the users' defense noise. With one seed a
    cell is one job (``<cell>``); with several, each seed is a job ``<cell>/seed<k>`` writing its own folder, and
    its records name the cell, the seed and the job (``run``), so tables and claims gather the seeds of a cell.
    Every spec also says whether the cell runs at twice its budget too. With ``distinct_images`` (a block with a
    ``start`` and a number of ``images``), seed ``k`` attacks the ``images`` after seed ``k - 1``'s, so the seeds'
    images are distinct; otherwise every seed attacks the same images."""
    seeds, double = victim_seeds(config, block), double_budget(config, block)
    shift = distinct_images(config, block) and isinstance(block.get("images"), int) and "start" in block
    out = {}
    for k, seed in enumerate(seeds):
        own = {**block, "start": block["start"] + k * block["images"]} if shift else block
        for name, spec in cells({**config, "seed": seed}, own).items():
            run = name if len(seeds) == 1 else f"{name}/seed{seed}"
            if spec["victim"] and len(seeds) > 1:
                spec["victim"] = victim_path(spec["model"], spec["dataset"], spec["epochs"], seed)
            out[run] = {
                **spec,
                "cell": name,
                "victim_seed": seed,
                "victim_seeds": len(seeds),
                "double_budget": double,
            }
    return out


def compute_specs(config: dict) -> dict[str, dict[str, Any]]:
    """Specs of the attack-free experiments (analytic FC inversion, label recovery): their config block."""
    load_experiment_modules(config)
    out = {}
    for name in registry.names(attacks=False):
        if block := _enabled(config, name):
            spec = {k: v for k, v in block.items() if k != "enabled"}
            spec.update(experiment=name, seed=config["seed"], data_root=config["data"]["root"])
            if "dataset" in spec:
                spec["val_source"] = config["data"]["val"][spec["dataset"]]
            out[name] = spec
    return out


def victims(config: dict, cells: dict | None = None) -> dict[str, dict[str, Any]]:
    """Checkpoints the trained cells need: ``{path: training spec}``."""
    cells = plan(config) if cells is None else cells
    out: dict[str, dict[str, Any]] = {}
    train = config["training"]
    for experiment in cells.values():
        for spec in experiment.values():
            if spec["victim"] is None:
                continue
            dataset = spec["dataset"]
            out[spec["victim"]] = {
                "schedule": train["schedule"],
                "floor": train.get("floors", {}).get(spec["model"]),
                "attacked_images": HELD_OUT_EXCLUDES,
                "train_cache": split_cache(dataset, "train"),
                "test_cache": split_cache(dataset, "test"),
                "model": spec["model"],
                "dataset": dataset,
                "epochs": spec["epochs"],
                "seed": spec["seed"],
                "train_source": config["data"]["train"].get(dataset),
                "val_source": config["data"]["val"][dataset],
                "data_root": config["data"]["root"],
                "max_images": train["max_images"],
                "eval_images": train["eval_images"],
                "batch_size": train["batch_size"],
            }
    return out


def attacked_images(cells: dict, dataset: str, unique_slack: int = 4) -> int:
    """How many leading validation images of ``dataset`` some experiment may attack (an upper bound: selections
    that skip repeated labels are given ``unique_slack`` images per slot); held-out evaluation excludes copies of
    them. ``unique_slack=1``: the fewest images the selections need."""
    last = 0
    for experiment in cells.values():
        for spec in experiment.values():
            if spec["dataset"] != dataset:
                continue
            sel = spec["selection"]
            span = (
                max(sel["indices"]) + 1
                if sel["rule"] == "list"
                else sel["start"]
                + sel["users"] * sel["per_user"] * (unique_slack if sel["rule"] == "unique" else 1)
            )
            last = max(last, span)
    return last


def targets(config: dict, cells: dict | None = None) -> dict[str, list[str]]:
    """Per experiment, every per-image JSON the cells write (the DAG's leaf results)."""
    cells = plan(config) if cells is None else cells
    return {
        name: [
            f"results/{name}/{cell}/{n}.json"
            for cell, spec in exp.items()
            for n in spec["selection"]["names"]
        ]
        for name, exp in cells.items()
    }


# ----------------------------------------------------------------------------------------------------------------
# Semantic checks
# ----------------------------------------------------------------------------------------------------------------
def training_data_status(config: dict, dataset: str) -> tuple[bool, str]:
    """(usable-or-fetchable, explanation) for the training split of ``dataset``, without network or extraction:
    what :func:`invgrad.data.resolve_training_source` will try when the split is decoded (imports the data
    package, hence torch: not for parse time)."""
    from .. import data

    block = config["data"]
    resolved = data.resolve_training_source(
        dataset,
        block["train"].get(dataset),
        archive=block["archives"].get(dataset),
        root=block["root"],
        download=block.get("download", True),
        fetch=False,
    )
    return resolved.available, resolved.origin if resolved.available else resolved.reason


def _unknown_models(config: dict, cells: dict) -> list[str]:
    problems = []
    for experiment, exp in cells.items():
        for name, spec in exp.items():
            if not is_model_name(spec["model"]):
                problems.append(f"experiments.{experiment}: unknown model {spec['model']!r} (cell {name})")
    # a block's own model (its grid may be empty), a compute experiment's models
    for experiment in registry.experiments():
        block = _enabled(config, experiment.name)
        if not block:
            continue
        named = [block["model"]] if isinstance(block.get("model"), str) else []
        named += [] if experiment.attacks else list(block.get("models", []))
        problems += [
            f"experiments.{experiment.name}: unknown model {m!r}" for m in named if not is_model_name(m)
        ]
    return problems


def reads_training_folder(config: dict, dataset: str, source: str | None) -> bool:
    """Whether validation ``source`` reads ``data.train.<dataset>``'s folder (e.g.
    ``first-per-class:data/raw/cifar10-jpeg``), which the run may unpack from data.archives.<dataset> first."""
    folder = image_folder_path(source)
    return folder is not None and folder == image_folder_path(config["data"]["train"].get(dataset))


def _extracted_folder(config: dict, dataset: str, source: str) -> bool:
    """Whether ``source`` reads the training folder the run unpacks from an existing data.archives.<dataset>."""
    archive = config["data"]["archives"].get(dataset)
    return reads_training_folder(config, dataset, source) and bool(archive) and Path(archive).is_file()


def _data_problems(config: dict, cells: dict) -> list[str]:
    problems = []
    for dataset, source in config["data"]["val"].items():
        folder = image_folder_path(source)
        if dataset == "ImageNet":
            continue  # no download exists: a missing folder makes its cells "not run", the rest still runs
        used = any(spec["dataset"] == dataset for exp in cells.values() for spec in exp.values())
        if (
            used
            and folder is not None
            and not folder.is_dir()
            and not _extracted_folder(config, dataset, source)
        ):
            problems.append(
                f"data.val.{dataset}: image folder {folder} does not exist (nor is it data.train.{dataset}'s "
                f"folder, which the run unpacks from data.archives.{dataset})"
            )
        if source.startswith(FIRST_PER_CLASS) and dataset in DATASETS:
            holds = FIRST_PER_CLASS_IMAGES * DATASETS[dataset].num_classes
            reach = attacked_images(cells, dataset, unique_slack=1)
            if reach > holds:
                problems.append(
                    f"data.val.{dataset}: {source} holds {holds} images ({FIRST_PER_CLASS_IMAGES} per class), the "
                    f"experiments select up to {reach}"
                )
    for experiment, exp in cells.items():  # the embedded sources hold 20 images (indices 0-19)
        for spec in exp.values():
            sel = spec["selection"]
            if not spec["val_source"].startswith("embedded-"):
                continue
            last = (
                max(sel["indices"])
                if sel["rule"] == "list"
                else sel["start"] + sel["users"] * sel["per_user"] - 1
            )
            if last >= EMBEDDED_IMAGES:
                problems.append(
                    f"experiments.{experiment}: needs images up to index {last} but {spec['val_source']} holds "
                    f"{EMBEDDED_IMAGES} (indices 0-{EMBEDDED_IMAGES - 1})"
                )
                break
    for dataset, source in config["data"]["train"].items():
        folder = image_folder_path(source)
        archive = config["data"]["archives"].get(dataset)
        if (
            folder is not None
            and not folder.is_dir()
            and not archive
            and not config["data"].get("download", True)
        ):
            problems.append(
                f"data.train.{dataset}: image folder {folder} does not exist (no data.archives.{dataset} to "
                "extract it from, data.download is false; use null for 'no training data')"
            )
    for dataset in ("CIFAR10", "CIFAR100"):
        reach = attacked_images(cells, dataset)
        if reach > HELD_OUT_EXCLUDES:
            problems.append(
                f"{dataset}: experiments attack validation images up to index {reach - 1}, beyond the first "
                f"{HELD_OUT_EXCLUDES} that held-out victim accuracy excludes"
            )
    return problems


def non_finite(value: Any, where: str = "") -> list[str]:
    """Every ``.inf``/``.nan`` in the config, by its dotted path: JSON schema's bounds let both through
    (``.inf > 0`` holds, every comparison with ``.nan`` is false), and no setting of this workflow may be one."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{where}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}: {value!r} is not a finite number"]
    return []


def check(config: dict) -> list[str]:
    """Problems the schema cannot see, as messages (empty list = fine)."""
    load_experiment_modules(config)
    if infinite := non_finite(config):
        return infinite  # before planning: the attack configs would be built from them
    problems = list(registry.claim_problems())
    try:
        cells = plan(config) if not problems else {}
    except (ValueError, KeyError) as error:
        return [f"invalid attack settings: {error}"]
    problems += _unknown_models(config, cells)
    problems += _data_problems(config, cells)
    for experiment in registry.experiments():
        if block := _enabled(config, experiment.name):
            problems += experiment.check(block)
    return problems


def validate(config: dict) -> dict[str, dict[str, dict[str, Any]]]:
    """Raise one :class:`PlanError` listing every problem; otherwise return the plan."""
    problems = check(config)
    if problems:
        raise PlanError("invalid workflow config:\n  - " + "\n  - ".join(problems))
    return plan(config)
