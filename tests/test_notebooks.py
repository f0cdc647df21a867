"""A notebook runs as a person would run it: `jupyter nbconvert --to notebook --execute` (no papermill), on a tiny
results table written here. The copy's parameters cell points at tmp_path; the notebook is otherwise as committed."""

import json
import os
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
