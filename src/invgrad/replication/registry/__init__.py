"""The experiment registry: every experiment is one module that declares an :class:`Experiment` as ``EXPERIMENT``.

Everything else is derived from the registered experiments: the config schema of ``experiments.<name>``
(:func:`config_schema`), the plan (:mod:`invgrad.replication.plan`), the table axes (:mod:`invgrad.replication.tables`),
the figures (one rule per experiment) and the other stages' wildcard rules (``workflow/rules``) and the claims (:func:`all_claims`).
The built-in experiments are the modules named in :data:`BUILTIN`; a config may load more with
``experiment_modules: [package.module, ...]`` (importable modules, each with an ``EXPERIMENT``). See
docs/EXTENDING.md. Torch-free: the workflow imports this at parse time.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..claimdefs import Claim, order_key, selected_columns
from .base import Experiment

__all__ = [
    "BUILTIN",
    "ConfigSchemaError",
    "Experiment",
    "RegistryError",
    "all_claims",
    "claim_problems",
    "config_schema",
    "experiments",
    "get",
    "load_modules",
    "names",
    "register",
    "registered",
    "unregister",
    "validate_config",
]

# The paper's experiments, in the order the workflow, the tables and the report list them.
BUILTIN = ("table1", "fedavg", "imagenet", "batch", "architecture", "defenses", "analytic", "labels")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a folder name under results/ and a wildcard value
_REGISTRY: dict[str, Experiment] = {}


class ConfigSchemaError(ValueError):
    """The config does not follow the composed schema."""


class RegistryError(ValueError):
    """Two experiments with one name, or a name that cannot be a results folder."""


def register(experiment: Experiment) -> Experiment:
    """Add an experiment; a second experiment with the same name is refused."""
    if not NAME.fullmatch(experiment.name):
        raise RegistryError(f"experiment name {experiment.name!r} must match {NAME.pattern}")
    if experiment.name in _REGISTRY:
        raise RegistryError(
            f"experiment {experiment.name!r} is already registered; two experiments cannot share a name"
        )
    _REGISTRY[experiment.name] = experiment
    return experiment


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


@contextmanager
def registered(*extra: Experiment) -> Iterator[None]:
    """Register ``extra`` for the duration of a ``with`` block (tests)."""
    added = []
    try:
        for experiment in extra:
            added.append(register(experiment).name)
        yield
    finally:
        for name in added:
            unregister(name)


def get(name: str) -> Experiment:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no experiment {name!r} is registered; registered: {', '.join(_REGISTRY)}") from None


def experiments() -> tuple[Experiment, ...]:
    """All registered experiments, built-ins first, in registration order."""
    return tuple(_REGISTRY.values())


def names(attacks: bool | None = None) -> tuple[str, ...]:
    """Registered names; ``attacks=True``: those with cells, ``False``: the compute-only ones."""
    return tuple(e.name for e in _REGISTRY.values() if attacks is None or e.attacks == attacks)


def load_modules(modules: list[str] | tuple[str, ...]) -> list[Experiment]:
    """Import each module and register its ``EXPERIMENT`` (idempotent for a module already loaded)."""
    loaded = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        experiment = getattr(module, "EXPERIMENT", None)
        if not isinstance(experiment, Experiment):
            raise RegistryError(f"module {module_name} declares no EXPERIMENT (an invgrad Experiment)")
        if _REGISTRY.get(experiment.name) is not experiment:
            register(experiment)
        loaded.append(experiment)
    return loaded


def all_claims() -> tuple[Claim, ...]:
    """Every registered experiment's claims, by claim number (1, 1a, 1b, 2, ...)."""
    return tuple(sorted((c for e in _REGISTRY.values() for c in e.claims), key=order_key))


def claim_problems() -> list[str]:
    """Claims that read a column their experiment's tables do not have, or an experiment that is not registered
    (such a claim could never be decided: it would always read 'not run')."""
    problems = []
    for owner in _REGISTRY.values():
        for claim in owner.claims:
            for name, columns in selected_columns(claim).items():
                if name not in _REGISTRY:
                    problems.append(
                        f"experiment {owner.name}: claim {claim.id} selects from experiment {name!r}, which is "
                        "not registered"
                    )
                    continue
                missing = sorted(columns - _REGISTRY[name].table_columns())
                if missing:
                    problems.append(
                        f"experiment {owner.name}: claim {claim.id} selects on column(s) {missing} that "
                        f"experiment {name} does not produce (its cells have: "
                        f"{', '.join(sorted(_REGISTRY[name].table_columns() - {'indices', 'snapshots'}))})"
                    )
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Config schema
# ----------------------------------------------------------------------------------------------------------------
def config_schema(base: dict[str, Any]) -> dict[str, Any]:
    """The workflow's schema: ``base`` (workflow/schemas/config.schema.yaml) with every registered experiment's
    block added under ``experiments``. Every block is optional: a config without ``experiments.<name>`` runs
    without that experiment (as ``enabled: false`` does); a block that is there must be complete."""
    schema = copy.deepcopy(base)
    block = schema["properties"]["experiments"]
    block.setdefault("properties", {})
    for experiment in _REGISTRY.values():
        block["properties"][experiment.name] = copy.deepcopy(experiment.schema)
        if experiment.attacks:  # every attack experiment may set its own replicates (plan.seeded_cells)
            block["properties"][experiment.name].setdefault("properties", {}).update(REPLICATE_KEYS)
    return schema


REPLICATE_KEYS = {
    "victim_seeds": {"$ref": "#/$defs/victim_seeds"},
    "double_budget": {"$ref": "#/$defs/double_budget"},
    "distinct_images": {"$ref": "#/$defs/distinct_images"},
}


def _with_defaults(validator_class):
    """A validator that also fills in ``default`` values (as snakemake.utils.validate does)."""
    from jsonschema import validators

    check_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub:
                instance.setdefault(name, sub["default"])
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict[str, Any], base_schema: str | Path) -> None:
    """Validate ``config`` against the composed schema (defaults filled in); raises :class:`ConfigSchemaError` with
    jsonschema's message and where it applies (e.g. "experiments.table1.images: 0 is less than the minimum of 1")."""
    import yaml
    from jsonschema import Draft202012Validator, ValidationError

    schema = config_schema(yaml.safe_load(Path(base_schema).read_text()))
    try:
        _with_defaults(Draft202012Validator)(schema).validate(config)
    except ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path) or "config"
        raise ConfigSchemaError(f"invalid workflow config: {where}: {error.message}") from None


def _load_builtin() -> None:
    for name in BUILTIN:
        register(importlib.import_module(f".{name}", __name__).EXPERIMENT)


_load_builtin()
