"""The experiment registry: one module per experiment (tests/toy/toy_experiment.py registers one from here), checks
at plan time, a torch-free plan, and the toy experiment through the whole DAG (attack → table → figure → report)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from invgrad.replication import plan, registry
from invgrad.replication.claimdefs import Claim, Select, eq

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).resolve().parent / "toy"
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.fixture
def toy():
    sys.path.insert(0, str(TOY))
    try:
        import toy_experiment

        with registry.registered(toy_experiment.EXPERIMENT):
            yield toy_experiment.EXPERIMENT
    finally:
        sys.path.remove(str(TOY))


def toy_config(base: str = "test.yaml") -> dict:
    config = load(base)
    for block in config["experiments"].values():
        block["enabled"] = False
    config["experiments"]["toy"] = {
        "enabled": True,
        "models": ["LeNetZhu", "MLP"],
        "image": 2,
        "attack": {"max_iterations": 4, "restarts": 1, "total_variation": 0.01, "lr": 0.1},
    }
    return config


# ----------------------------------------------------------------------------------------------------------------
# What the registry holds
# ----------------------------------------------------------------------------------------------------------------
def test_builtins_are_registered_in_the_papers_order_with_their_claims():
    assert registry.names() == registry.BUILTIN
    assert registry.names(attacks=False) == ("analytic", "labels")
    ids = [c.id for c in registry.all_claims()]
    assert ids == ["1", "1a", "1b", "1b", "2", "2b", "3", "4", "5", "6", "7", "8", "8b"]
    assert registry.claim_problems() == []
    assert registry.get("table1").group_keys == ("model", "weights", "method")


def test_the_composed_schema_holds_every_block_and_rejects_an_unknown_one(tmp_path):
    config = load("config.yaml")
    registry.validate_config(config, ROOT / "workflow/schemas/config.schema.yaml")  # fine as it is
    assert config["experiment_modules"] == []  # a default filled in
    bad = copy.deepcopy(config)
    bad["experiments"]["table1"]["images"] = 0
    with pytest.raises(registry.ConfigSchemaError, match=r"experiments\.table1\.images: 0 is less than"):
        registry.validate_config(bad, ROOT / "workflow/schemas/config.schema.yaml")
    bad = copy.deepcopy(config)
    bad["experiments"]["toy"] = {}
    with pytest.raises(registry.ConfigSchemaError, match="'toy' was unexpected"):
        registry.validate_config(bad, ROOT / "workflow/schemas/config.schema.yaml")


def test_a_registered_experiment_plans_tabulates_and_validates(toy):
    config = toy_config()
    cells = plan.validate(config)
    assert list(cells) == ["toy"] and list(cells["toy"]) == ["LeNetZhu_tiny", "MLP_tiny"]
    spec = cells["toy"]["MLP_tiny"]
    assert spec["selection"]["names"] == ["2"] and spec["attack"]["max_iterations"] == 4
    assert plan.targets(config, cells)["toy"] == [
        "results/toy/LeNetZhu_tiny/2.json",
        "results/toy/MLP_tiny/2.json",
    ]
    registry.validate_config(config, ROOT / "workflow/schemas/config.schema.yaml")
    assert [c.id for c in registry.all_claims()][-1] == "9t"
    config["experiments"]["toy"]["models"] = ["NoSuchNet"]
    with pytest.raises(plan.PlanError, match="experiments.toy: unknown model 'NoSuchNet'"):
        plan.validate(config)


def test_two_experiments_with_one_name_are_refused(toy):
    with pytest.raises(registry.RegistryError, match="'toy' is already registered"):
        registry.register(dataclasses.replace(toy, figures=("other",)))
    with pytest.raises(registry.RegistryError, match="'table1' is already registered"):
        registry.register(dataclasses.replace(toy, name="table1"))
    assert registry.get("toy") is toy  # the first one stays


def test_a_claim_over_a_column_its_cells_do_not_produce_is_rejected_at_plan_time(toy):
    bad = dataclasses.replace(
        toy,
        name="toy_bad",
        claims=(
            Claim(
                "9u",
                "a DLG cell that toy_bad never makes",
                "-",
                "beats_prior",
                (Select("toy_bad", eq(method="zhu")),),
            ),
        ),
    )
    config = toy_config()
    with registry.registered(bad):
        with pytest.raises(
            plan.PlanError, match=r"experiment toy_bad: claim 9u selects on column\(s\) \['method'\]"
        ):
            plan.plan(config)
        assert any("toy_bad" in p for p in plan.check(config))
    plan.plan(config)  # unregistered again: fine


def test_a_claim_over_an_unregistered_experiment_is_rejected(toy):
    bad = dataclasses.replace(
        toy, name="toy_orphan", claims=(Claim("9v", "x", "-", "beats_prior", (Select("nowhere"),)),)
    )
    with registry.registered(bad), pytest.raises(plan.PlanError, match="toy_orphan: claim 9v .* 'nowhere'"):
        plan.plan(toy_config())


def test_torch_free_model_names_match_the_model_zoo():
    from invgrad.victim import catalog, models

    assert sorted(catalog.MODEL_NAMES) == sorted(models.available_models())
    for name in ("ResNet20-7", "ResNet110-2", "LeNetZhu", "ConvNet16"):
        assert catalog.is_model_name(name)
        models._lookup(name)
    for name in ("ResNet21-2", "NoSuchNet", "resnet18"):
        assert not catalog.is_model_name(name)
        with pytest.raises(ValueError):
            models._lookup(name)


# ----------------------------------------------------------------------------------------------------------------
# A lean parse
# ----------------------------------------------------------------------------------------------------------------
def test_planning_the_default_and_paper_configs_imports_no_torch():
    code = """
import json, sys, yaml
from invgrad.replication import plan, registry
counts = {}
for name in ("config.yaml", "paper.yaml"):
    config = yaml.safe_load(open(f"config/{name}"))
    registry.validate_config(config, "workflow/schemas/config.schema.yaml")
    cells = plan.plan(config)
    plan.check(config), plan.victims(config, cells), plan.targets(config, cells), plan.compute_specs(config)
    counts[name] = sum(len(c) for c in cells.values())
print(json.dumps({"counts": counts, "heavy": sorted(m for m in ("torch", "torchvision", "pandas", "scipy") if m in sys.modules)}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert result["counts"] == {
        "config.yaml": 25,
        "paper.yaml": 108,
    }  # Table 1: 4 cells × 3 victim seeds; 2 DLG ImageNet


# ----------------------------------------------------------------------------------------------------------------
# The toy experiment through the DAG
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed (pip install -e .[workflow])")
def test_toy_experiment_runs_through_the_dag(tmp_path):
    """Module + config block + notebook: the workflow attacks, tabulates, plots it and decides its claim."""
    for name in ("workflow", "scripts", "config"):
        shutil.copytree(
            ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake")
        )
    shutil.copytree(TOY, tmp_path / "toy", ignore=shutil.ignore_patterns("__pycache__"))
    config = toy_config()
    config["experiments"]["toy"]["models"] = ["LeNetZhu"]
    (tmp_path / "config/toy.yaml").write_text(
        yaml.safe_dump({"experiment_modules": ["toy_experiment"], "experiments": config["experiments"]})
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(tmp_path / "toy"), str(tmp_path / "scripts")])
    env["MPLCONFIGDIR"] = str(tmp_path / ".cache/matplotlib")
    result = subprocess.run(
        [SNAKEMAKE, "--cores", "2", "--configfile", "config/test.yaml", "config/toy.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((tmp_path / "results/toy/LeNetZhu_tiny/2.json").read_text())
    assert record["status"] in ("ok", "failed") and record["spec"]["attack"]["max_iterations"] == 4
    table = list(csv.DictReader((tmp_path / "results/toy/table.csv").open()))
    assert [(r["cell"], r["budget"]) for r in table] == [("LeNetZhu_tiny", "4")]  # the module's group keys
    assert (tmp_path / "figures/toy_psnr.png").exists() and (tmp_path / "results/toy/toy.ipynb").exists()
    claims = {r["claim"]: r for r in csv.DictReader((tmp_path / "figures/claims.csv").open())}
    assert (
        claims["9t"]["setting"] == "LeNetZhu_tiny" and claims["9t"]["verdict"]
    )  # decided from the toy table
    assert claims["1"]["verdict"] == "not run"  # the built-ins were switched off
    html = subprocess.run(  # the HTML report renders the figure rule's caption template for it
        [SNAKEMAKE, "--report", "report.html", "--configfile", "config/test.yaml", "config/toy.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert html.returncode == 0 and (tmp_path / "report.html").stat().st_size > 0, html.stderr[-2000:]


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed (pip install -e .[workflow])")
def test_the_workflow_parses_without_torch(tmp_path):
    """`snakemake -n` with a torch that cannot be imported: parsing (schema, plan, victims) never needs it."""
    blocker = tmp_path / "blocker"
    for name in ("torch", "torchvision"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} imported while parsing')\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(ROOT / "src"), str(ROOT / "scripts")])
    for name in ("workflow", "scripts", "notebooks", "config"):
        shutil.copytree(
            ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake")
        )
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--quiet", "rules"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^attack\s+25$", result.stdout, re.M), result.stdout
