"""The paper's experiments as data: the workflow config expands into cells, each cell into per-image targets.

The Snakemake workflow (``workflow/``) and the thin scripts in ``scripts/`` both use this module, so a cell means the
same thing to the DAG, to a manual rerun and to the notebooks:

* :func:`check` — semantic checks the JSON schema cannot express (unknown model, missing data folder, an image
  count the data set cannot supply); one :class:`PlanError` listing every problem, raised before anything runs.
* :func:`plan` — ``{experiment: {cell: spec}}``; a spec is a JSON-able dict holding everything the cell's job needs
  (model, weights, victim checkpoint, threat model, attack config, which images, seeds).
* :func:`victims` — the trained checkpoints the cells need, ``{path: training spec}``.
* :func:`run_cell` — simulate the users, attack all their updates in one batched ``reconstruct_many`` call, and
  write one JSON per image (plus ``images.pt`` with truths and reconstructions for the figures).

The attacker only ever receives the model, the shared update, the protocol's public parameters and the labels
(granted by the paper's threat model); ground truth is used after the attack, for scoring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import data, io, metrics
from ..attack.engine import snapshot_iterations
from ..config import make_config
from ..io import image_grid, load_tensors, save_json, save_png, save_tensors, to_uint8
from ..user.gradient import shared_gradient
from ..victim.models import _lookup, build_model
from ..victim.training import NOT_RUN, load_checkpoint

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


# ----------------------------------------------------------------------------------------------------------------
# Running a cell
# ----------------------------------------------------------------------------------------------------------------
def _load_victim(spec: dict) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    info = data.dataset_info(spec["dataset"])
    num_classes = None if spec["weights"] == "pretrained" else info.num_classes
    if spec["weights"] == "untrained":
        model = build_model(spec["model"], num_classes=num_classes, seed=spec["seed"])
        return model, {"weights": "untrained", "init_seed": spec["seed"]}
    if spec["weights"] == "pretrained":
        model = build_model(spec["model"], pretrained=True)
        return model, {"weights": "pretrained", "source": "published ImageNet weights"}
    state, meta = load_checkpoint(spec["victim"])
    if meta.get("status") == NOT_RUN:
        return None, meta
    model = build_model(spec["model"], num_classes=num_classes, seed=spec["seed"])
    model.load_state_dict(state)
    return model, meta


def _select(spec: dict, dataset) -> list[list[int]]:
    sel = spec["selection"]
    if sel["rule"] == "list":
        return [[i] for i in sel["indices"]]
    rows = []
    for e in range(sel["users"]):
        start = sel["start"] + e * sel["per_user"]
        if sel["rule"] == "consecutive":
            rows.append(data.consecutive_indices(dataset, start, sel["per_user"]))
        else:
            rows.append(data.unique_label_indices(dataset, start, sel["per_user"]))
    return rows


def _normalisation(model, spec) -> tuple[torch.Tensor, torch.Tensor]:
    own = getattr(model, "input_normalization", None)
    if own is not None and spec["weights"] == "pretrained":
        return tuple(torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in own)
    return data.mean_std(spec["dataset"])


def _prepare(images: torch.Tensor, spec: dict, dm, ds) -> torch.Tensor:
    """Data-set normalisation → [0,1] → (optional resize) → the model's normalisation."""
    unit = data.denormalize(images, spec["dataset"]).clamp(0, 1)
    size = spec.get("image_size")
    if size and tuple(unit.shape[-2:]) != (size, size):
        unit = torch.nn.functional.interpolate(unit, size=(size, size), mode="bilinear", antialias=True)
        unit = unit.clamp(0, 1)
    return (unit - dm) / ds


def _not_run_record(spec: dict, cell: str, name: str, reason: str) -> dict[str, Any]:
    return {
        "experiment": spec["experiment"],
        "cell": cell,
        "target": name,
        "status": NOT_RUN,
        "reason": reason,
        "model": spec["model"],
        "weights": spec["weights"],
        "psnr": math.nan,
        "spec": spec,
    }


def _not_run_cell(spec, cell, out_dir, names, positions, only, log, reason) -> list[dict[str, Any]]:
    records = [_not_run_record(spec, cell, names[p], reason) for p in positions]
    for record in records:
        save_json(record, out_dir / f"{record['target']}.json")
    if not only or not (out_dir / "images.pt").exists():
        save_tensors({"status": NOT_RUN, "reason": reason, "targets": {}}, out_dir / "images.pt")
    log(f"{cell}: {reason}")
    return records


def _user_updates(model, spec, truths, labels) -> tuple[list, list[dict]]:
    """What each simulated user shares (the only thing handed to the attacker) and per-user defense facts."""
    if spec["threat"] == "fedavg":
        from ..user.fedavg import local_update

        fed = spec["fedavg"]
        updates = [
            local_update(
                model, x, y, fed["local_steps"], fed["local_lr"], fed["batch_size"], use_updates=True
            )
            for x, y in zip(truths, labels, strict=True)
        ]
        return updates, [{} for _ in updates]
    scale = spec.get("user_loss_scale", 1.0)  # 0.5: the paper code's user loss before 2021-03 (attacker: CE)
    updates = [shared_gradient(model, x, y, loss_scale=scale) for x, y in zip(truths, labels, strict=True)]
    if spec.get("defense"):
        from ..user.defenses import Defense

        facts = []
        for e, update in enumerate(updates):
            defense = Defense(seed=spec["seed"] + e, **spec["defense"])
            updates[e] = defense.apply(update)
            facts.append({"defense": defense.as_dict(), "privacy": defense.privacy(spec["delta"])})
        return updates, facts
    return updates, [{} for _ in updates]


def _reconstructor(model, spec, dm, ds, num_images):
    if spec["threat"] == "fedavg":
        from ..attack.fedavg import FedAvgReconstructor

        fed = spec["fedavg"]
        return FedAvgReconstructor(
            model,
            (dm, ds),
            fed["local_steps"],
            fed["local_lr"],
            spec["attack"],
            num_images=num_images,
            use_updates=True,
            batch_size=fed["batch_size"],
        )
    from ..attack.reconstructor import GradientReconstructor

    return GradientReconstructor(model, (dm, ds), spec["attack"], num_images=num_images)


def run_cell(
    spec: dict[str, Any],
    cell: str,
    out_dir: str | Path,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Attack every user of one cell in one batched call; write ``<target>.json`` per user and ``images.pt``.

    ``only``: target names to (re)compute alone — each keeps the seed it has in the full batch, so a rerun of one
    image reproduces that image's result; ``images.pt`` is updated in place for those targets.
    """
    out_dir = Path(out_dir)
    names = spec["selection"]["names"]
    positions = list(range(len(names))) if not only else [names.index(n) for n in only]
    device = torch.device(spec["device"])
    model, victim_meta = _load_victim(spec)
    if model is None:
        reason = victim_meta.get("reason", NOT_RUN)
        return _not_run_cell(spec, cell, out_dir, names, positions, only, log, reason)
    model = model.to(device).eval()
    folder = _folder_of(spec["val_source"])
    if folder is not None and not folder.is_dir():
        return _not_run_cell(
            spec,
            cell,
            out_dir,
            names,
            positions,
            only,
            log,
            NO_VAL_FOLDER.format(dataset=spec["dataset"], folder=folder),
        )
    dataset = data.load_dataset(
        spec["val_source"],
        split="val",
        root=data.source_root(spec["val_source"], spec["data_root"]),
        stats=spec["dataset"],
    )
    index_rows = [_select(spec, dataset)[p] for p in positions]
    dm, ds = (t.to(device) for t in _normalisation(model, spec))
    truths, labels = [], []
    for rows in index_rows:
        x, y = data.load_targets(dataset, rows)
        truths.append(_prepare(x, spec, dm.cpu(), ds.cpu()).to(device))
        labels.append(y.to(device))
    updates, facts = _user_updates(model, spec, truths, labels)  # all the server sees

    num_images = spec["selection"]["per_user"]
    attack = dict(spec["attack"])
    attack["seed"] = spec["attack"]["seed"] + positions[0]
    runs = (
        [positions]
        if positions == list(range(positions[0], positions[0] + len(positions)))
        else [[p] for p in positions]
    )
    outputs, stats_rows, seconds, snapshots, half_budget = {}, {}, {}, {}, {}
    keep = snapshot_iterations(attack["max_iterations"])
    for group in runs:  # one batched call for a contiguous block (the whole cell in the normal case)
        attack["seed"] = spec["attack"]["seed"] + group[0]
        attacker = _reconstructor(model, {**spec, "attack": attack}, dm, ds, num_images)
        where = [positions.index(p) for p in group]
        start = time.perf_counter()
        out, stats = attacker.reconstruct_many(
            [updates[i] for i in where],
            [labels[i] for i in where],
            img_shape=tuple(truths[0].shape[1:]),
            state_path=out_dir / f".attack_state_{group[0]}.pt",  # a preempted job resumes from here
            snapshots=keep,
        )
        elapsed = time.perf_counter() - start
        for j, p in enumerate(group):
            outputs[p] = out[j]
            stats_rows[p] = {
                key: (value[j] if isinstance(value, list | torch.Tensor) else value)
                for key, value in stats.items()
                if key in ("opt", "chosen", "failures", "restart_losses", "labels")
            }
            seconds[p] = elapsed / len(group)
            snapshots[p] = {it: images[j] for it, images in stats["snapshots"].items()}
        log(f"{cell}: attacked {len(group)} user(s) × {num_images} image(s) in {elapsed:.1f} s")
        if attack["lr_decay"] and attack["max_iterations"] >= 2:
            # A decaying schedule anneals at its end, so the iterate at half the budget is not what half the
            # budget would give: run the same attack (same seeds) at half the budget to measure the last doubling.
            half = _reconstructor(
                model,
                {**spec, "attack": {**attack, "max_iterations": attack["max_iterations"] // 2}},
                dm,
                ds,
                num_images,
            )
            out_half, _ = half.reconstruct_many(
                [updates[i] for i in where],
                [labels[i] for i in where],
                img_shape=tuple(truths[0].shape[1:]),
                state_path=out_dir / f".attack_state_half_{group[0]}.pt",
            )
            for j, p in enumerate(group):
                half_budget[p] = out_half[j]
            log(f"{cell}: the same attack at half the budget for the convergence check")

    records, tensors = [], {}
    for i, p in enumerate(positions):
        truth01 = metrics.to_unit_range(truths[i], dm, ds)
        rec01 = metrics.to_unit_range(outputs[p], dm, ds)
        scores = metrics.image_metrics(rec01, truth01, match=num_images > 1)
        prior01 = metrics.to_unit_range(torch.zeros_like(truths[i]), dm, ds)  # the data set's mean colour
        prior = metrics.psnr_per_image(prior01, truth01).tolist()
        curve = [  # scored after the attack, with the final image pairing; the attacker never saw these
            [
                it,
                float(
                    metrics.psnr_per_image(metrics.to_unit_range(x, dm, ds)[scores["order"]], truth01).mean()
                ),
            ]
            for it, x in sorted(snapshots[p].items())
        ]
        if p in half_budget:
            half_scores = metrics.image_metrics(
                metrics.to_unit_range(half_budget[p], dm, ds), truth01, num_images > 1
            )
            half_run = {"iterations": attack["max_iterations"] // 2, "psnr": half_scores["psnr_mean"]}
        else:
            half_run = None
        failed = stats_rows[p]["chosen"] is None
        record = {
            "experiment": spec["experiment"],
            "cell": cell,
            "target": names[p],
            "status": "failed" if failed else "ok",
            "model": spec["model"],
            "weights": spec["weights"],
            "dataset": spec["dataset"],
            "val_source": spec["val_source"],
            "indices": index_rows[i],
            "labels": labels[i].tolist(),
            **scores,
            "psnr_per_image": scores["psnr"],
            "ssim_per_image": scores["ssim"],
            "psnr": scores["psnr_mean"],
            "psnr_prior_per_image": prior,
            "psnr_prior": sum(prior) / len(prior),
            "snapshots": curve,
            "half_budget_run": half_run,
            "fmse": math.nan if failed else metrics.feature_mse(model, outputs[p], truths[i]),
            "rec_loss": stats_rows[p]["opt"],
            "chosen_restart": stats_rows[p]["chosen"],
            "failed_restarts": stats_rows[p]["failures"],
            "seconds": seconds[p],
            "attack_seed": spec["attack"]["seed"] + p,
            "victim": victim_meta,
            "device": str(device),
            "torch": str(torch.__version__),
            "spec": spec,
            **facts[i],
        }
        records.append(record)
        save_json(record, out_dir / f"{names[p]}.json")
        tensors[names[p]] = {"truth": truth01, "reconstruction": rec01[scores["order"]]}
    previous = {}
    if only and (out_dir / "images.pt").exists():
        old = load_tensors(out_dir / "images.pt")
        previous = old.get("targets", {}) if isinstance(old, dict) else {}
    save_tensors({"status": "ok", "targets": {**previous, **tensors}}, out_dir / "images.pt")
    rows = []
    for name in names:
        if name in tensors:
            rows += [to_uint8(tensors[name]["truth"]), to_uint8(tensors[name]["reconstruction"])]
    if rows and num_images == 1:
        pairs = [[r[0] for r in rows[0::2]], [r[0] for r in rows[1::2]]]
        save_png(image_grid(pairs, scale=max(1, 128 // truths[0].shape[-1])), out_dir / "preview.png")
    return records


# ----------------------------------------------------------------------------------------------------------------
# Helpers for the analysis notebooks (cheap: tables and images.pt only, never an attack)
# ----------------------------------------------------------------------------------------------------------------
def load_cell_images(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{cell: images.pt content}`` for every cell folder under ``results_dir``."""
    out = {}
    for path in sorted(Path(results_dir).glob("*/images.pt")):
        out[path.parent.name] = load_tensors(path)
    return out


def best_median_worst(images_csv, cell: str) -> list[tuple[str, str, float]]:
    """(label, target, psnr) of the best, median and worst finite image of a cell (fewer when the cell is small)."""
    rows = images_csv[(images_csv.cell == cell) & images_csv.psnr.notna()].sort_values("psnr")
    if rows.empty:
        return []
    picks = {"worst": rows.iloc[0], "median": rows.iloc[len(rows) // 2], "best": rows.iloc[-1]}
    seen, out = set(), []
    for label in ("best", "median", "worst"):
        row = picks[label]
        if row.target not in seen:
            seen.add(row.target)
            out.append((label, str(row.target), float(row.psnr)))
    return out


def save_figure(fig, figures_dir: str | Path, stem: str) -> None:
    """PNG (for the report) and PDF (for papers) side by side."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        io.save_figure(fig, figures_dir / f"{stem}.{ext}", dpi=150, bbox_inches="tight")


def show_image(ax, tensor: torch.Tensor, title: str = "") -> None:
    """[C,H,W] in [0,1] on an axis, NaN shown black."""
    ax.imshow(torch.nan_to_num(tensor.detach().cpu(), nan=0.0).clamp(0, 1).permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def convergence_figure(images_csv, title: str):
    """PSNR of each cell's mean reconstruction against the iterations spent (the snapshots kept during the attack
    and scored afterwards): one curve per cell, so a reader sees whether its budget was enough."""
    import json

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ran = images_csv[images_csv.status != NOT_RUN] if images_csv is not None else None
    if ran is None or ran.empty or "snapshots" not in ran.columns:
        ax.axis("off")
        ax.text(0.5, 0.5, "no cell ran", ha="center")
    else:
        for cell, rows in ran.groupby("cell", sort=False):
            curves = [dict((int(i), p) for i, p in json.loads(s)) for s in rows.snapshots.drop_duplicates()]
            iterations = sorted(set().union(*curves))
            means = [
                sum(0.0 if c.get(i) is None or c[i] != c[i] else c[i] for c in curves) / len(curves)
                for i in iterations
            ]
            (line,) = ax.plot(iterations, means, marker="o", label=f"{cell} (n={len(curves)})")
            runs = rows.get("psnr_half_budget_run")
            if runs is not None and runs.notna().all():  # the same attack run at half the budget
                half = sum(0.0 if v != v else v for v in runs) / len(runs)
                ax.plot([iterations[-1] // 2], [half], marker="s", mfc="none", color=line.get_color(), ls="")
        ax.set_xscale("log")
        ax.set_xlabel("iterations (L-BFGS: outer steps); □ = the attack run at half the budget")
        ax.set_ylabel("mean PSNR [dB] (failures as 0)")
        ax.legend(fontsize=6)
    ax.set_title(title, fontsize=8)
    return fig


def not_run_note(table) -> str:
    """One line naming the cells that were not run and why ('' when all ran)."""
    if "status" not in table.columns:
        return ""
    missing = table[table.status == NOT_RUN]
    if missing.empty:
        return ""
    reasons = sorted(set(missing.reason))
    return f"{len(missing)} cell(s) {'; '.join(reasons)}: " + ", ".join(missing.cell)
