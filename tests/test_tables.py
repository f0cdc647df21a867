"""The tables of an experiment (``invgrad.replication.tables``): one row builder for images.csv and the common
columns, one failure rule for every mean, and cells whose records do not all come from the cell's spec refused."""

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from invgrad.replication import records, tables
from invgrad.replication.registry.base import COMMON_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "experiment": "table1",
    "method": "ours",
    "attack": {"max_iterations": 20, "restarts": 1, "total_variation": 0.01},
    "victim_floor": None,
}


def _record(cell, target, psnr, spec=SPEC, double=None, snapshots=((5, 1.0), (10, 2.0), (20, 3.0))):
    return {
        "experiment": "table1",
        "cell": cell,
        "target": target,
        "status": "ok",
        "model": "LeNetZhu",
        "weights": "untrained",
        "psnr": psnr,
        "ssim_mean": 0.5,
        "seconds": 1.0,
        "snapshots": [list(s) for s in snapshots],
        "double_budget_run": None if double is None else {"iterations": 40, "psnr": double},
        "spec": spec,
    }


def _other_budget(iterations):
    spec = copy.deepcopy(SPEC)
    spec["attack"]["max_iterations"] = iterations
    return spec


def test_images_csv_has_exactly_the_common_columns_and_the_experiments_own():
    images, _ = tables.tables([_record("c", "0", 10.0)], "table1")
    assert list(images.columns) == [*COMMON_COLUMNS, "method"]
    assert COMMON_COLUMNS == records.COLUMN_NAMES and "victim_source" in COMMON_COLUMNS


def test_every_cell_names_its_image_source_and_how_many_images_are_exact():
    plain = [{**_record("c", t, 10.0), "val_source": "embedded-CIFAR10", "indices": [int(t)]} for t in "01"]
    assert tables.tables(plain, "table1")[1].iloc[0].image_source == "embedded-CIFAR10"
    mixed = [
        {**_record("d", t, 10.0), "val_source": "first-per-class:data/raw/cifar10-jpeg", "indices": [2 * int(t),
         2 * int(t) + 1], "exact_images": int(t)}
        for t in "01"
    ]  # fmt: skip
    entry = tables.tables(mixed, "table1")[1].iloc[0]
    assert entry.image_source == (
        "first-per-class:data/raw/cifar10-jpeg (1 of 4 images exact, the rest JPEG copies)"
    )


def test_a_failed_image_counts_as_0_db_in_the_mean_and_in_convergence():
    rows = [_record("c", "0", 10.0, double=14.0), _record("c", "1", math.nan, double=2.0)]
    rows[1]["snapshots"] = [[5, 1.0], [10, None], [20, math.nan]]
    _, table = tables.tables(rows, "table1", convergence_db=1.0)
    entry = table.iloc[0]
    assert entry.psnr_mean == pytest.approx(5.0) and entry.failures == 1
    # the 2x runs (14 + 2) / 2 against the budget's results (10 + 0) / 2
    assert entry.convergence_gain_db == pytest.approx(8.0 - 5.0) and entry.convergence_basis == "2x run"
    assert entry.psnr_2x_mean == pytest.approx(8.0) and not entry.converged
    for row in rows:
        row["double_budget_run"] = None
    entry = tables.tables(rows, "table1", convergence_db=1.0)[1].iloc[0]
    # the kept iterates at half the budget: (2 + 0) / 2, a missing one (None) counted as a failure too
    assert entry.psnr_mean_other == pytest.approx(1.0) and entry.convergence_gain_db == pytest.approx(0.5)
    assert entry.convergence_basis == "iterate at half the budget" and entry.converged


def test_a_cell_with_a_record_of_another_spec_is_not_run_never_averaged():
    rows = [_record("c", "0", 10.0, spec=_other_budget(6)), _record("c", "1", 20.0), _record("d", "0", 7.0)]
    expected = {"c": records.spec_digest(SPEC), "d": records.spec_digest(SPEC)}
    _, table = tables.tables(rows, "table1", expected=expected)
    mixed, fine = table.set_index("cell").loc["c"], table.set_index("cell").loc["d"]
    assert mixed.status == "not run" and math.isnan(mixed.psnr_mean)
    assert mixed.reason == "mixed specs (1 of 2 records from another spec)"
    assert fine.status == "ok" and fine.psnr_mean == 7.0
    # every record from another spec than the workflow's: still refused
    _, table = tables.tables(rows[:1], "table1", expected={"c": records.spec_digest(SPEC)})
    assert table.iloc[0].reason == "mixed specs (1 of 1 records from another spec)"


def test_without_the_workflows_digests_a_cells_records_must_share_one_spec():
    rows = [_record("c", str(t), 10.0) for t in range(3)] + [_record("c", "3", 9.0, spec=_other_budget(6))]
    _, table = tables.tables(rows, "table1")
    assert table.iloc[0].reason == "mixed specs (1 of 4 records from another spec)"


def test_make_table_refuses_mixed_specs_and_missing_records(tmp_path, monkeypatch):
    """The workflow's path: per-image JSONs and --cell-specs; a deleted record leaves its cell "not run"."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import make_table

    for cell, target, spec in [("c", "0", _other_budget(6)), ("c", "1", SPEC), ("d", "0", SPEC)]:
        (tmp_path / cell).mkdir(exist_ok=True)
        (tmp_path / cell / f"{target}.json").write_text(json.dumps(_record(cell, target, 10.0, spec=spec)))
    paths = [str(tmp_path / c / f"{t}.json") for c, t in [("c", "0"), ("c", "1"), ("d", "0"), ("d", "1")]]
    specs = json.dumps({"c": records.spec_digest(SPEC), "d": records.spec_digest(SPEC)})
    out = tmp_path / "table.csv"
    assert make_table.main(["--experiment", "table1", "--out", str(out), "--cell-specs", specs, *paths]) == 0
    table = pd.read_csv(out).set_index("cell")
    assert table.loc["c"].reason.startswith("mixed specs (1 of 2")
    assert table.loc["d"].status == "not run" and table.loc["d"].reason.startswith("missing records (1;")
