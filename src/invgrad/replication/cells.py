"""One path from users' images to scored reconstructions, shared by the command line and the pipeline's cells.

:func:`run_users` simulates the users (their update, then their defense), attacks every update in one batched
``reconstruct_many`` call and scores the reconstructions; ``invgrad.cli.run`` and :func:`run_cell` both call it,
so a number means the same thing in ``metrics.json`` and in ``results/<experiment>/<cell>/<target>.json``.

Seeds: user ``first_user + j`` of a call draws its attack initialisation from ``attack_config["seed"] + first_user
+ j`` (the engine's rule) and its defense noise from ``seed + first_user + j``, so attacking users in one batch, in
several, or one at a time changes no user's starting point or noise. It does change the group shape the engine
evaluates, hence the float rounding, which thousands of iterations grow into a different result (1.5 dB on one
image at 1,600 iterations): a user attacked alone is statistically equivalent to the same user in a batch, not the
same number. :func:`run_cell`'s ``only`` therefore reruns the whole batch, which reproduces it bit for bit.

The attacker only ever receives the model, the shared update, the protocol's public parameters and (when granted)
the labels; ground truth is used after the attack, for scoring.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import data, metrics
from ..attack.engine import snapshot_iterations
from ..attack.fedavg import FedAvgReconstructor
from ..attack.reconstructor import GradientReconstructor
from ..devices import checked_device
from ..io import load_tensors, save_json, save_tensors
from ..user.defenses import Defense
from ..user.fedavg import local_update, update_cosine
from ..user.gradient import shared_gradient
from ..victim.models import build_model
from ..victim.training import NOT_RUN, load_checkpoint
from .cellfiles import (
    DOUBLE,
    budget_runs,
    claim_folder,
    clear_runs,
    continues,
    hand_over,
    not_run_cell,
    save_images,
    spent_before,
    stale_targets,
)
from .plan import NO_VAL_FOLDER
from .records import spec_digest


@dataclass(frozen=True)
class Threat:
    """What each simulated user does before sharing, and what the attacker is told.

    ``local_steps`` 0: the user shares its gradient (FedSGD, times ``loss_scale``); n > 0: its FedAvg update Δθ
    after n local steps of size ``local_lr`` on mini-batches of ``batch_size`` (0 = full batch). ``defense``:
    :class:`~invgrad.user.defenses.Defense` settings without the seed (None or inactive: no defense);
    ``defense_aware``: the attacker simulates its deterministic parts. ``labels``: ``known`` (granted) or the
    attacker's recovery strategy. ``delta``: the δ at which the defense's ε is reported.
    """

    local_steps: int = 0
    local_lr: float = 1e-4
    batch_size: int = 0
    loss_scale: float = 1.0
    defense: dict[str, Any] | None = None
    defense_aware: bool = False
    labels: str = "known"
    delta: float = 1e-5

    def defense_for(self, seed: int | None) -> Defense | None:
        """The defense of the user whose noise is seeded by ``seed`` (None when there is no active defense)."""
        defense = Defense(**(self.defense or {}), seed=seed)
        return defense if defense.active else None


@dataclass
class UserResult:
    """One user's scored reconstruction: ``record`` (JSON-able numbers) and the [0, 1] images, paired."""

    record: dict[str, Any]
    truth: torch.Tensor
    reconstruction: torch.Tensor


def share_updates(model, truths, labels, threat: Threat, seed: int, first_user: int = 0):
    """What each user sends (the only thing handed to the attacker), and the defense facts of each user."""
    updates, facts = [], []
    privacy = None
    for j, (x, y) in enumerate(zip(truths, labels, strict=True)):
        fact = {}
        if threat.local_steps > 0:
            update = local_update(model, x, y, threat.local_steps, threat.local_lr, threat.batch_size)
            fact["update_cosine"] = update_cosine(update, shared_gradient(model, x, y))
        else:
            update = shared_gradient(model, x, y, loss_scale=threat.loss_scale)
        defense = threat.defense_for(seed + first_user + j)
        if defense is None:
            updates.append(update)
            facts.append(fact)
            continue
        privacy = privacy or defense.privacy(threat.delta)  # the same for every user: computed once
        updates.append(defense.apply(update))
        facts.append({**fact, "defense": defense.as_dict(), "privacy": privacy})
    return updates, facts


def reconstructor(model, normalisation, threat: Threat, attack_config: dict, num_images: int, progress=False):
    """The server's attacker for this threat model (FedSGD or FedAvg, aware of the defense or not)."""
    aware = threat.defense_for(None) if threat.defense_aware else None
    common = {"num_images": num_images, "progress": progress, "defense": aware}
    if threat.local_steps > 0:
        return FedAvgReconstructor(
            model,
            normalisation,
            threat.local_steps,
            threat.local_lr,
            attack_config,
            batch_size=threat.batch_size,
            **common,
        )
    return GradientReconstructor(model, normalisation, attack_config, **common)


def attack_and_score(
    model: torch.nn.Module,
    normalisation: tuple[torch.Tensor, torch.Tensor],
    updates: Sequence[Sequence[torch.Tensor]],
    truths: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    threat: Threat,
    attack_config: dict,
    *,
    first_user: int = 0,
    state_path: str | Path | None = None,
    save_every: int = 500,
    snapshots: Sequence[int] = (),
    progress: bool = False,
    keep_state: bool = False,
) -> tuple[list[UserResult], dict[str, Any]]:
    """Attack ``updates`` in one batched call, then score each against its ``truths`` (never shown to the attacker).

    Returns one :class:`UserResult` per update and the call's facts (threat model, seed, seconds). A user whose
    attack failed (:func:`invgrad.metrics.attack_failed`) gets FMSE NaN, like its PSNR.
    """
    dm, ds = normalisation
    num_images = truths[0].shape[0]
    cfg = dict(attack_config)
    if cfg.get("seed") is not None:
        cfg["seed"] = cfg["seed"] + first_user
    attacker = reconstructor(model, (dm, ds), threat, cfg, num_images, progress)
    start = time.perf_counter()
    outputs, stats = attacker.reconstruct_many(
        list(updates),
        list(labels) if threat.labels == "known" else threat.labels,
        img_shape=tuple(truths[0].shape[1:]),
        state_path=state_path,
        save_every=save_every,
        snapshots=snapshots,
        keep_state=keep_state,
    )
    seconds = time.perf_counter() - start
    results = []
    for j, (truth, label) in enumerate(zip(truths, labels, strict=True)):
        truth01, rec01 = metrics.to_unit_range(truth, dm, ds), metrics.to_unit_range(outputs[j], dm, ds)
        known = label.cpu() if threat.labels == "known" else None  # known labels pair candidates by label
        scores = metrics.image_metrics(rec01, truth01, match=num_images > 1, labels=known)
        failed = metrics.attack_failed(outputs[j])
        prior = metrics.psnr_per_image(metrics.to_unit_range(torch.zeros_like(truth), dm, ds), truth01)
        record = {
            "labels": label.tolist(),
            "labels_used": stats["labels"][j].tolist(),
            "label_accuracy": metrics.label_accuracy(stats["labels"][j], label.cpu()),
            **scores,
            "failed": failed,
            "fmse": math.nan if failed else metrics.feature_mse(model, outputs[j], truth),
            "rec_loss": stats["opt"][j],
            "restart_losses": stats["restart_losses"][j],
            "chosen_restart": stats["chosen"][j],
            "failed_restarts": stats["failures"][j],
            "psnr_prior_per_image": prior.tolist(),  # the data set's mean colour: what knowing nothing gives
            "snapshots": _psnr_curve(stats["snapshots"], j, scores["order"], truth01, dm, ds),
            "seconds": seconds / len(truths),
            "attack_seed": stats["seed"] + j,
        }
        results.append(UserResult(record, truth01, rec01[scores["order"]]))
    facts = {"threat_model": stats["threat_model"], "seed": stats["seed"], "seconds": seconds, "config": cfg}
    return results, facts


def _psnr_curve(snapshots: dict, j: int, order: list[int], truth01, dm, ds) -> list[list]:
    """[[iteration, mean PSNR]] of user ``j``'s kept iterates, scored after the attack with the final pairing (the
    attacker never saw these)."""
    return [
        [it, float(metrics.psnr_per_image(metrics.to_unit_range(x[j], dm, ds)[order], truth01).mean())]
        for it, x in sorted(snapshots.items())
    ]


def run_users(
    model: torch.nn.Module,
    normalisation: tuple[torch.Tensor, torch.Tensor],
    truths: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    threat: Threat,
    attack_config: dict,
    *,
    seed: int,
    first_user: int = 0,
    **attack_options,
) -> tuple[list[UserResult], dict[str, Any]]:
    """Simulate users ``first_user, first_user + 1, ...`` (defense noise from ``seed`` + user), attack and score.

    The one path of the CLI and the pipeline; ``attack_options`` go to :func:`attack_and_score` (``state_path``,
    ``save_every``, ``snapshots``, ``progress``, ``keep_state``). Each result's record carries the user's defense facts.
    """
    updates, facts = share_updates(model, truths, labels, threat, seed, first_user)
    results, call = attack_and_score(
        model,
        normalisation,
        updates,
        truths,
        labels,
        threat,
        attack_config,
        first_user=first_user,
        **attack_options,
    )
    for result, fact in zip(results, facts, strict=True):
        result.record.update(fact)
    return results, call


# -- A pipeline cell: its victim, its images, its users ------------------------------------------------------------
def threat_of(spec: dict[str, Any]) -> Threat:
    """The threat model a cell's spec describes."""
    fed = (spec.get("fedavg") or {}) if spec.get("threat") == "fedavg" else {}
    return Threat(
        local_steps=fed.get("local_steps", 0),
        local_lr=fed.get("local_lr", 1e-4),
        batch_size=fed.get("batch_size", 0),
        loss_scale=spec.get("user_loss_scale", 1.0),  # 0.5: the paper code's user loss before 2021-03
        defense=spec.get("defense"),
        defense_aware=spec.get("defense_aware", False),
        labels=spec.get("labels", "known"),
        delta=spec.get("delta", 1e-5),
    )


def load_victim(spec: dict) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """The cell's model and where its weights come from; ``(None, meta)`` when its training was not run."""
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


def _budget_run(out_dir: Path, run: str, key: str, attack: dict, users: dict, **options) -> list[UserResult]:
    """One of :func:`budget_runs`, resumed from its own state, or read back when an earlier session finished it."""
    finished = out_dir / f".finished_{run}.json"
    if finished.exists():
        saved = json.loads(finished.read_text())
        if saved.get("key") == key:
            images = load_tensors(out_dir / f".finished_{run}.pt")
            pairs = zip(saved["records"], images["truths"], images["reconstructions"], strict=True)
            return [UserResult(*pair) for pair in pairs]
    spent = spent_before(out_dir, run)
    done, _ = run_users(
        attack_config=attack, state_path=out_dir / f".attack_state_{run}.pt", **users, **options
    )
    for result in done:
        result.record["seconds"] += spent / len(done)
    images = {"truths": [r.truth for r in done], "reconstructions": [r.reconstruction for r in done]}
    save_tensors(images, out_dir / f".finished_{run}.pt")
    save_json({"key": key, "records": [r.record for r in done]}, finished)  # last: marks it done
    (out_dir / f".seconds_{run}.json").unlink(missing_ok=True)
    return done


def run_cell(
    spec: dict[str, Any],
    cell: str,
    out_dir: str | Path,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
    save_every: int = 500,
) -> list[dict[str, Any]]:
    """Attack every user of one cell in one batched call; write ``<target>.json`` per user, then ``images.pt``.

    A full run first removes the cell's previous outputs (records, preview, ``images.pt``), so nothing stale
    outlives a restart. ``only``: the targets to (re)write. The whole batch is attacked again (same users, seeds
    and group shape), so each record is bit-identical to the full run's on the same machine (on CUDA, while the
    free memory tiles the candidates alike); a user attacked in a batch of another size is only statistically
    equivalent, as rounding differences grow over the iterations. Every other record that is missing or made
    from another spec is rewritten too, so a cell's records come from one spec; ``images.pt`` is updated in place.

    A preempted cell resumes each of its :func:`~invgrad.replication.cellfiles.budget_runs` where it stopped and
    adds up the seconds of every session (its state is saved every ``save_every`` iterations); a cell whose spec
    or victim checkpoint changed sets aside the unfinished runs of the old one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = spec["selection"]["names"]
    device = checked_device(spec["device"])
    model, victim_meta = load_victim(spec)
    victim_sha = victim_meta.get("sha256")  # a retrained victim under the same spec is another attack too
    if only:
        stale = stale_targets(out_dir, names, spec_digest(spec), victim_sha)
        write = [n for n in names if n in only or n in stale]
    else:
        write = list(names)
        for path in [*(out_dir / f"{n}.json" for n in names), out_dir / "preview.png", out_dir / "images.pt"]:
            path.unlink(missing_ok=True)
    key = spec_digest({"spec": spec, "victim_sha256": victim_sha})
    claim_folder(out_dir, key, cell, log)
    if model is None:
        reason = victim_meta.get("reason", NOT_RUN)
        return not_run_cell(spec, cell, out_dir, write, only, log, reason)
    model = model.to(device).eval()
    folder = data.image_folder_path(spec["val_source"])
    if folder is not None and not folder.is_dir():
        reason = NO_VAL_FOLDER.format(dataset=spec["dataset"], folder=folder)
        return not_run_cell(spec, cell, out_dir, write, only, log, reason)
    dataset = data.load_dataset(
        spec["val_source"],
        split="val",
        root=data.source_root(spec["val_source"], spec["data_root"]),
        stats=spec["dataset"],
    )
    rows = _select(spec, dataset)
    dm, ds = (t.to(device) for t in _normalisation(model, spec))
    truths, labels = [], []
    for row in rows:
        x, y = data.load_targets(dataset, row)
        truths.append(_prepare(x, spec, dm.cpu(), ds.cpu()).to(device))
        labels.append(y.to(device))

    attack, num_images = spec["attack"], spec["selection"]["per_user"]
    users = dict(truths=truths, labels=labels, seed=spec["seed"], first_user=0)
    common = dict(model=model, normalisation=(dm, ds), threat=threat_of(spec), save_every=save_every)
    runs, double = {}, bool(spec.get("double_budget"))
    for run, config in budget_runs(attack, double).items():
        snapshots = snapshot_iterations(config["max_iterations"]) if run == "attack" else ()
        if run == DOUBLE and continues(attack):
            hand_over(out_dir)
        keep = run == "attack" and double and continues(attack)
        runs[run] = _budget_run(
            out_dir, run, key, config, users, snapshots=snapshots, keep_state=keep, **common
        )
        seconds = sum(r.record["seconds"] for r in runs[run])
        size = f"{len(names)} user(s) × {num_images} image(s)"
        log(f"{cell}: {run} ({config['max_iterations']} iterations) of {size} in {seconds:.1f} s")

    records, tensors = [], {}
    for p, name in enumerate(names):
        if name not in write:
            continue
        result = runs["attack"][p]
        record = cell_record(spec, cell, name, rows[p], result, victim_meta, device)
        record["exact_images"] = data.exact_count(dataset, rows[p])  # None: the source does not say
        for run, config in budget_runs(attack, double).items():
            if run != "attack":
                record[run] = {
                    "iterations": config["max_iterations"],
                    "psnr": runs[run][p].record["psnr_mean"],
                    "continued": continues(attack),
                }
        records.append(record)
        save_json(record, out_dir / f"{name}.json")
        tensors[name] = {"truth": result.truth, "reconstruction": result.reconstruction}
    save_images(out_dir, names, tensors, only, num_images)
    clear_runs(out_dir)
    return records


def cell_record(spec, cell, name, indices, result: UserResult, victim_meta, device) -> dict[str, Any]:
    """The JSON of one user of a cell: the shared scores plus where they come from."""
    scores = result.record
    prior = scores["psnr_prior_per_image"]
    return {
        "experiment": spec["experiment"],
        "cell": spec.get("cell", cell),
        "run": cell,
        "victim_seed": spec.get("victim_seed", spec["seed"]),
        "target": name,
        "status": "failed" if scores["failed"] else "ok",
        "model": spec["model"],
        "weights": spec["weights"],
        "dataset": spec["dataset"],
        "val_source": spec["val_source"],
        "indices": indices,
        **scores,
        "psnr_per_image": scores["psnr"],
        "ssim_per_image": scores["ssim"],
        "psnr": scores["psnr_mean"],
        "psnr_prior": sum(prior) / len(prior),
        DOUBLE: None,
        "victim": victim_meta,
        "device": str(device),
        "torch": str(torch.__version__),
        "spec": spec,
    }
