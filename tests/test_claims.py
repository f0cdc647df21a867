"""invgrad.replication.claims: every verdict, every not-comparable gate, the bad-input rows (budgets, seeds, floors,
2x runs), NaN/inf handling, missing cells; make_report on a tiny tree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from invgrad.replication import claims as C

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_report  # noqa: E402

BUDGET = {"ours": 4800, "zhu": 500}


def images(cell, psnr, prior=None, *, method="ours", weights="untrained", model="LeNetZhu", **extra):
    """One table1-like cell of images.csv: one row per target, targets 0..n-1 attacking data-set index = target."""
    n = len(psnr)
    preset = C.PRESET_OF_METHOD.get(method, method)
    rows = {
        "experiment": "table1",
        "cell": cell,
        "target": [str(i) for i in range(n)],
        "status": ["failed" if np.isnan(v) else "ok" for v in psnr],
        "reason": "",
        "model": model,
        "weights": weights,
        "method": method,
        "preset": preset,
        "victim_accuracy": 0.8 if weights == "trained" else np.nan,
        "victim_floor": 0.5 if weights == "trained" else np.nan,
        "iterations": BUDGET[preset],
        "restarts": 1,
        "tv": 0.01,
        "psnr": psnr,
        "ssim": 0.5,
        "psnr_prior": 10.0 if prior is None else prior,
        "indices": [json.dumps([i]) for i in range(n)],
    }
    rows.update(extra)
    return pd.DataFrame(rows)


def summary(frame, converged=True, gain=0.1):
    keys = [
        c
        for c in ("cell", "model", "weights", "method", "axis", "value", "local_steps")
        if c in frame.columns
    ]
    out = frame.groupby(keys, sort=False).psnr.mean().rename("psnr_mean").reset_index()
    out["status"] = [
        "not run" if (frame[frame.cell == c].status == "not run").all() else "ok" for c in out.cell
    ]
    out["reason"] = [frame[frame.cell == c].reason.iloc[0] for c in out.cell]
    out["converged"] = converged
    out["convergence_gain_db"] = gain
    return out


def tables(*cells, experiment="table1", **kwargs):
    frame = pd.concat(cells, ignore_index=True)
    frame["experiment"] = experiment
    return {experiment: (frame, summary(frame, **kwargs))}


def noise(seed, n, sd=1.0):
    return np.random.default_rng(seed).normal(0.0, sd, n)


PAIR = C.Claim(
    "t",
    "a beats b",
    "not published",
    "paired_greater",
    (C.Select("table1", C.eq(method="ours")), C.Select("table1", C.eq(method="zhu"))),
    per=("model", "weights"),
    paper_budget=True,
)


def one(tabs, claim=PAIR, **kwargs) -> dict:
    out = C.decide(tabs, claims=(claim,), **kwargs)
    assert len(out) == 1, out
    return out.iloc[0].to_dict()


# ---------------------------------------------------------------------------------------------------------------
# Verdicts


def test_paired_supported_contradicted_inconclusive():
    base = 12 + noise(0, 20, 3)
    ours = images("L_u_ours", base + 4 + noise(1, 20))
    zhu = images("L_u_zhu", base, method="zhu")
    row = one(tables(ours, zhu))
    assert row["verdict"] == "supported" and row["n"] == 20
    assert (
        row["p_value"] < 0.05
        and row["ci_low"] > 0
        and row["statistic"] == pytest.approx((ours.psnr - zhu.psnr).mean())
    )
    assert row["p_value"] == pytest.approx(stats.wilcoxon(ours.psnr - zhu.psnr, alternative="greater").pvalue)
    assert row["p_holm"] == pytest.approx(row["p_value"])  # one row: Holm changes nothing
    below = int((zhu.psnr < 18).sum())
    assert (
        row["ours"]
        == f"{ours.psnr.mean():.2f} vs {zhu.psnr.mean():.2f} dB; DLG (L_u_zhu) {below}/20 below 18 dB"
    )
    assert row["seeds"] == 1 and row["method"].startswith("Wilcoxon signed-rank per image")

    worse = images("L_u_ours", base - 4 + noise(1, 20))
    row = one(tables(worse, zhu))
    assert row["verdict"] == "contradicted" and row["ci_high"] < 0

    same = images("L_u_ours", base + noise(2, 20))
    row = one(tables(same, zhu))
    assert row["verdict"] == "inconclusive" and row["ci_low"] < 0 < row["ci_high"]


def test_n4_all_ordered_is_not_supported():
    """Today's rule called 4/4 ordered means 'supported' — a coin flip passes; n < 10 is not comparable."""
    ours = images("L_u_ours", [20.0, 21.0, 22.0, 23.0])
    zhu = images("L_u_zhu", [10.0, 11.0, 12.0, 13.0], method="zhu")
    row = one(tables(ours, zhu))
    assert row["verdict"] == "not comparable" and row["reason"] == "not comparable: n=4 < 10 paired images"
    assert np.isnan(row["p_value"])


def test_ordered_means_with_noisy_pairs_is_inconclusive():
    """Means ordered (ours higher) but the paired differences are noise: not supported."""
    base = 12 + noise(3, 30, 3)
    diff = noise(4, 30, 5)
    diff = diff - diff.mean() + 0.5  # mean paired difference +0.5 dB, SD 5 dB
    ours, zhu = images("L_u_ours", base + diff), images("L_u_zhu", base, method="zhu")
    assert ours.psnr.mean() > zhu.psnr.mean()
    row = one(tables(ours, zhu))
    assert row["verdict"] == "inconclusive" and row["p_value"] > 0.05


def test_margin_is_required_beyond_significance():
    base = 12 + noise(5, 40, 3)
    ours, zhu = images("L_u_ours", base + 1 + noise(6, 40, 0.3)), images("L_u_zhu", base, method="zhu")
    claim = C.Claim(**{**PAIR.__dict__, "margin": 2.0})
    assert one(tables(ours, zhu))["verdict"] == "supported"
    assert (
        one(tables(ours, zhu), claim)["verdict"] == "contradicted"
    )  # CI ≈ [0.9, 1.1] lies below the 2 dB margin


def test_nan_psnr_counts_as_zero_and_failures_are_counted():
    base = 15 + noise(7, 12, 2)
    with_nan = base + 3
    with_nan[[0, 5]] = np.nan
    ours, zhu = images("L_u_ours", with_nan), images("L_u_zhu", base, method="zhu")
    row = one(tables(ours, zhu))
    expected = np.nan_to_num(with_nan) - base
    assert row["failures"] == 2 and row["n"] == 12
    assert row["statistic"] == pytest.approx(expected.mean())
    assert row["p_value"] == pytest.approx(stats.wilcoxon(expected, alternative="greater").pvalue)


def test_paired_test_is_deterministic_and_brackets_the_mean():
    diff = noise(8, 25) + 1
    a, b = C.paired_test(diff), C.paired_test(diff)
    assert a == b and a["ci_low"] < diff.mean() < a["ci_high"]
    zero = C.paired_test(np.zeros(12))
    assert zero["p_greater"] == zero["p_less"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Gates


def _pair(n=12, **a_extra):
    base = 12 + noise(9, n, 2)
    return images("L_u_ours", base + 5, **a_extra), images("L_u_zhu", base, method="zhu")


def test_gate_not_run_with_reason():
    ours, zhu = _pair()
    ours["status"], ours["reason"], ours["psnr"] = "not run", "no training data", np.nan
    row = one(tables(ours, zhu))
    assert row["verdict"] == "not run" and row["reason"] == "not run: no training data"


def test_gate_different_images():
    ours, zhu = _pair()
    ours.loc[3, "indices"] = json.dumps([99])
    row = one(tables(ours, zhu))
    assert row["verdict"] == "not comparable" and "different images (target 3" in row["reason"]
    ours, zhu = _pair()
    row = one(tables(ours.iloc[:11], zhu))
    assert row["verdict"] == "not comparable" and "different targets (1 not shared)" in row["reason"]


def test_gate_victim_floor():
    ours, zhu = _pair(weights="trained")
    zhu["weights"] = "trained"
    ours["victim_accuracy"] = 0.41
    row = one(tables(ours, zhu))
    assert row["verdict"] == "not comparable"
    assert row["reason"] == (
        "not comparable: 0 of 1 victim seed(s) the config asks for remain "
        "(victim seed 0 of L_u_ours at 41.0% < floor 50%: its images left out)"
    )
    assert np.isnan(row["statistic"])  # no seed left: nothing to show


def test_gate_unequal_budget_only_when_methods_are_compared():
    ours, zhu = _pair()
    zhu["iterations"] = 8
    row = one(tables(ours, zhu))
    assert row["verdict"] == "not comparable"
    assert row["reason"] == "not comparable: L_u_zhu ran 8 instead of the paper's 500 L-BFGS steps"
    assert row["statistic"] > 0  # the images were attacked alike: the evidence is shown, not judged
    ours, zhu = _pair()
    ours["iterations"] = 9600  # more than declared is a different protocol too
    assert "ran 9,600 instead of the paper's 4,800 signed-Adam iterations" in one(tables(ours, zhu))["reason"]
    same_method = C.Claim(**{**PAIR.__dict__, "paper_budget": False})
    assert one(tables(ours, zhu), same_method)["verdict"] == "supported"


def test_convergence_never_vetoes_a_verdict():
    """Replaces the old convergence gate: a claim is judged at its declared budget, converged or not."""
    ours, zhu = _pair()
    assert one(tables(ours, zhu, converged=False, gain=1.5))["verdict"] == "supported"
    tabs = tables(ours, zhu)
    tabs["table1"] = (tabs["table1"][0], tabs["table1"][1].drop(columns=["converged", "convergence_gain_db"]))
    assert one(tabs)["verdict"] == "supported"


def test_gates_run_in_order_and_before_statistics():
    ours, zhu = _pair(n=4, weights="trained")
    zhu["weights"] = "trained"
    ours.loc[0, "indices"] = json.dumps([7])
    ours["victim_accuracy"], ours["iterations"] = 0.1, 10
    row = one(tables(ours, zhu, converged=False))
    assert "different images" in row["reason"] and np.isnan(row["statistic"])
    ours.loc[0, "indices"] = json.dumps([0])
    assert "floor" in one(tables(ours, zhu, converged=False))["reason"]
    ours["victim_accuracy"] = 0.9
    assert "4,800" in one(tables(ours, zhu, converged=False))["reason"]
    ours["iterations"] = 4800
    assert one(tables(ours, zhu, converged=False))["reason"] == "not comparable: n=4 < 10 paired images"


def test_missing_cell_and_missing_experiment_are_not_run():
    ours, _ = _pair()
    row = one(tables(ours))
    assert row["verdict"] == "not run"
    assert (
        row["reason"] == "not run: cell table1 model=LeNetZhu weights=untrained method=zhu not in this config"
    )
    out = C.decide({})  # nothing ran at all: every claim says so, nothing crashes
    assert set(out.verdict) == {"not run"} and out.reason.str.contains("not in this config").all()
    assert list(out.columns) == C.COLUMNS and len(out) == len(C.registered_claims())


# ---------------------------------------------------------------------------------------------------------------
# The other comparisons


def test_matches_paper_three_ways():
    claim = next(c for c in C.registered_claims() if c.id == "1a")
    spread = noise(10, 100, 3.33)
    spread = (spread - spread.mean()) / spread.std() * 3.33
    for mean, verdict in [(18.3, "supported"), (12.0, "contradicted"), (16.3, "inconclusive")]:
        row = one(tables(images("LeNetZhu_untrained_ours", mean + spread)), claim)
        assert row["verdict"] == verdict, (mean, row)
        assert row["statistic"] == pytest.approx(mean - 18.0) and row["ci_low"] < mean - 18 < row["ci_high"]
    # the combined CI is wider than ours alone: paper SE 0.333 and ours SE 0.333 -> half-width ≈ 1.96·0.47
    assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * 1.96 * np.hypot(0.333, 0.333), rel=0.1)
    short = images("LeNetZhu_untrained_ours", 18 + spread)
    short["iterations"] = 600
    assert one(tables(short), claim)["verdict"] == "not comparable"


def test_beats_prior_and_its_mirror():
    attack = C.Claim("2", "t", "q", "beats_prior", (C.Select("table1", C.eq(method="ours")),), margin=3.0)
    mirror = C.Claim("8", "t", "q", "fails_to_beat_prior", attack.cells, margin=3.0)
    prior = 10 + noise(11, 15)
    strong = images("c", prior + 6 + noise(12, 15), prior)
    weak = images("c", prior + 1 + noise(13, 15, 0.5), prior)
    assert one(tables(strong), attack)["verdict"] == "supported"
    assert one(tables(strong), mirror)["verdict"] == "contradicted"
    assert (
        one(tables(weak), attack)["verdict"] == "contradicted"
    )  # beats the prior, but CI below the 3 dB margin
    assert one(tables(weak), mirror)["verdict"] == "supported"
    assert (
        one(tables(weak), mirror)["reason"] == "CI below 3 and Holm p < 0.05"
    )  # the mirror's side, in words
    assert one(tables(strong), mirror)["reason"] == "CI above 3 and Holm p < 0.05 (the other way)"
    row = one(tables(strong), attack)
    assert row["statistic"] == pytest.approx((strong.psnr - prior).mean())
    no_prior = strong.assign(psnr_prior=np.nan)
    assert one(tables(no_prior), attack)["reason"].startswith("not run: c has no psnr_prior")


def test_within_tolerance_per_dtype():
    table = pd.DataFrame(
        {
            "model": ["MLP", "MLP", "MLP", "MLP"],
            "batch_size": [1, 1, 1, 4],
            "dtype": ["float32", "float64", "float64", "float64"],
            "rel_error_max": [2e-7, 1e-16, 3e-8, 0.5],
        }
    )
    out = C.decide({"analytic": (None, table)}, claims=tuple(c for c in C.registered_claims() if c.id == "5"))
    got = dict(zip(out.setting, out.verdict, strict=True))
    assert got == {"float32": "supported", "float64": "contradicted"}
    assert out.set_index("setting").statistic["float64"] == 3e-8


def test_batch_claim_counts_recovered_images_over_independent_batches():
    claim = next(c for c in C.registered_claims() if c.id == "7")
    priors = [list(10 + noise(14 + b, 16)) for b in range(3)]

    def batch(per_batch):
        row = images("R_K16", [float(np.nanmean(v)) for v in per_batch])
        row["experiment"] = "batch"
        row["target"] = [f"u{b}" for b in range(len(per_batch))]
        row["psnr_per_image"] = [json.dumps([None if np.isnan(x) else x for x in v]) for v in per_batch]
        row["psnr_prior_per_image"] = [json.dumps(p) for p in priors[: len(per_batch)]]
        return tables(row, experiment="batch")

    # each batch beats its prior by more than the 3 dB margin (a failed image counts as 0 dB), none above 17.5 dB
    values = [np.minimum(np.array(p) + 6 + noise(15 + b, 16, 0.5), 17.5) for b, p in enumerate(priors)]
    values[0][0], values[0][1] = 19.0, np.nan
    row = one(batch(values), claim, recovered=18.0)
    assert row["verdict"] == "supported" and row["n"] == 48 and row["failures"] == 1
    assert "1/48 ≥ 18 dB" in row["ours"] and "3 batches" in row["method"] and "per-batch" in row["method"]
    values[0][0] = 17.0
    row = one(batch(values), claim, recovered=18.0)
    assert row["verdict"] == "inconclusive" and row["reason"] == "beats the prior but no image ≥ 18 dB"
    # one batch: its 16 PSNRs come from one joint reconstruction, not 16 samples
    values[0][0] = 19.0
    row = one(batch(values[:1]), claim, recovered=18.0)
    assert row["verdict"] == "not comparable" and "1 batch(es) < 3" in row["reason"]


def test_fedavg_users_images_count_singly_clustered_by_user():
    claim = next(c for c in C.registered_claims() if c.id == "6")
    rng = np.random.default_rng(3)
    priors = [list(12 + rng.normal(0, 1, 4)) for _ in range(4)]
    per_user = [list(np.array(p) + 6 + u + rng.normal(0, 0.3, 4)) for u, p in enumerate(priors)]
    row = images("n5_lr0.1_K4_B0", [float(np.mean(v)) for v in per_user], [float(np.mean(p)) for p in priors])
    row["target"] = [f"u{u}" for u in range(4)]
    row["local_steps"] = 5
    row["psnr_per_image"] = [json.dumps(v) for v in per_user]
    row["psnr_prior_per_image"] = [json.dumps(p) for p in priors]
    out = one(tables(row, experiment="fedavg"), claim)
    assert out["n"] == 16 and "clustered by update (4 updates)" in out["method"]
    assert out["method"].startswith("t-test on 4 per-update mean differences") and out["seeds"] == 1
    assert out["verdict"] == "supported"


def test_width_claim_picks_widest_and_narrowest():
    claim = next(c for c in C.registered_claims() if c.id == "4")
    base = 12 + noise(16, 10, 2)
    cells = [
        images(f"ResNet20-{w}_untrained", base + w, model=f"ResNet20-{w}", axis="width", value=w)
        for w in (1, 2, 4)
    ]
    out = C.decide(tables(*cells, experiment="architecture"), claims=(claim,))
    assert len(out) == 1 and out.cells[0] == "ResNet20-4_untrained vs ResNet20-1_untrained"
    assert out.statistic[0] == pytest.approx(3.0)
    single = C.decide(tables(cells[0], experiment="architecture"), claims=(claim,))
    assert single.verdict[0] == "not run" and "one value only" in single.reason[0]


# ---------------------------------------------------------------------------------------------------------------
# make_report.py on a tiny results tree


def _write(results: Path, experiment: str, tabs):
    images_df, table_df = tabs[experiment]
    (results / experiment).mkdir(parents=True, exist_ok=True)
    images_df.to_csv(results / experiment / "images.csv", index=False)
    table_df.to_csv(results / experiment / "table.csv", index=False)


def test_make_report_writes_claims_csv_and_renders_it(tmp_path):
    base = 12 + noise(17, 12, 2)
    cells = [
        images("LeNetZhu_untrained_ours", base + 5),
        images("LeNetZhu_untrained_zhu", base + 5 + noise(18, 12, 0.2) + 2, method="zhu"),
        images("LeNetZhu_untrained_zhu_halfce", base, method="zhu_halfce"),
    ]
    results = tmp_path / "results"
    _write(results, "table1", tables(*cells))
    claims_csv, report = tmp_path / "figures/claims.csv", tmp_path / "figures/REPORT.md"
    assert (
        make_report.main(
            [
                "--results",
                str(results),
                "--benchmarks",
                str(tmp_path / "bench"),
                "--claims",
                str(claims_csv),
                "--out",
                str(report),
            ]
        )
        == 0
    )
    table = pd.read_csv(claims_csv)
    for column in (
        "claim",
        "verdict",
        "n",
        "statistic",
        "p_value",
        "ci_low",
        "ci_high",
        "ours",
        "paper",
        "reason",
        "comparison",
        "cells",
        "failures",
    ):
        assert column in table.columns
    dlg = table[table.claim == "1b"].set_index("setting").verdict
    assert dlg["untrained, vs zhu_halfce"] == "supported" and dlg["untrained, vs zhu"] == "contradicted"
    text = report.read_text()
    assert "| claim (arXiv 2003.14053) | paper | ours | n (failed: NaN, counted as 0 dB) | seeds |" in text
    assert "## Method" in text and "MDE = (z₁₋α/₂ + z_0.8) · SD / √n" in text
    for name, margin in C.MARGINS.items():  # the pre-declared margin table, each with its reason
        assert f"| {name} | {margin.value:g} {margin.unit} |" in text
    for row in table.itertuples():
        assert f"**{row.verdict}**" in text
    assert "**not run** | not run | not run: cell imagenet not in this config |" in text
    assert "## The DLG discrepancy" in text
    assert "untrained, vs zhu_halfce: **supported** — DLG loses" in text
    assert "untrained, vs zhu: **contradicted** — DLG beats" in text
    # the report is rendered from claims.csv: a verdict edited there is what a re-render shows
    assert text.count("**supported**") == (table.verdict == "supported").sum() + 1  # +1: the DLG section line


def test_load_tables_reads_either_file(tmp_path):
    (tmp_path / "table1").mkdir()
    (tmp_path / "analytic").mkdir()
    (tmp_path / "victims").mkdir()
    pd.DataFrame({"cell": ["a"], "psnr": [1.0]}).to_csv(tmp_path / "table1/images.csv", index=False)
    pd.DataFrame({"cell": ["a"], "n": [1]}).to_csv(tmp_path / "table1/table.csv", index=False)
    pd.DataFrame({"dtype": ["float32"]}).to_csv(tmp_path / "analytic/table.csv", index=False)
    got = C.load_tables(tmp_path)
    assert sorted(got) == ["analytic", "table1"]
    assert got["analytic"][0] is None and list(got["analytic"][1].columns) == ["dtype"]
    assert list(got["table1"][0].psnr) == [1.0] and list(got["table1"][1].n) == [1]
    assert C.load_tables(tmp_path / "missing") == {}


def test_default_claims_on_every_experiment():
    """All of CLAIMS over one synthetic results set shaped like the pipeline's (incl. cells in two sweeps)."""
    n, prior = 12, 10 + noise(20, 12)
    t1 = []
    for model in ("LeNetZhu", "ResNet20"):
        for weights, shift in (("untrained", 8), ("trained", 4)):
            t1.append(
                images(
                    f"{model}_{weights}_ours",
                    prior + shift + noise(21, n),
                    prior,
                    model=model,
                    weights=weights,
                )
            )
            t1.append(
                images(
                    f"{model}_{weights}_zhu",
                    prior + 0.2 * noise(22, n),
                    prior,
                    model=model,
                    weights=weights,
                    method="zhu",
                )
            )
    fed = [images(f"n{s}_lr0.0001_K1_B0", prior + 5 + noise(23, n), prior, local_steps=s) for s in (1, 3)]
    arch = [
        images(
            f"ResNet{d}-{w}_untrained",
            prior + w + noise(24, n),
            prior,
            model=f"ResNet{d}-{w}",
            axis=axis,
            value=value,
        )
        for d, w, axis, value in [
            (20, 1, "width", 1),
            (20, 1, "depth", 20),
            (20, 2, "width", 2),
            (32, 1, "depth", 32),
        ]
    ]
    imagenet = images("efficientnet-lite0", [9.0], [7.0], model="efficientnet-lite0", weights="pretrained")
    batch = images("ResNet20_untrained_K12", [15.0])
    batch["psnr_per_image"] = json.dumps(list(prior + 9 + noise(25, n)))
    batch["psnr_prior_per_image"] = json.dumps(list(prior))
    analytic = pd.DataFrame(
        {"batch_size": [1, 1], "dtype": ["float32", "float64"], "rel_error_max": [1e-7, 1e-16]}
    )
    tabs = {
        **tables(*t1),
        **tables(*fed, experiment="fedavg"),
        **tables(*arch, experiment="architecture"),
        **tables(imagenet, experiment="imagenet"),
        **tables(batch, experiment="batch"),
        "analytic": (None, analytic),
    }
    out = C.decide(tabs)
    got = {(r.claim, r.setting): r.verdict for r in out.itertuples()}
    assert got[("1", "LeNetZhu untrained")] == "supported" and got[("1", "ResNet20 trained")] == "supported"
    assert got[("1a", "")] == "supported"  # untrained ours ≈ prior + 8 ≈ 18 dB, within ±2 dB of the paper
    assert got[("1b", "untrained, vs zhu_halfce")] == "not run"
    assert got[("2", "LeNetZhu")] == "supported" and got[("3", "ResNet20")] == "supported"
    assert got[("2b", "efficientnet-lite0")] == "not comparable"  # one image
    assert got[("4", "untrained")] == "supported"  # ResNet20-2 vs ResNet20-1, the depth rows ignored
    assert got[("5", "float32")] == "supported" and got[("5", "float64")] == "supported"
    assert got[("6", "n3_lr0.0001_K1_B0")] == "supported" and ("6", "n1_lr0.0001_K1_B0") not in got
    assert got[("7", "ResNet20_untrained_K12")] == "not comparable"  # one batch: the batch is the unit
    assert got[("8", "LeNetZhu")] == "supported"  # DLG ≈ prior: does not beat it by 3 dB
    assert got[("8b", "")] == "not run"
    assert set(out.claim) == {c.id for c in C.registered_claims()}


def test_each_verdict_names_the_training_data_of_its_victims():
    base = 12 + noise(0, 20, 3)
    source = "image folder data/raw/cifar10-jpeg (sha256 0123456789ab)"
    ours = images("L_t_ours", base + 4 + noise(1, 20), weights="trained", victim_source=source)
    zhu = images("L_t_zhu", base, method="zhu", weights="trained", victim_source=source)
    assert one(tables(ours, zhu))["victim_source"] == source
    untrained = (
        images("L_u_ours", base + 4, victim_source="untrained"),
        images("L_u_zhu", base, method="zhu", victim_source="untrained"),
    )
    assert one(tables(*untrained))["victim_source"] == ""


# ---------------------------------------------------------------------------------------------------------------
# Bad input: stated rows, never a crash, never a verdict


def _seeded(cell, psnr_by_seed, **kwargs):
    """One cell with a victim_seed column: one block of images per seed, the same targets in each."""
    return pd.concat(
        [images(cell, values, victim_seed=seed, **kwargs) for seed, values in psnr_by_seed.items()],
        ignore_index=True,
    )


def test_a_cell_at_several_budgets_and_same_method_cells_at_different_budgets():
    ours, zhu = _pair()
    ours.loc[:5, "iterations"] = 2400
    row = one(tables(ours, zhu))
    assert row["verdict"] == "not comparable"
    assert row["reason"] == "not comparable: L_u_ours ran at several budgets (2,400, 4,800 iterations)"
    claim3 = next(c for c in C.registered_claims() if c.id == "3")  # judged at the config's budget
    base = 15 + noise(30, 12)
    untrained = images("L_u_ours", base + 4, iterations=2400)
    trained = images("L_t_ours", base, weights="trained")
    row = one(tables(untrained, trained), claim3)
    assert row["verdict"] == "not comparable" and "cells of one method ran different budgets" in row["reason"]
    assert "L_u_ours 2,400 vs L_t_ours 4,800" in row["reason"] and row["statistic"] == pytest.approx(4.0)
    trained["iterations"] = 2400
    assert one(tables(untrained, trained), claim3)["verdict"] == "supported"


def test_fewer_seeds_than_the_config_asks_is_a_stated_row():
    ours, zhu = _pair()
    row = one(tables(ours, zhu), seeds=3)
    assert row["verdict"] == "not comparable" and row["verdict_2x"] == "not comparable"
    assert row["reason"] == "not comparable: 1 of 3 victim seed(s) the config asks for remain"
    assert row["seeds"] == 1 and row["statistic"] > 0  # the evidence shown, not judged
    with pytest.raises(ValueError, match="victim seeds per cell must be an integer ≥ 1, got 0"):
        C.decide({}, seeds=0)


def test_a_victim_seed_below_its_floor_is_left_out_and_the_row_counts_what_remains():
    base = {s: 12 + noise(40 + s, 12, 2) for s in range(4)}
    ours = _seeded(
        "L_t_ours", {s: v + 4 + noise(50 + s, 12, 0.5) for s, v in base.items()}, weights="trained"
    )
    zhu = _seeded("L_t_zhu", base, method="zhu", weights="trained")
    ours.loc[ours.victim_seed == 2, "victim_accuracy"] = 0.3
    row = one(tables(ours, zhu), seeds=3)
    assert row["verdict"] == "supported" and row["seeds"] == 3 and row["n"] == 36
    assert row["reason"].startswith(
        "victim seed 2 of L_t_ours at 30.0% < floor 50%: its images left out, 3 seed(s) remain; "
    )
    assert row["method"].startswith("t-test on 3 per-seed mean differences")
    row = one(tables(ours, zhu), seeds=4)
    assert row["verdict"] == "not comparable" and row["reason"].startswith(
        "not comparable: 3 of 4 victim seed(s) the config asks for remain (victim seed 2 of L_t_ours"
    )


def test_missing_2x_run_stable_and_budget_sensitive():
    ours, zhu = _pair()
    row = one(tables(ours, zhu))
    assert row["verdict_2x"] == C.NO_2X == "not run: no 2x run"
    assert row["robustness"] == "not measured: no 2x run" and np.isnan(row["statistic_2x"])
    ours["psnr_2x"], zhu["psnr_2x"] = ours.psnr + 1, zhu.psnr
    row = one(tables(ours, zhu))
    assert row["verdict_2x"] == "supported" and row["robustness"] == "stable at 2x"
    assert row["statistic_2x"] == pytest.approx(6.0)
    zhu["psnr_2x"] = zhu.psnr + 10  # DLG overtakes at twice its budget
    row = one(tables(ours, zhu))
    assert row["verdict"] == "supported" and row["verdict_2x"] == "contradicted"
    assert row["robustness"] == "budget-sensitive (contradicted at 2x)"


def test_holm_corrects_across_the_reports_rows():
    weak_base = 12 + noise(60, 10, 2)
    weak = C.Claim(**{**PAIR.__dict__, "id": "w", "per": ()})
    cells = (
        images("L_u_ours", weak_base + 1 + noise(61, 10, 0.3)),
        images("L_u_zhu", weak_base, method="zhu"),
    )
    alone = one(tables(*cells), weak)
    assert alone["verdict"] == "supported" and alone["p_value"] < 0.05  # 10/10 positive: p = 1/1024
    both = C.decide(tables(*cells), claims=(weak,) * 60)
    assert both.p_holm.iloc[0] == pytest.approx(min(1.0, 60 * alone["p_value"]))
    assert (both.verdict == "inconclusive").all() and (both.p_value == alone["p_value"]).all()


def test_bimodal_dlg_mean_and_majority_disagree_in_words():
    ours = images("L_u_ours", [20.0] * 20)
    zhu = images("L_u_zhu", [60.0] * 8 + [5.0] * 12, method="zhu")
    row = one(tables(ours, zhu))
    assert row["statistic"] == pytest.approx(-7.0) and row["win_rate"] == pytest.approx(0.6)
    assert row["sign_p"] == pytest.approx(stats.binomtest(12, 20).pvalue)
    assert (
        row["note"]
        == "the mean favours L_u_zhu by 7.00 dB, but L_u_ours wins 12 of 20 images (sign test p=0.5)"
    )
    assert row["recovery"] == "L_u_ours 20/20, L_u_zhu 8/20 ≥ 18 dB"
    assert row["mcnemar_p"] == pytest.approx(2 / 2**12)
    assert row["ours"].endswith("; DLG (L_u_zhu) 12/20 below 18 dB")


def test_a_perfect_match_stays_inf_and_does_not_become_1e308():
    base = 12 + noise(70, 12, 2)
    perfect = base + 3
    perfect[0] = np.inf
    row = one(tables(images("L_u_ours", perfect), images("L_u_zhu", base, method="zhu")))
    assert np.isfinite(row["statistic"]) and row["statistic"] < 20 and "e+308" not in row["ours"]
    assert row["win_rate"] == 1.0 and row["verdict"] == "supported"


def test_claims_come_from_the_registry_at_call_time(monkeypatch):
    from invgrad.replication import registry

    monkeypatch.setattr(registry, "all_claims", lambda: (PAIR,))
    out = C.decide({})
    assert list(out.claim) == ["t"] and out.verdict[0] == "not run"


def test_gates_are_typed_values():
    assert (
        C.GateKind.DIFFERENT_BUDGET.verdict == "not comparable" and C.GateKind.DIFFERENT_BUDGET.shows_evidence
    )
    gate = C.Gate(C.GateKind.NOT_RUN, "cell x not in this config")
    assert gate.verdict == "not run" and gate.reason == "not run: cell x not in this config"
    assert not C.GateKind.DIFFERENT_IMAGES.shows_evidence
    assert len(set(C.GateKind)) == len(C.GateKind.__members__)  # no kind is an alias of another


def test_the_runs_own_figures_are_not_local_changes_but_code_is(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "claims.csv").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    (tmp_path / "figures" / "claims.csv").write_text("new\n")  # what the pipeline rewrites
    assert "local changes" not in make_report.source_commit(tmp_path)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert make_report.source_commit(tmp_path).endswith(" + local changes")


def test_the_report_names_the_commit_and_config_it_was_made_from(tmp_path):
    import subprocess

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    assert make_report.source_commit().split()[0] == head.strip()[:12]
    assert make_report.source_commit(tmp_path) == "unknown (not a git checkout)"
    results = tmp_path / "results"
    _write(results, "table1", tables(images("LeNetZhu_untrained_ours", 12 + noise(3, 12, 2))))
    report = tmp_path / "REPORT.md"
    args = ["--results", str(results), "--benchmarks", str(tmp_path / "b"), "--config-label", "config/x.yaml"]
    assert make_report.main([*args, "--claims", str(tmp_path / "c.csv"), "--out", str(report)]) == 0
    assert (
        f"Made from commit `{make_report.source_commit()}` with config `config/x.yaml`" in report.read_text()
    )
