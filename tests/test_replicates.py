"""Victim seeds and the twice-the-budget run (``invgrad.replication.plan.seeded_cells``, ``cellfiles.budget_runs``):
each seed is its own job, victim and attack seed; the 2x run of an attack without a schedule continues its final
state, so the attack's result is exactly the longer run's iterate at the budget; with a schedule it is its own run.
"""

import copy
from pathlib import Path

import pytest
import yaml

from invgrad.replication import cells, plan, registry
from invgrad.replication.claims.tables import SEED_COLUMN
from invgrad.replication.tables import cell_of_run, tables

ROOT = Path(__file__).resolve().parents[1]


def _config(**top):
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    for key in ("victim_seeds", "distinct_images", "double_budget"):  # test.yaml's Table 1 restates one seed
        config["experiments"]["table1"].pop(key, None)
    config.update(top)
    return config


def test_each_victim_seed_is_a_job_with_its_own_victim_and_seeds():
    config = _config(victim_seeds=3, double_budget=True)
    registry.validate_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    runs = plan.plan(config)["table1"]
    trained = {r: s for r, s in runs.items() if s["cell"] == "LeNetZhu_trained_ours"}
    assert sorted(trained) == [f"LeNetZhu_trained_ours/seed{k}" for k in range(3)]
    assert [s["victim_seed"] for s in trained.values()] == [0, 1, 2]
    assert [s["attack"]["seed"] for s in trained.values()] == [0, 1, 2]  # each seed its own attack seed
    assert len({s["victim"] for s in trained.values()}) == 3
    assert all(s["victim_seeds"] == 3 and s["double_budget"] for s in runs.values())
    victims = plan.victims(config)
    assert sorted(v["seed"] for v in victims.values()) == [0, 1, 2]
    other = plan.plan({**config, "seed": 1})["table1"]  # another base seed: a disjoint set
    assert {s["victim_seed"] for s in other.values()} == {3, 4, 5}
    assert cell_of_run("LeNetZhu_trained_ours/seed2") == "LeNetZhu_trained_ours"


def test_one_seed_keeps_one_job_per_cell_and_a_block_may_ask_for_its_own():
    config = _config()
    config["experiments"]["fedavg"]["victim_seeds"] = 2
    registry.validate_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    runs = plan.plan(config)
    assert "LeNetZhu_untrained_ours" in runs["table1"]
    assert all(s["victim_seeds"] == 1 and not s["double_budget"] for s in runs["table1"].values())
    assert all("/seed" in r for r in runs["fedavg"])
    bad = _config(victim_seeds=0)
    with pytest.raises(registry.ConfigSchemaError, match="victim_seeds"):
        registry.validate_config(bad, ROOT / "workflow" / "schemas" / "config.schema.yaml")


def _cell(method, iterations, double, seeds=1):
    config = _config(victim_seeds=seeds)
    config["experiments"]["table1"]["images"] = 1
    runs = plan.plan(config)["table1"]
    name = f"LeNetZhu_untrained_{method}" + ("/seed0" if seeds > 1 else "")
    spec = copy.deepcopy(runs[name])
    spec["attack"]["max_iterations"] = iterations
    spec["double_budget"] = double
    return spec, name


def _quiet(_):
    pass


@pytest.mark.parametrize(("method", "iterations"), [("zhu", 3), ("ours", 6)])
def test_the_2x_run_equals_a_run_at_twice_the_budget(tmp_path, method, iterations):
    spec, name = _cell(method, iterations, double=True)
    record = cells.run_cell(spec, name, tmp_path / "both", log=_quiet)[0]
    once = cells.run_cell(_cell(method, iterations, False)[0], name, tmp_path / "1x", log=_quiet)[0]
    twice = cells.run_cell(_cell(method, 2 * iterations, False)[0], name, tmp_path / "2x", log=_quiet)[0]
    assert record["psnr"] == once["psnr"]
    assert record["double_budget_run"]["psnr"] == twice["psnr"]
    assert record["double_budget_run"]["continued"] == (method == "zhu")
    assert record["psnr"] != twice["psnr"]  # the longer run moved: the comparison can fail
    assert not [p.name for p in (tmp_path / "both").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_the_continued_lbfgs_run_at_the_pipeline_budget_is_the_1000_step_run(tmp_path):
    """The default's DLG cells: 500 L-BFGS steps and their continuation to 1,000 (one image)."""
    spec, name = _cell("zhu", 500, double=True)
    record = cells.run_cell(spec, name, tmp_path / "both", log=_quiet)[0]
    twice = cells.run_cell(_cell("zhu", 1000, False)[0], name, tmp_path / "2x", log=_quiet)[0]
    assert record["double_budget_run"]["psnr"] == twice["psnr"]
    assert record["double_budget_run"]["iterations"] == 1000


def test_tables_gather_the_seeds_of_a_cell_and_name_a_missing_seed(tmp_path):
    spec, name = _cell("zhu", 1, double=False, seeds=2)
    records = []
    for seed in (0, 1):
        seeded = {**spec, "victim_seed": seed, "seed": seed, "attack": {**spec["attack"], "seed": seed}}
        run = f"LeNetZhu_untrained_zhu/seed{seed}"
        records += cells.run_cell(seeded, run, tmp_path / run, log=_quiet)
    images, table = tables(records, "table1")
    assert sorted(images[SEED_COLUMN]) == [0, 1] and set(images.cell) == {"LeNetZhu_untrained_zhu"}
    assert table.loc[0, "seeds"] == 2 and table.loc[0, "n"] == 2
    _, table = tables(records[:1], "table1", missing={"LeNetZhu_untrained_zhu/seed1": 1})
    assert table.loc[0, "status"] == "not run" and "seed1/images.pt" in table.loc[0, "reason"]


def test_distinct_images_give_each_seed_the_next_images():
    config = _config(victim_seeds=3, distinct_images=True)
    config["experiments"]["table1"]["images"] = 2
    runs = plan.plan(config)["table1"]
    names = [runs[f"LeNetZhu_untrained_ours/seed{k}"]["selection"]["names"] for k in range(3)]
    assert names == [["0", "1"], ["2", "3"], ["4", "5"]]
    config["experiments"]["table1"]["images"] = 7  # 21 images: beyond the 20 embedded ones
    assert any("holds 20" in p for p in plan.check(config))
