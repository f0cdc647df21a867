import pandas as pd
import pytest

from invgrad.replication.claims import stability


def _claims(*rows):
    return pd.DataFrame(rows, columns=["claim", "setting", "verdict"])


def test_changes_are_named_and_the_goal_counts_swaps_and_moves():
    base = _claims(
        ("1", "untrained", "supported"),
        ("1", "trained", "contradicted"),
        ("3", None, "inconclusive"),
        ("5", "float32", "supported"),
        ("8b", None, "not run"),
    )
    other = _claims(
        ("1", "untrained", "contradicted"),
        ("1", "trained", "contradicted"),
        ("3", None, "supported"),
        ("5", "float32", "supported"),
        ("2b", None, "inconclusive"),
    )
    table = stability.compare(base, other)
    got = {(r.claim, r.setting): (r.verdict_other_seed, r.change) for r in table.itertuples()}
    assert got[("1", "untrained")] == ("contradicted", "swap")
    assert got[("1", "trained")][1] == "same" and got[("3", "")] == ("supported", "move")
    assert got[("8b", "")] == ("missing", "other") and got[("2b", "")][1] == "other"
    assert list(table.columns) == ["claim", "setting", "verdict", "verdict_other_seed", "change"]
    counts = stability.summary(table)
    assert (counts["swaps"], counts["moves"], counts["same"], counts["goal_met"]) == (1, 1, 2, False)
    assert stability.summary(table[table.change != "swap"])["goal_met"]


def test_a_repeated_row_is_refused():
    base = _claims(("1", "untrained", "supported"), ("1", "untrained", "inconclusive"))
    with pytest.raises(ValueError, match="repeats"):
        stability.compare(base, base)


def test_the_script_writes_stability_csv_and_prints_the_counts(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "stability.py"
    spec = importlib.util.spec_from_file_location("stability_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _claims(("1", "untrained", "supported"), ("3", None, "inconclusive")).to_csv(
        tmp_path / "a.csv", index=False
    )
    _claims(("1", "untrained", "supported"), ("3", None, "contradicted")).to_csv(
        tmp_path / "b.csv", index=False
    )
    out = tmp_path / "stability.csv"
    assert (
        module.main(
            ["--base", str(tmp_path / "a.csv"), "--other", str(tmp_path / "b.csv"), "--out", str(out)]
        )
        == 0
    )
    assert pd.read_csv(out).change.tolist() == ["same", "move"]
    assert "1 same, 0 swapped, 1 moved" in capsys.readouterr().out
