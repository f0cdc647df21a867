"""A notebook runs as a person would run it: `jupyter nbconvert --to notebook --execute` (no papermill), on a tiny
results table written here. The copy's parameters cell points at tmp_path; the notebook is otherwise as committed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_analytic_notebook_executes_with_nbconvert(tmp_path):
    results, figures = tmp_path / "results" / "analytic", tmp_path / "figures"
    results.mkdir(parents=True)
    pd.DataFrame({"cell": ["LeNetZhu_K1"], "status": ["ok"], "reason": [""]}).to_csv(
        results / "table.csv", index=False
    )
    pd.DataFrame(
        {
            "model": ["LeNetZhu", "LeNetZhu", "ResNet20", "ResNet20"],
            "batch_size": [1, 4, 1, 4],
            "dtype": ["float64", "float32", "float64", "float32"],
            "rel_error": [1e-12, 3e-3, 2e-12, 5e-2],
        }
    ).to_csv(results / "trials.csv", index=False)
    notebook = json.loads((ROOT / "notebooks" / "analytic.ipynb").read_text())
    params = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    params["source"] = (
        f'results_dir = "{results}"\nfigures_dir = "{figures}"\nconfig_label = "tiny test table"\n'
        "recovered_psnr = 18.0\n"
    )
    (tmp_path / "analytic.ipynb").write_text(json.dumps(notebook))

    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
    }
    cmd = [
        str(bin_dir / "jupyter"),
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "--output",
        "executed.ipynb",
        "analytic.ipynb",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    executed = json.loads((tmp_path / "executed.ipynb").read_text())
    printed = "".join(
        "".join(out.get("text", ""))
        for c in executed["cells"]
        if c["cell_type"] == "code"
        for out in c["outputs"]
    )
    assert "config: tiny test table" in printed and "all cells ran" in printed
    assert (figures / "analytic_error.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------------
# Explorable from a fresh clone: results/<experiment>, else the committed figures/data/<experiment>
# ---------------------------------------------------------------------------------------------------------------
def _clone(tmp_path: Path) -> Path:
    """The committed project with this checkout's uncommitted edits (tracked and new files), without results/."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    clone = tmp_path / "clone"
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file() and not name.startswith(("results/", "figures/data/")):
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    return clone


def _env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
    }


def _fake_results(folder: Path, targets: int = 12) -> None:
    import torch

    (folder / "cellA").mkdir(parents=True)
    names = [str(i) for i in range(targets)]
    pd.DataFrame({"cell": ["cellA"], "status": ["ok"], "reason": [""]}).to_csv(
        folder / "table.csv", index=False
    )
    pd.DataFrame({"cell": "cellA", "target": names, "psnr": [10.0 + i for i in range(targets)]}).to_csv(
        folder / "images.csv", index=False
    )
    pair = {"ground_truth": torch.zeros(1, 3, 4, 4), "reconstruction": torch.ones(1, 3, 4, 4)}
    torch.save({"status": "ok", "targets": {n: pair for n in names}}, folder / "cellA" / "images.pt")
    for n in names:
        (folder / "cellA" / f"{n}.json").write_text(json.dumps({"target": n}))


def test_export_keeps_the_tables_and_a_few_images_per_cell(tmp_path):
    from invgrad import io
    from invgrad.replication import notebook

    _fake_results(tmp_path / "results" / "table1")
    out = notebook.export_figure_data(tmp_path / "results" / "table1", tmp_path / "data" / "table1", keep=2)
    assert sorted(p.name for p in out.iterdir()) == ["cellA", "images.csv", "table.csv"]
    kept = io.load_tensors(out / "cellA" / "images.pt")["targets"]
    assert sorted(kept, key=int) == [
        "0",
        "1",
        "6",
        "11",
    ]  # the first 2, the median and the best (the worst is "0")
    assert sorted(p.name for p in (out / "cellA").glob("*.json")) == ["0.json", "1.json", "11.json", "6.json"]
    assert notebook.load_cell_images(out)["cellA"]["targets"]["11"]["reconstruction"].sum() == 48


def test_results_first_then_the_committed_copy_then_one_line(tmp_path, monkeypatch, capsys):
    from invgrad.replication import notebook

    monkeypatch.chdir(tmp_path)
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "Snakefile").write_text("")
    with pytest.raises(notebook.NoResults) as raised:
        notebook.results_or_committed("results/table1")
    assert raised.value._render_traceback_() == [str(raised.value)]
    assert str(raised.value).startswith("no results yet: run `make`") and "\n" not in str(raised.value)
    _fake_results(tmp_path / "figures" / "data" / "table1")
    assert notebook.results_or_committed("results/table1") == Path("figures/data/table1")
    _fake_results(tmp_path / "results" / "table1")
    assert notebook.results_or_committed("results/table1") == Path("results/table1")
    assert "reading results/table1" in capsys.readouterr().out


def test_notebook_in_a_clone_without_results_says_which_make_target(tmp_path):
    """Neither results/ nor figures/data/: the notebook stops at its setup cell with the one line, no traceback."""
    clone = _clone(tmp_path)
    cmd = [str(Path(sys.executable).parent / "jupyter"), "nbconvert", "--to", "notebook", "--execute"]
    done = subprocess.run(
        [*cmd, "--output-dir", str(tmp_path), "notebooks/table1.ipynb"],
        cwd=clone,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    assert "no results yet: run `make` (or `snakemake --cores all results/table1/table.csv`)" in done.stderr
    cell_error = done.stderr.split("no results yet", 1)[0].rsplit("------------------", 1)[-1]
    assert "Traceback" not in cell_error and "File " not in cell_error, done.stderr[-3000:]


def test_html_report_builds_from_the_committed_figures(tmp_path):
    """`make report` in a clone: the report and every figure with its caption, embedded in one HTML file."""
    from invgrad.replication import registry

    clone = _clone(tmp_path)
    done = subprocess.run(
        [sys.executable, "scripts/html_report.py", "--figures", "figures", "--out", str(tmp_path / "r.html")],
        cwd=clone,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text()
    assert "<table>" in page and "Replication report" in page
    stems = [s for e in registry.experiments() for s in e.figures]
    assert (
        page.count("data:image/png;base64,") == sum((clone / f"figures/{s}.png").is_file() for s in stems) > 0
    )
    assert registry.get("table1").caption[:60] in page.replace("&#x27;", "'")


def test_html_report_without_a_report_says_make(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/html_report.py"), "--figures", str(tmp_path), "--out", "x.html"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert (
        done.returncode == 1
        and done.stderr.strip() == f"error: no {tmp_path}/REPORT.md yet: run `make` to write it"
    )
