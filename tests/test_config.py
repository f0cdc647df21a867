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
