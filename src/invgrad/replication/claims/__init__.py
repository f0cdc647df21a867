"""The paper's claims decided from the experiment tables (arXiv 2003.14053): a small package, one job per module.

* :mod:`.tables` — :func:`load_tables` and reading a claim's cells (victim seeds included).
* :mod:`.gates` — typed reasons a row has no verdict ("not run", "not comparable").
* :mod:`.statistics` — paired tests against a margin, cluster bootstrap, Holm, sign test, McNemar, power.
* :mod:`.comparisons` — one function per kind of claim (:data:`COMPARISONS`).
* :mod:`.decide` — :func:`decide`: one row per (claim, compared pair), the columns of ``figures/claims.csv``.
"""

from ..claimdefs import ATTACKABLE_DB, MARGINS, Claim, Margin, Select, eq, margin_of
from .comparisons import CELL_LESS, COMPARISONS
from .decide import COLUMNS, NO_2X, VERDICTS, decide, registered_claims
from .gates import MIN_PAIRS, PAPER_BUDGET, PRESET_OF_METHOD, Gate, GateKind
from .statistics import ALPHA, POWER, PSNR_CAP_DB, RESAMPLES, paired_test
from .tables import load_tables

__all__ = [
    "ALPHA",
    "ATTACKABLE_DB",
    "CELL_LESS",
    "COLUMNS",
    "COMPARISONS",
    "MARGINS",
    "MIN_PAIRS",
    "NO_2X",
    "PAPER_BUDGET",
    "POWER",
    "PRESET_OF_METHOD",
    "PSNR_CAP_DB",
    "RESAMPLES",
    "VERDICTS",
    "Claim",
    "Gate",
    "GateKind",
    "Margin",
    "Select",
    "decide",
    "eq",
    "load_tables",
    "margin_of",
    "paired_test",
    "registered_claims",
]
