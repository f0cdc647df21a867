"""Gates: the reasons a comparison cannot give a verdict, as typed values (:class:`Gate`), checked before any
statistic. A gate decides the row's verdict ("not run" or "not comparable") by its kind, never by its text;
convergence is not a gate (a claim is judged at its declared budget).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from ..claimdefs import Claim
from .tables import CellData, finite, text

MIN_PAIRS = 10
# The paper's budget per method family (Table 4 / the DLG paper): a method comparison runs each at its own.
PAPER_BUDGET = {"ours": (4800, "signed-Adam iterations"), "zhu": (500, "L-BFGS steps")}
PRESET_OF_METHOD = {"ours": "ours", "zhu": "zhu", "zhu_halfce": "zhu"}


class GateKind(enum.Enum):
    """Why a row has no verdict: (tag, verdict, shows_evidence); ``shows_evidence``: the images were attacked
    alike, so the statistic is shown (never judged). The tag keeps every kind distinct (no enum aliases)."""

    NOT_RUN = ("not_run", "not run", False)
    SAME_CELL = ("same_cell", "not run", False)
    NO_DATA = ("no_data", "not run", False)
    DIFFERENT_IMAGES = ("different_images", "not comparable", False)
    NO_SEEDS_LEFT = ("no_seeds_left", "not comparable", False)
    FEW_SEEDS = ("few_seeds", "not comparable", True)
    DIFFERENT_BUDGET = ("different_budget", "not comparable", True)
    FEW_PAIRS = ("few_pairs", "not comparable", False)
    MISMATCHED_TABLE = ("mismatched_table", "not comparable", False)

    def __init__(self, tag: str, verdict: str, shows_evidence: bool):
        self.tag = tag
        self.verdict = verdict
        self.shows_evidence = shows_evidence


@dataclass(frozen=True)
class Gate:
    kind: GateKind
    detail: str

    @property
    def verdict(self) -> str:
        return self.kind.verdict

    @property
    def reason(self) -> str:
        prefix = f"{self.verdict}: "
        return self.detail if self.detail.startswith(prefix) else prefix + self.detail


def common_seeds(cells: list[CellData]) -> list:
    """The victim seeds every cell kept (after the floors), in the first cell's order."""
    seeds = [set(c.seeds) for c in cells]
    shared = set.intersection(*seeds) if seeds else set()
    return [s for s in cells[0].seeds if s in shared]


def _attacked(cell: CellData):
    return cell.images if cell.attacked is None else cell.attacked


def _indices(cell: CellData) -> dict:
    frame = _attacked(cell)
    if "indices" not in frame.columns:
        return {}
    out = {}
    for key, raw in zip(_keys(cell), frame.indices, strict=True):
        out[key] = json.loads(raw) if isinstance(raw, str) and raw.strip() else None
    return out


def _keys(cell: CellData) -> list[tuple[str, str]]:
    frame = _attacked(cell)
    return list(zip(frame.victim_seed.astype(str), frame.target.astype(str), strict=True))


def images_gate(a: CellData, b: CellData) -> Gate | None:
    """Both cells attacked the same targets (and data-set indices) for every victim seed both attacked."""
    shared = {k[0] for k in _keys(a)} & {k[0] for k in _keys(b)}
    ta = {k for k in _keys(a) if k[0] in shared}
    tb = {k for k in _keys(b) if k[0] in shared}
    if ta != tb:
        return Gate(
            GateKind.DIFFERENT_IMAGES,
            f"{a.name} and {b.name} attacked different targets ({len(ta ^ tb)} not shared)",
        )
    ia, ib = _indices(a), _indices(b)
    differ = [k for k in sorted(ta) if ia.get(k) != ib.get(k)] if ia or ib else []
    if differ:
        return Gate(
            GateKind.DIFFERENT_IMAGES,
            f"{a.name} and {b.name} attacked different images (target {differ[0][1]}: indices differ)",
        )
    return None


def seeds_gate(cells: list[CellData], asked: int) -> Gate | None:
    """Fewer victim seeds than the config asks (after leaving out the seeds whose victim is below its floor)."""
    left_out = [reason for c in cells for reason in c.below_floor.values()]
    remaining = len(common_seeds(cells))
    if remaining >= asked:
        return None
    why = f" ({'; '.join(left_out)}: its images left out)" if left_out else ""
    detail = f"{remaining} of {asked} victim seed(s) the config asks for remain{why}"
    return Gate(GateKind.FEW_SEEDS if remaining else GateKind.NO_SEEDS_LEFT, detail)


def preset(cell: CellData) -> str | None:
    value = cell.first("preset")
    return str(value) if text(value) else PRESET_OF_METHOD.get(str(cell.first("method")))


def _budgets(cell: CellData) -> list[int]:
    if "iterations" in cell.images.columns and cell.images.iterations.notna().any():
        return sorted({int(float(v)) for v in cell.images.iterations.dropna()})
    value = cell.first("iterations")
    return [int(float(value))] if finite(value) else []


def budget_gate(claim: Claim, cells: list[CellData]) -> Gate | None:
    """Every cell ran one budget: the paper's for its method when the claim is judged at the paper's protocol,
    otherwise the config's, the same for cells of the same method."""
    budgets = {c.name: _budgets(c) for c in cells}
    for name, ran in budgets.items():
        if len(ran) > 1:
            shown = ", ".join(f"{b:,}" for b in ran)
            return Gate(GateKind.DIFFERENT_BUDGET, f"{name} ran at several budgets ({shown} iterations)")
    if claim.paper_budget:
        for cell in cells:
            family, ran = preset(cell), budgets[cell.name]
            if family in PAPER_BUDGET and ran and ran[0] != PAPER_BUDGET[family][0]:
                budget, unit = PAPER_BUDGET[family]
                return Gate(
                    GateKind.DIFFERENT_BUDGET,
                    f"{cell.name} ran {ran[0]:,} instead of the paper's {budget:,} {unit}",
                )
        return None
    families = {}
    for cell in cells:
        if budgets[cell.name]:
            families.setdefault(preset(cell), []).append((cell.name, budgets[cell.name][0]))
    for runs in families.values():
        if len({b for _, b in runs}) > 1:
            shown = " vs ".join(f"{name} {b:,}" for name, b in runs)
            return Gate(GateKind.DIFFERENT_BUDGET, f"cells of one method ran different budgets ({shown})")
    return None


def gates(claim: Claim, cells: list[CellData], asked: int) -> Gate | None:
    """The first gate that holds, in order: images, seeds (and floors), budget."""
    if len(cells) == 2 and (gate := images_gate(*cells)):
        return gate
    return seeds_gate(cells, asked) or budget_gate(claim, cells)
