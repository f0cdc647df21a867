"""A cell's files: what a preempted or edited cell finds in its folder, what it keeps, and what it writes at the end.

Each of a cell's :func:`budget_runs` has its own resumable state (``.attack_state_<run>.pt``, the engine's), its
own result once finished (``.finished_<run>.json`` and ``.pt``) and its own ledger of seconds spent
(``.seconds_<run>.json``); ``.cell.json`` names the attack (spec and victim checkpoint) they belong to.
``invgrad.replication.cells.run_cell`` removes them all once ``images.pt`` is written.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..io import image_grid, load_tensors, save_json, save_png, save_tensors, to_uint8
from ..victim.training import NOT_RUN
from .records import spec_digest

MARKER = ".cell.json"  # the key (spec and victim checkpoint) of the attack whose unfinished runs lie here
RUN_FILES = (".attack_state_*.pt", ".finished_*.json", ".finished_*.pt", ".seconds_*.json")


def budget_runs(attack: dict[str, Any], double_budget: bool = False) -> dict[str, dict[str, Any]]:
    """The attack runs a cell makes, by name: ``attack`` itself and, with ``double_budget``, the same attack (same
    seeds) at twice the budget, whose result is the robustness reading of every claim (``psnr_2x``).

    Each run has its own resumable state and, once finished, its own result file, so a kill during one run never
    discards another. A decaying schedule anneals at its end, so the twice-the-budget run has its own schedule and
    starts from the beginning; without one (L-BFGS, constant steps) it continues the attack's final state
    (:func:`hand_over`), so the attack's result is exactly its iterate at the budget."""
    runs = {"attack": attack}
    if double_budget:
        runs[DOUBLE] = {**attack, "max_iterations": 2 * attack["max_iterations"]}
    return runs


DOUBLE = "double_budget_run"


def continues(attack: dict[str, Any]) -> bool:
    """Does the twice-the-budget run continue the attack's own final state (no schedule to anneal)?"""
    return not attack["lr_decay"]


def hand_over(out_dir: Path) -> bool:
    """Give the attack's kept final state to the twice-the-budget run (unless that run saved one of its own)."""
    kept, target = out_dir / ".attack_state_attack.pt", out_dir / f".attack_state_{DOUBLE}.pt"
    if kept.exists() and not target.exists():
        kept.replace(target)
    return target.exists()


def clear_runs(out_dir: Path) -> None:
    """Remove every run file and the marker (the cell is done, or its runs belong to another spec)."""
    for pattern in RUN_FILES:
        for path in out_dir.glob(pattern):
            path.unlink()
    (out_dir / MARKER).unlink(missing_ok=True)


def claim_folder(out_dir: Path, key: str, cell: str, log) -> None:
    """Set aside what a run of another spec or victim left unfinished (its states would be refused, or resumed
    into this attack), then mark the folder as this attack's (``key``: digest of the spec and the checkpoint)."""
    marker = out_dir / MARKER
    mine = marker.exists() and json.loads(marker.read_text()).get("key") == key
    leftovers = sorted(p.name for pattern in RUN_FILES for p in out_dir.glob(pattern))
    if not mine and leftovers:
        log(
            f"{cell}: removed the unfinished run of another spec or victim ({', '.join(leftovers)}); starting over"
        )
        clear_runs(out_dir)
    save_json({"key": key}, marker)


def stale_targets(out_dir: Path, names: list[str], digest: str, victim_sha: str | None) -> list[str]:
    """Targets whose record is missing, unreadable, or made from another spec (``digest``) or checkpoint."""
    stale = []
    for name in names:
        try:
            record = json.loads((out_dir / f"{name}.json").read_text())
            victim = record.get("victim") or {}
            fresh = spec_digest(record["spec"]) == digest and victim.get("sha256") == victim_sha
        except (OSError, ValueError, KeyError, TypeError):
            fresh = False
        if not fresh:
            stale.append(name)
    return stale


def spent_before(out_dir: Path, run: str) -> float:
    """Seconds earlier sessions of ``run`` spent up to the state they saved (what a resume continues from);
    records this session's start for the next one."""
    ledger, state = out_dir / f".seconds_{run}.json", out_dir / f".attack_state_{run}.pt"
    spent = 0.0
    if ledger.exists() and state.exists():
        old = json.loads(ledger.read_text())
        spent = old["spent"] + max(0.0, state.stat().st_mtime - old["started"])
    save_json({"spent": spent, "started": time.time()}, ledger)
    return spent


def not_run_record(spec: dict, cell: str, name: str, reason: str) -> dict[str, Any]:
    return {
        "experiment": spec["experiment"],
        "cell": spec.get("cell", cell),
        "run": cell,
        "victim_seed": spec.get("victim_seed", spec.get("seed")),
        "target": name,
        "status": NOT_RUN,
        "reason": reason,
        "model": spec["model"],
        "weights": spec["weights"],
        "psnr": math.nan,
        "spec": spec,
    }


def not_run_cell(spec, cell, out_dir, names, only, log, reason) -> list[dict[str, Any]]:
    """A cell that cannot run (no victim, no images): a "not run" record per target, and ``images.pt`` saying why."""
    records = [not_run_record(spec, cell, name, reason) for name in names]
    for record in records:
        save_json(record, out_dir / f"{record['target']}.json")
    if not only or not (out_dir / "images.pt").exists():
        save_tensors({"status": NOT_RUN, "reason": reason, "targets": {}}, out_dir / "images.pt")
    clear_runs(out_dir)
    log(f"{cell}: {reason}")
    return records


def save_images(out_dir: Path, names, tensors, only, num_images) -> None:
    """``images.pt`` (merged into the previous one for a partial rerun) and, for one image per user, a preview of
    every target it holds."""
    previous = {}
    if only and (out_dir / "images.pt").exists():
        old = load_tensors(out_dir / "images.pt")
        previous = old.get("targets", {}) if isinstance(old, dict) else {}
    merged = {**previous, **tensors}
    save_tensors({"status": "ok", "targets": merged}, out_dir / "images.pt")
    rows = []
    for name in names:
        if name in merged:
            rows += [to_uint8(merged[name]["truth"]), to_uint8(merged[name]["reconstruction"])]
    if rows and num_images == 1:
        pairs = [[r[0] for r in rows[0::2]], [r[0] for r in rows[1::2]]]
        size = next(iter(merged.values()))["truth"].shape[-1]
        save_png(image_grid(pairs, scale=max(1, 128 // size)), out_dir / "preview.png")
