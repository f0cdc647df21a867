"""The attack configuration: the paper's keys, validated once, so a typo fails before any work.

Values follow the official code's inversefed/reconstruction_algorithms.py. ``DEFAULT_CONFIG`` is the paper code's default at HEAD; the command-line presets
``ours`` (the paper's method as its scripts run it) and ``zhu`` (the DLG baseline) only state differences.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .attack.objective_names import NAMES as OBJECTIVE_NAMES

DEFAULT_CONFIG: dict[str, Any] = dict(
    signed=False,
    boxed=True,
    cost_fn="sim",
    indices="def",
    weights="equal",
    lr=0.1,
    optim="adam",
    restarts=1,
    max_iterations=4800,
    total_variation=1e-1,
    init="randn",
    filter="none",
    lr_decay=True,
    scoring_choice="loss",
    seed=None,
)

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's Table-1 attack on LeNet (Zhu) (arXiv 2003.14053, Sec. 5 and App. C.1): cosine loss, signed Adam
    # lr 0.1, box, decay, 4,800 iterations (DEFAULT_CONFIG), TV 1e-2. The official rec_mult.py's --tv default is
    # 1e-4, overridden per cell; a config without a preset keeps the official DEFAULT_CONFIG's TV 1e-1.
    "ours": dict(
        signed=True, boxed=True, cost_fn="sim", optim="adam", lr=0.1, lr_decay=True, total_variation=1e-2
    ),
    # DLG (Zhu et al.): Euclidean loss, L-BFGS with torch defaults, no box, unsigned, no decay, no prior.
    "zhu": dict(
        signed=False,
        boxed=False,
        cost_fn="l2",
        optim="lbfgs",
        lr=1.0,
        lr_decay=False,
        total_variation=0.0,
        max_iterations=500,
    ),
}

COST_FUNCTIONS = OBJECTIVE_NAMES  # live: invgrad.attack.objectives.OBJECTIVES, registered ones included
WEIGHTS = ("equal", "linear", "exp")
OPTIMIZERS = ("adam", "sgd", "lbfgs")
INITS = ("randn", "rand", "zeros")
FILTERS = ("none", "median")
SCORING = ("loss", "tv", "pixelmean", "pixelmedian")
INDEX_PATTERN = re.compile(r"^(def|(top|first|last)(\d+)|topk-(\d+))$")

_CHOICES = {
    "cost_fn": COST_FUNCTIONS,
    "weights": WEIGHTS,
    "optim": OPTIMIZERS,
    "init": INITS,
    "filter": FILTERS,
    "scoring_choice": SCORING,
}
_BOOLS = ("signed", "boxed", "lr_decay")


class ConfigError(ValueError):
    """A configuration key or value the attack does not know."""


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config[{key!r}] must be a positive integer, got {value!r}")
    return value


# torch's generators take seeds in [-2**63, 2**64) and fail with an overflow traceback outside; the attack seeds
# user e's draws with seed + e (+ 2**31 for label logits), so seeds stop at 2**63 to leave room for those sums.
SEED_LIMIT = 2**63


def _finite_number(name: str, value: Any, strictly_positive: bool) -> float:
    """``value`` as a float if it is a finite number > 0 (or >= 0), else one ConfigError naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not (value > 0 if strictly_positive else value >= 0)
    ):
        raise ConfigError(
            f"{name} must be a finite number {'>' if strictly_positive else '>='} 0, got {value!r}"
        )
    return float(value)


def _nonnegative_float(key: str, value: Any) -> float:
    """A finite number >= 0 (0 switches a term off, as a TV weight of 0 does)."""
    return _finite_number(f"config[{key!r}]", value, strictly_positive=False)


def positive_finite(name: str, value: Any) -> float:
    """A finite number > 0 (step sizes, thresholds); ``name`` is how the caller spells the setting."""
    return _finite_number(name, value, strictly_positive=True)


def nonnegative_finite(name: str, value: Any) -> float:
    """A finite number >= 0 (noise levels, weights that 0 switches off)."""
    return _finite_number(name, value, strictly_positive=False)


def checked_seed(name: str, value: Any) -> int:
    """An integer seed in [0, 2**63) (see :data:`SEED_LIMIT`)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{name} must be an integer in [0, 2**63), got {value!r}")
    return value


def make_config(config: Mapping[str, Any] | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Merge ``config`` (a mapping or a preset name) and ``overrides`` over the defaults and validate.

    Case of choice values is normalised (the paper's code wrote ``optim='LBFGS'``).
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise ConfigError(f"unknown config preset {config!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[config]
    merged = dict(DEFAULT_CONFIG)
    for source in (config or {}), overrides:
        unknown = sorted(set(source) - set(DEFAULT_CONFIG))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(DEFAULT_CONFIG)}")
        merged.update(source)
    return validate_config(merged)


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    for key, choices in _CHOICES.items():
        value = cfg[key].lower() if isinstance(cfg[key], str) else cfg[key]
        if value not in choices:
            raise ConfigError(
                f"unknown value {cfg[key]!r} for config[{key!r}]; choose one of {list(choices)}"
            )
        cfg[key] = value
    for key in _BOOLS:
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"config[{key!r}] must be true or false, got {cfg[key]!r}")
    if not isinstance(cfg["indices"], str) or not INDEX_PATTERN.match(cfg["indices"]):
        raise ConfigError(
            f"unknown value {cfg['indices']!r} for config['indices']; use 'def', 'topN', 'firstN', 'lastN' or 'topk-N'"
        )
    cfg["restarts"] = _positive_int("restarts", cfg["restarts"])
    cfg["max_iterations"] = _positive_int("max_iterations", cfg["max_iterations"])
    cfg["lr"] = positive_finite("config['lr']", cfg["lr"])
    cfg["total_variation"] = _nonnegative_float("total_variation", cfg["total_variation"])
    if cfg["seed"] is not None:
        checked_seed("config['seed']", cfg["seed"])
    return cfg


def lr_milestones(max_iterations: int) -> list[int]:
    """The paper's step schedule at 3/8, 5/8 and 7/8 of the run, using its float floor-divisions."""
    return [int(max_iterations // divisor) for divisor in (2.667, 1.6, 1.142)]


def run_value_problems(
    config: Mapping[str, Any], cells: Mapping[str, Mapping[str, Any]], present: bool = True
) -> list[str]:
    """Every value of a workflow config that would only fail (or silently mislead) inside a job, one line each:
    the device (known to torch and, with ``present``, on this machine), the report's thresholds, and each cell's
    defense and FedAvg schedule. The attack configs are checked where the cells are built (:func:`make_config`).

    ``present=False`` checks only the device's name: for planning on a machine other than the one that runs the
    jobs (a cluster's login node)."""
    from .devices import checked_device
    from .protocol import check_schedule
    from .user.defenses import Defense

    problems = []
    device = config.get("device", "cpu")
    try:
        checked_device(device, present=present)
    except ValueError as error:
        problems.append(f"config device: {error}")
    report = config.get("report", {})
    for key in ("convergence_db", "recovered_psnr"):
        if key in report:
            try:
                positive_finite(f"report.{key}", report[key])
            except ConfigError as error:
                problems.append(str(error))
    for experiment, specs in cells.items():
        for name, spec in specs.items():
            where = f"{experiment}/{name}"
            try:
                if spec.get("defense"):
                    Defense(**spec["defense"])
                if spec.get("fedavg"):
                    fed = spec["fedavg"]
                    images = spec["selection"]["per_user"]
                    check_schedule(fed["local_steps"], fed["local_lr"], fed["batch_size"], images, False)
            except (ValueError, TypeError) as error:
                problems.append(f"{where}: {error}")
    return problems
