import pytest

from invgrad import DEFAULT_CONFIG, ConfigError, make_config
from invgrad.config import lr_milestones


def test_defaults_are_the_paper_codes_head_defaults():
    cfg = make_config()
    assert cfg["cost_fn"] == "sim" and cfg["boxed"] and not cfg["signed"]
    assert cfg["max_iterations"] == 4800 and cfg["total_variation"] == 0.1 and cfg["restarts"] == 1
    assert set(cfg) == set(DEFAULT_CONFIG)


def test_presets_only_change_values():
    ours, zhu = make_config("ours"), make_config("zhu")
    assert ours["signed"] and ours["optim"] == "adam" and ours["boxed"]
    assert (
        zhu["cost_fn"] == "l2"
        and zhu["optim"] == "lbfgs"
        and not zhu["boxed"]
        and zhu["total_variation"] == 0
    )
    assert set(ours) == set(zhu)


def test_choice_values_are_case_insensitive():
    assert make_config(optim="LBFGS")["optim"] == "lbfgs"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"restart": 3}, "restart"),
        ({"cost_fn": "cosine"}, "cosine"),
        ({"optim": "rmsprop"}, "rmsprop"),
        ({"indices": "top-ten"}, "top-ten"),
        ({"init": "gauss"}, "gauss"),
        ({"restarts": 0}, "restarts"),
        ({"max_iterations": 2.5}, "max_iterations"),
        ({"total_variation": -1}, "total_variation"),
        ({"signed": "yes"}, "signed"),
        ({"scoring_choice": "inception"}, "inception"),
    ],
)
def test_bad_keys_and_values_name_themselves(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_config(**overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="nope"):
        make_config("nope")


@pytest.mark.parametrize(
    "iterations, expected",
    [
        (4800, [1799, 2999, 4203]),
        (24000, [8998, 14999, 21015]),
        (8000, [2999, 4999, 7005]),
        (4000, [1499, 2499, 3502]),
    ],
)
def test_lr_milestones_match_the_paper(iterations, expected):
    assert lr_milestones(iterations) == expected


# ---------------------------------------------------------------------------------------------------------------
# The workflow schema's attack definition against the library's (workflow/schemas/config.schema.yaml)
# ---------------------------------------------------------------------------------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def _attack_keys() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())["$defs"]["attack_keys"]["properties"]


def _test_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "config/test.yaml").read_text())


def test_schema_accepts_every_key_of_the_library_config():
    assert set(_attack_keys()) == set(DEFAULT_CONFIG)


def test_schema_enums_are_the_library_choices():
    from invgrad.config import _BOOLS, _CHOICES, INDEX_PATTERN

    keys = _attack_keys()
    for key, choices in _CHOICES.items():
        assert keys[key]["enum"] == list(choices), key
    for key in _BOOLS:
        assert keys[key]["type"] == "boolean", key
    pattern = __import__("re").compile(keys["indices"]["pattern"])
    for value in ("def", "top10", "first3", "last12", "topk-5", "top", "topk5", "batch", "def1", "first-2"):
        assert bool(pattern.match(value)) == bool(INDEX_PATTERN.match(value)), value


# A value other than preset "ours"'s for every key of the library's config.
NON_DEFAULT = dict(
    signed=False,
    boxed=False,
    cost_fn="l1",
    indices="top10",
    weights="exp",
    lr=0.3,
    optim="sgd",
    restarts=2,
    max_iterations=3,
    total_variation=0.5,
    init="zeros",
    filter="median",
    lr_decay=False,
    scoring_choice="tv",
    seed=7,
)


@pytest.mark.parametrize("key", sorted(DEFAULT_CONFIG))
def test_every_attack_key_can_be_set_from_a_config(key):
    """A value the library accepts for each key passes the schema and reaches the cells' attack config."""
    from invgrad.replication import plan, registry

    value = NON_DEFAULT[key]  # a key the library gained without a value here fails
    config = _test_config()
    config["experiments"]["batch"]["attack"][key] = value
    registry.validate_config(config, SCHEMA)
    spec = next(iter(plan.plan(config)["batch"].values()))
    assert spec["attack"][key] == value


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("lr", 0, "less than or equal to the minimum of 0"),
        ("lr", -0.1, "less than or equal to the minimum of 0"),
        ("total_variation", -1e-4, "less than the minimum of 0"),
        ("max_iterations", 0, "less than the minimum of 1"),
        ("max_iterations", float("inf"), "is not of type 'integer'"),
        ("cost_fn", "cosine", "is not one of"),
        ("preset", "zhu", "'preset' was unexpected"),
    ],
)
def test_schema_refuses_bad_attack_values(key, value, fragment):
    from invgrad.replication import registry

    config = _test_config()
    config["experiments"]["batch"]["attack"][key] = value
    with pytest.raises(registry.ConfigSchemaError, match=fragment):
        registry.validate_config(config, SCHEMA)


@pytest.mark.parametrize("key", ["lr", "total_variation", "user_loss_scale"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_numbers_are_refused_before_planning(key, value):
    """JSON schema lets .inf and .nan through its bounds; plan.validate names them, one line each."""
    from invgrad.replication import plan, registry

    config = _test_config()
    config["experiments"]["table1"]["methods"]["ours"][key] = value
    registry.validate_config(config, SCHEMA)  # the schema alone cannot refuse them
    with pytest.raises(
        plan.PlanError, match=rf"experiments\.table1\.methods\.ours\.{key}: {value!r} is not a finite"
    ):
        plan.validate(config)


def test_a_config_with_only_table1_plans_only_table1():
    from invgrad.replication import plan, registry

    config = _test_config()
    config["experiments"] = {"table1": config["experiments"]["table1"]}
    registry.validate_config(config, SCHEMA)
    assert list(plan.validate(config)) == ["table1"] and plan.compute_specs(config) == {}


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(max_iterations=0), "max_iterations.*positive integer, got 0"),
        (dict(lr=0), r"config\['lr'\] must be a finite number > 0, got 0"),
        (dict(lr=float("inf")), r"config\['lr'\] must be a finite number > 0, got inf"),
        (dict(lr=float("nan")), r"config\['lr'\] must be a finite number > 0, got nan"),
        (dict(total_variation=float("inf")), r"total_variation.*finite number >= 0, got inf"),
        (dict(total_variation=float("nan")), r"total_variation.*finite number >= 0, got nan"),
        (dict(total_variation=-1e-4), r"total_variation.*finite number >= 0, got -0.0001"),
        (dict(seed=2**70), r"seed'\] must be an integer in \[0, 2\*\*63\), got 1180591620717411303424"),
        (dict(seed=-1), r"seed'\] must be an integer in \[0, 2\*\*63\)"),
    ],
)
def test_non_finite_and_out_of_range_values_are_refused(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_config("ours", **overrides)


def test_tv_zero_and_the_largest_seed_are_allowed():
    import torch

    cfg = make_config("ours", total_variation=0, seed=2**63 - 1)
    torch.Generator().manual_seed(cfg["seed"] + 2**31 + 100)  # the engine's largest offset still seeds


def _workflow_config():
    from pathlib import Path

    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "test.yaml").read_text())


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: c.update(device="foo"), "config device: device 'foo' is not a torch device"),
        (lambda c: c.update(device="mps"), "config device: device 'mps' is not supported"),
        (lambda c: c["report"].update(convergence_db=float("nan")), "report.convergence_db .* got nan"),
        (lambda c: c["report"].update(recovered_psnr=float("inf")), "report.recovered_psnr .* got inf"),
        (lambda c: c["report"].update(recovered_psnr=0), "report.recovered_psnr .* > 0, got 0"),
    ],
)
def test_workflow_values_are_checked_at_start(edit, fragment):
    from invgrad.config import run_value_problems
    from invgrad.replication import plan

    config = _workflow_config()
    assert run_value_problems(config, plan.plan(config)) == []
    edit(config)
    problems = run_value_problems(config, plan.plan(config))
    assert len(problems) == 1 and __import__("re").search(fragment, problems[0]), problems


def test_workflow_cells_with_bad_noise_or_local_lr_are_named(monkeypatch):
    from invgrad.config import run_value_problems

    cells = {
        "defenses": {"noise-nan": {"defense": {"clip": 1.0, "noise": float("nan")}}},
        "fedavg": {
            "n2": {
                "fedavg": {"local_steps": 2, "local_lr": float("inf"), "batch_size": 0},
                "selection": {"per_user": 4},
            }
        },
    }
    problems = run_value_problems({"device": "cpu"}, cells)
    assert problems == [
        "defenses/noise-nan: defense noise (std σ) must be a finite number, got nan",
        "fedavg/n2: local_lr must be a positive finite number, got inf",
    ]


def test_a_missing_cuda_device_stops_the_start_check_unless_planning_elsewhere(monkeypatch):
    import torch

    from invgrad.config import run_value_problems

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_value_problems({"device": "cuda:0"}, {}) == [
        "config device: device cuda:0: CUDA is not available on this machine (torch sees 0 CUDA device(s))"
    ]
    assert run_value_problems({"device": "cuda:0"}, {}, present=False) == []
