"""What a cell leaves between its start and ``images.pt`` (``invgrad.replication.cellfiles``): a kill never
discards a finished budget run, a spec edit never blocks a preempted cell, nothing stale outlives a restart, a
missing or foreign record is rewritten, and a resumed cell reports the seconds of every session."""

import copy
import json
import time
from pathlib import Path

import pytest
import yaml

from invgrad.attack import engine
from invgrad.replication import cells, plan, tables
from invgrad.replication.records import spec_digest

ROOT = Path(__file__).resolve().parents[1]
CELL = "LeNetZhu_untrained_ours"
SAME = ("psnr", "restart_losses", "attack_seed", "double_budget_run", "snapshots", "spec")


class Preempted(Exception):
    """Stands for the kill of a job."""


def _spec(iterations=8, **attack):
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    spec = copy.deepcopy(plan.plan(config)["table1"][CELL])
    spec["attack"].update(max_iterations=iterations, **attack)
    spec["double_budget"] = True
    assert spec["attack"]["lr_decay"] and spec["selection"]["names"] == ["0", "1"]
    return spec


def _quiet(_):
    pass


def _preempt(monkeypatch, run, after, pause=0.0):
    """Kill the cell once ``run``'s state holds ``after`` iterations (``pause`` seconds of work before it)."""
    original = engine.ResumeState.checkpoint

    def checkpoint(self, group, iteration, *args, **kwargs):
        hit = self.path is not None and self.path.name == f".attack_state_{run}.pt" and iteration == after
        if hit:
            time.sleep(pause)
        original(self, group, iteration, *args, **kwargs)
        if hit:
            raise Preempted

    monkeypatch.setattr(engine.ResumeState, "checkpoint", checkpoint)


def _same(records):
    return [{k: r[k] for k in SAME} for r in records]


def _run_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_a_kill_during_the_double_budget_run_keeps_the_finished_attack(tmp_path, monkeypatch):
    clean = cells.run_cell(_spec(), CELL, tmp_path / "clean", log=_quiet)
    _preempt(monkeypatch, "double_budget_run", after=2)
    with pytest.raises(Preempted):
        cells.run_cell(_spec(), CELL, tmp_path / "cut", log=_quiet, save_every=2)
    monkeypatch.undo()
    budgets, run_users = [], cells.run_users

    def counted(*args, **kwargs):
        budgets.append(kwargs["attack_config"]["max_iterations"])
        return run_users(*args, **kwargs)

    monkeypatch.setattr(cells, "run_users", counted)
    resumed = cells.run_cell(_spec(), CELL, tmp_path / "cut", log=_quiet, save_every=2)
    assert budgets == [16]  # only the double-budget run, resumed; the budget's result was kept
    assert _same(resumed) == _same(clean) and _run_files(tmp_path / "cut") == []


def test_a_preempted_cell_whose_spec_changed_starts_over(tmp_path, monkeypatch):
    _preempt(monkeypatch, "attack", after=2)
    with pytest.raises(Preempted):
        cells.run_cell(_spec(), CELL, tmp_path, log=_quiet, save_every=2)
    assert (tmp_path / ".attack_state_attack.pt").exists()
    monkeypatch.undo()
    edited, said = _spec(total_variation=0.05), []
    records = cells.run_cell(edited, CELL, tmp_path, log=said.append, save_every=2)
    assert any("unfinished run of another spec" in line for line in said)
    clean = cells.run_cell(edited, CELL, tmp_path / "clean", log=_quiet)
    assert _same(records) == _same(clean) and records[0]["spec"] == edited


def test_a_restarted_cell_leaves_nothing_stale_and_a_missing_record_is_rebuilt(tmp_path, monkeypatch):
    full = cells.run_cell(_spec(), CELL, tmp_path, log=_quiet)
    _preempt(monkeypatch, "attack", after=2)
    with pytest.raises(Preempted):  # a forced rerun, killed
        cells.run_cell(_spec(), CELL, tmp_path, log=_quiet, save_every=2)
    assert not [n for n in ("0.json", "1.json", "preview.png", "images.pt") if (tmp_path / n).exists()]
    monkeypatch.undo()
    cells.run_cell(_spec(), CELL, tmp_path, log=_quiet, save_every=2)
    (tmp_path / "0.json").unlink()
    rebuilt = cells.run_cell(_spec(), CELL, tmp_path, only=["1"], log=_quiet)
    assert [r["target"] for r in rebuilt] == ["0", "1"]
    assert _same([json.loads((tmp_path / f"{n}.json").read_text()) for n in "01"]) == _same(full)


def test_a_rerun_with_another_spec_rewrites_every_record_of_the_old_one(tmp_path):
    """The one-image rerun path with another config: the cell's records end up from one spec, never mixed."""
    cells.run_cell(_spec(8), CELL, tmp_path, log=_quiet)
    rerun = cells.run_cell(_spec(4), CELL, tmp_path, only=["0"], log=_quiet)
    assert [r["target"] for r in rerun] == ["0", "1"]
    on_disk = [json.loads((tmp_path / f"{n}.json").read_text()) for n in "01"]
    assert {spec_digest(r["spec"]) for r in on_disk} == {spec_digest(_spec(4))}
    _, table = tables.tables(on_disk, "table1", expected={CELL: spec_digest(_spec(4))})
    assert table.iloc[0].status == "ok" and table.iloc[0].iterations == 4


def test_a_resumed_cell_adds_up_the_seconds_of_every_session(tmp_path, monkeypatch):
    _preempt(monkeypatch, "attack", after=2, pause=2.0)  # the first session works >= 2 s before its state
    with pytest.raises(Preempted):
        cells.run_cell(_spec(), CELL, tmp_path, log=_quiet, save_every=2)
    monkeypatch.undo()
    resumed = cells.run_cell(_spec(), CELL, tmp_path, log=_quiet, save_every=2)
    assert sum(r["seconds"] for r in resumed) >= 2.0  # the resumed 6 iterations alone take a fraction of that


def test_a_retrained_victim_under_the_same_spec_is_never_resumed_or_mixed(tmp_path, monkeypatch):
    """Same spec, another checkpoint (its sha256 in the victim's meta): the old state and records are not used."""
    load = cells.load_victim

    def victim(sha):
        monkeypatch.setattr(
            cells, "load_victim", lambda spec: (load(spec)[0], {**load(spec)[1], "sha256": sha})
        )

    victim("a")
    cells.run_cell(_spec(), CELL, tmp_path, log=_quiet)
    victim("b")
    rerun = cells.run_cell(_spec(), CELL, tmp_path, only=["0"], log=_quiet)
    assert [(r["target"], r["victim"]["sha256"]) for r in rerun] == [("0", "b"), ("1", "b")]
    _preempt(monkeypatch, "attack", after=2)
    with pytest.raises(Preempted):
        cells.run_cell(_spec(), CELL, tmp_path, log=_quiet, save_every=2)
    monkeypatch.undo()
    victim("c")
    said = []
    cells.run_cell(_spec(), CELL, tmp_path, log=said.append, save_every=2)
    assert any("unfinished run of another spec or victim" in line for line in said)
