"""The paper's experiments as data: the workflow config expands into cells, each cell into per-image targets.

The Snakemake workflow (``workflow/``) and the thin scripts in ``scripts/`` both use this module, so a cell means the
same thing to the DAG, to a manual rerun and to the notebooks:

* :func:`check` — semantic checks the JSON schema cannot express (unknown model, missing data folder, an image
  count the data set cannot supply); one :class:`PlanError` listing every problem, raised before anything runs.
* :func:`plan` — ``{experiment: {cell: spec}}``; a spec is a JSON-able dict holding everything the cell's job needs
  (model, weights, victim checkpoint, threat model, attack config, which images, seeds).
* :func:`victims` — the trained checkpoints the cells need, ``{path: training spec}``.

Running a cell (simulate the users, attack, score, write one JSON per image) is :mod:`invgrad.replication.cells`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import data
from ..config import make_config
from ..victim.models import _lookup

ATTACK_EXPERIMENTS = ("table1", "fedavg", "imagenet", "batch", "architecture", "defenses")
COMPUTE_EXPERIMENTS = ("analytic", "labels")
EXPERIMENTS = ATTACK_EXPERIMENTS + COMPUTE_EXPERIMENTS
NO_TRAINING_DATA = data.NO_TRAINING_DATA
NO_VAL_FOLDER = (
    "not run: needs an {dataset} validation folder ({folder} does not exist; set data.val.{dataset})"
)
CACHE_DIR = "data/cache"
# Held-out accuracy never counts a copy of the first this-many validation images (every experiment attacks within
# them; check() refuses a selection beyond). A constant, so that no attack setting can retrain a victim.
HELD_OUT_EXCLUDES = 1000
VICTIM_DIR = "results/victims"
EMBEDDED_IMAGES = 20


class PlanError(ValueError):
    """The config asks for something that cannot run; the message lists every problem."""


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    """Compact, path-safe number: 0.0001 -> 1e-04, 0.5 -> 0.5, 3 -> 3."""
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    text = f"{value:g}"
    return text.replace("+", "")


def victim_path(model: str, dataset: str, epochs: int) -> str:
    return f"{VICTIM_DIR}/{dataset}/{model}_e{epochs}.pt"


THREAT_KEYS = ("preset", "user_loss_scale")  # per-method keys of a config block that are not attack settings


def _attack_config(preset: str, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    overrides = {k: v for k, v in overrides.items() if k not in ("restart_chunk", *THREAT_KEYS)}
    return make_config(preset, seed=seed, **overrides)


def split_cache(dataset: str, split: str) -> str:
    """The decoded split file (uint8 tensors) a victim trains or is measured on."""
    return f"{CACHE_DIR}/{dataset}-{split}.pt"


def _enabled(config: dict, name: str) -> dict | None:
    block = config.get("experiments", {}).get(name)
    return block if block and block.get("enabled", True) else None


def _selection(start: int, users: int, per_user: int, rule: str) -> dict[str, Any]:
    # single consecutive images are named by their validation index; users with (possibly) several images u0, u1, ...
    single = per_user == 1 and rule == "consecutive"
    names = [str(start + e) for e in range(users)] if single else [f"u{e}" for e in range(users)]
    return {"rule": rule, "start": start, "users": users, "per_user": per_user, "names": names}


# ----------------------------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------------------------
def _cell(config, experiment, model, dataset, weights, attack, selection, **extra) -> dict[str, Any]:
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


def plan(config: dict) -> dict[str, dict[str, dict[str, Any]]]:
    """Every enabled experiment's cells, ``{experiment: {cell_name: spec}}`` (insertion-ordered)."""
    seed = config["seed"]
    out: dict[str, dict[str, dict[str, Any]]] = {}

    if block := _enabled(config, "table1"):
        sel = _selection(block["start"], block["images"], 1, "consecutive")
        cells = {}
        for model in block["models"]:
            for weights in block["weights"]:
                for method, overrides in block["methods"].items():
                    preset = overrides.get("preset", method)
                    attack = _attack_config(preset, overrides, seed)
                    cells[f"{model}_{weights}_{method}"] = _cell(
                        config,
                        "table1",
                        model,
                        block["dataset"],
                        weights,
                        attack,
                        sel,
                        method=method,
                        preset=preset,
                        user_loss_scale=float(overrides.get("user_loss_scale", 1.0)),
                    )
        out["table1"] = cells

    if block := _enabled(config, "fedavg"):
        cells = {}
        attack = _attack_config("ours", block["attack"], seed)
        for steps in block["local_steps"]:
            for lr in block["local_lr"]:
                for k in block["images"]:
                    for b in block["batch_size"]:
                        if b > 0 and k % b:
                            continue  # a mini-batch size must divide the user's image count
                        sel = _selection(block["start"], block["users"], k, "unique")
                        name = f"n{steps}_lr{_fmt(lr)}_K{k}_B{b}"
                        cells[name] = _cell(
                            config,
                            "fedavg",
                            block["model"],
                            block["dataset"],
                            block["weights"],
                            attack,
                            sel,
                            threat="fedavg",
                            fedavg={"local_steps": steps, "local_lr": lr, "batch_size": b},
                        )
        out["fedavg"] = cells

    if block := _enabled(config, "imagenet"):
        cells = {}
        attack = _attack_config("ours", block["attack"], seed)
        sel = {
            "rule": "list",
            "indices": list(block["indices"]),
            "per_user": 1,
            "users": len(block["indices"]),
            "names": [str(i) for i in block["indices"]],
        }
        for model in block["models"]:
            cells[model] = _cell(
                config,
                "imagenet",
                model,
                "ImageNet",
                "pretrained",
                attack,
                sel,
                image_size=block["image_size"],
                note=block["note"],
            )
        out["imagenet"] = cells

    if block := _enabled(config, "batch"):
        attack = _attack_config("ours", block["attack"], seed)
        sel = _selection(block["start"], 1, block["images"], "unique")
        name = f"{block['model']}_{block['weights']}_K{block['images']}"
        out["batch"] = {
            name: _cell(
                config,
                "batch",
                block["model"],
                block["dataset"],
                block["weights"],
                attack,
                sel,
                epochs=block["train_epochs"],
                note=block["note"],
            )
        }

    if block := _enabled(config, "architecture"):
        attack = _attack_config("ours", block["attack"], seed)
        sel = _selection(block["start"], block["images"], 1, "consecutive")
        cells = {}
        sweeps = [(f"ResNet{block['width_depth']}-{k}", "width", k) for k in block["widths"]]
        sweeps += [(f"ResNet{d}-{block['depth_width']}", "depth", d) for d in block["depths"]]
        for model, axis, value in sweeps:
            for weights in block["weights"]:
                name = f"{model}_{weights}"
                spec = cells.get(name) or _cell(
                    config, "architecture", model, block["dataset"], weights, attack, sel, sweeps=[]
                )
                spec["sweeps"].append({"axis": axis, "value": value})
                cells[name] = spec
        out["architecture"] = cells

    if block := _enabled(config, "defenses"):
        attack = _attack_config("ours", block["attack"], seed)
        sel = _selection(block["start"], block["images"], 1, "consecutive")
        settings = [("none", 0, None)]
        settings += [("noise", s, {"clip": block["clip"], "noise": s}) for s in block["noise"]]
        settings += [("prune", p, {"prune": p}) for p in block["prune"]]
        cells = {}
        for kind, value, defense in settings:
            name = "none" if kind == "none" else f"{kind}-{_fmt(value)}"
            cells[name] = _cell(
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
        out["defenses"] = cells
    return out


def compute_specs(config: dict) -> dict[str, dict[str, Any]]:
    """Specs of the attack-free experiments (analytic FC inversion, label recovery)."""
    out = {}
    for name in COMPUTE_EXPERIMENTS:
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
                "seed": config["seed"],
                "train_source": config["data"]["train"].get(dataset),
                "val_source": config["data"]["val"][dataset],
                "data_root": config["data"]["root"],
                "max_images": train["max_images"],
                "eval_images": train["eval_images"],
                "batch_size": train["batch_size"],
            }
    return out


def attacked_images(cells: dict, dataset: str) -> int:
    """How many leading validation images of ``dataset`` some experiment may attack (an upper bound: selections
    that skip repeated labels are given four images per slot); held-out evaluation excludes copies of them."""
    last = 0
    for experiment in cells.values():
        for spec in experiment.values():
            if spec["dataset"] != dataset:
                continue
            sel = spec["selection"]
            span = (
                max(sel["indices"]) + 1
                if sel["rule"] == "list"
                else sel["start"] + sel["users"] * sel["per_user"] * (4 if sel["rule"] == "unique" else 1)
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
def _folder_of(source: str | None) -> Path | None:
    if source and source.lower().startswith("image-folder:"):
        return Path(source.split(":", 1)[1]).expanduser()
    return None


def training_data_status(config: dict, dataset: str) -> tuple[bool, str]:
    """(usable-or-fetchable, explanation) for the training split of ``dataset``, without network or extraction:
    what :func:`invgrad.data.resolve_training_source` will try when the split is decoded."""
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


def check(config: dict) -> list[str]:
    """Problems the schema cannot see, as messages (empty list = fine). Also returns warnings via ``config``."""
    problems: list[str] = []
    try:
        cells = plan(config)
    except (ValueError, KeyError) as error:
        return [f"invalid attack settings: {error}"]
    for experiment, exp in cells.items():
        for name, spec in exp.items():
            try:
                _lookup(spec["model"])
            except ValueError:
                problems.append(f"experiments.{experiment}: unknown model {spec['model']!r} (cell {name})")
    for name, spec in compute_specs(config).items():
        for model in spec["models"]:
            try:
                _lookup(model)
            except ValueError:
                problems.append(f"experiments.{name}: unknown model {model!r}")
    for block_name in ("defenses", "fedavg", "batch"):
        block = _enabled(config, block_name)
        if block:
            try:
                _lookup(block["model"])
            except ValueError:
                problems.append(f"experiments.{block_name}: unknown model {block['model']!r}")
    for dataset, source in config["data"]["val"].items():
        folder = _folder_of(source)
        if dataset == "ImageNet":
            continue  # no download exists: a missing folder makes its cells "not run", the rest still runs
        used = any(spec["dataset"] == dataset for exp in cells.values() for spec in exp.values())
        if used and folder is not None and not folder.is_dir():
            problems.append(f"data.val.{dataset}: image folder {folder} does not exist")
    for experiment, exp in cells.items():  # the embedded sources hold 20 images (indices 0-19)
        spec = next(iter(exp.values()))
        sel = spec["selection"]
        if spec["val_source"].startswith("embedded-"):
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
    for dataset, source in config["data"]["train"].items():
        folder = _folder_of(source)
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
    if fed := _enabled(config, "fedavg"):
        if not any(b == 0 or k % b == 0 for k in fed["images"] for b in fed["batch_size"]):
            problems.append("experiments.fedavg: no batch_size divides any images value: the grid is empty")
    return problems


def validate(config: dict) -> dict[str, dict[str, dict[str, Any]]]:
    """Raise one :class:`PlanError` listing every problem; otherwise return the plan."""
    problems = check(config)
    if problems:
        raise PlanError("invalid workflow config:\n  - " + "\n  - ".join(problems))
    return plan(config)
