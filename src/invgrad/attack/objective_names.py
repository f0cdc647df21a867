"""The names of the attack's objectives, torch-free: the config validates ``cost_fn`` against them while the
workflow plans (no torch at parse time), and the CLI lists them.

The objectives themselves live in :data:`invgrad.attack.objectives.OBJECTIVES`, which checks at import that its
built-in entries are exactly :data:`BUILT_IN` and registers any further one here
(:func:`invgrad.attack.objectives.register_objective`).
"""

from __future__ import annotations

from collections.abc import Sequence

BUILT_IN = ("sim", "simlocal", "l2", "l1", "max")
_names: list[str] = list(BUILT_IN)


def objective_names() -> tuple[str, ...]:
    """Every objective ``cost_fn`` may name: the built-in ones, then those registered since."""
    return tuple(_names)


class _Names(Sequence):
    """A live, read-only view of :func:`objective_names` (what ``config.COST_FUNCTIONS`` is)."""

    def __getitem__(self, index):
        return _names[index]

    def __len__(self) -> int:
        return len(_names)

    def __repr__(self) -> str:
        return repr(objective_names())


NAMES: Sequence[str] = _Names()


def add_name(name: str) -> None:
    """Make ``name`` a valid ``cost_fn`` (called by the objectives' registration only)."""
    if name not in _names:
        _names.append(name)


def remove_name(name: str) -> None:
    """Undo :func:`add_name` for a registered, non-built-in name."""
    if name in BUILT_IN:
        raise ValueError(f"objective {name!r} is built in and cannot be removed")
    if name in _names:
        _names.remove(name)
