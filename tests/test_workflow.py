"""The Snakemake DAG: schema errors at start, dry runs of both configs, the whole DAG on config/test.yaml, and a
targeted rerun that touches only its own job.

The whole-DAG test (``test_whole_dag_on_test_config``) runs every experiment end to end on the tiny test config
(a few minutes on 2 cores); it is part of the normal suite on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")
pytestmark = pytest.mark.skipif(
    SNAKEMAKE is None, reason="snakemake is not installed (pip install -e .[workflow])"
)
EXPERIMENTS = ("table1", "fedavg", "imagenet", "batch", "architecture", "defenses", "analytic", "labels")


def project_copy(tmp: Path) -> Path:
    for name in ("workflow", "scripts", "notebooks", "config"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
    return tmp


def snakemake(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MPLCONFIGDIR"] = str(cwd / ".cache" / "matplotlib")
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# The CIFAR-10 training split as image folders, named by `make test CIFAR10_ARCHIVE=<path>` (.ci/run does): with it
# the trained cells really train and attack a victim; without it (config/test.yaml never downloads) they must be
# reported as "not run".
TRAINING_ARCHIVE = Path(os.environ["CIFAR10_ARCHIVE"]) if os.environ.get("CIFAR10_ARCHIVE") else None


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = project_copy(tmp_path_factory.mktemp("project"))
    if TRAINING_ARCHIVE is not None:  # a named archive that is missing fails here, never silently "not run"
        (project / "data").mkdir(exist_ok=True)
        shutil.copy(TRAINING_ARCHIVE, project / "data" / "cifar10-jpeg.tar.gz")
    return project


@pytest.mark.slow
@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/test.yaml"])
def test_dry_run_lists_every_experiment(project, configfile):
    result = snakemake(project, "-n", "--configfile", configfile)
    assert result.returncode == 0, result.stderr + result.stdout
    for experiment in EXPERIMENTS:
        assert f"results/{experiment}/{experiment}.ipynb" in result.stdout  # its figure job (the notebook)


@pytest.mark.slow
def test_dry_run_of_the_paper_config(tmp_path):
    project = project_copy(tmp_path)
    (project / "data/raw/imagenet/val/n01440764").mkdir(
        parents=True
    )  # the paper config needs an ImageNet folder
    result = snakemake(project, "-n", "--configfile", "config/paper.yaml")
    assert result.returncode == 0, result.stderr + result.stdout
    for experiment in EXPERIMENTS:
        assert f"results/{experiment}/{experiment}.ipynb" in result.stdout  # its figure job (the notebook)
    assert "results/table1/ResNet20-4_trained_zhu/images.pt" in result.stdout
    assert "results/table1/ResNet20-4_trained_zhu/99.json" in result.stdout  # the table job reads every image


@pytest.mark.slow
def test_paper_config_plans_without_imagenet(tmp_path):
    """No ImageNet folder: the rest of the paper config still plans; its ImageNet cells will say "not run"."""
    project = project_copy(tmp_path)
    result = snakemake(project, "-n", "--configfile", "config/paper.yaml")
    assert result.returncode == 0, result.stderr + result.stdout
    assert (
        "results/imagenet/torchvision-resnet18/images.pt" in result.stdout
        and "results/table1/LeNetZhu_trained_zhu_halfce/99.json" in result.stdout
    )


@pytest.mark.slow
def test_replicate_config_merges_over_the_default(tmp_path):
    """config/replicate.yaml over config/config.yaml: 100 images per Table-1 seed job, the 0.5·CE DLG cells, 10
    FedAvg users and 3 batches planned; what it does not name (models, budgets, seeds) stays the default's."""
    project = project_copy(tmp_path)
    result = snakemake(project, "-n", "--configfile", "config/config.yaml", "config/replicate.yaml")
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "results/table1/LeNetZhu_trained_zhu_halfce/seed2/99.json" in out
    assert "results/table1/LeNetZhu_untrained_ours/seed0/99.json" in out
    assert "results/table1/ResNet20-4" not in out and "results/victims/CIFAR10/LeNetZhu_e40_s2.pt" in out


@pytest.mark.slow
def test_offline_replicate_config_reads_the_unpacked_archive_after_extraction(tmp_path):
    """config/replicate-offline.yaml, merged last: CIFAR-10 cells read first-per-class from the folder the run
    unpacks, so every such cell (untrained ones too, which need no victim) waits for the extraction."""
    project = project_copy(tmp_path)
    (project / "data").mkdir()
    (project / "data" / "cifar10-jpeg.tar.gz").write_bytes(b"")  # only its presence is planned on
    files = ("config/config.yaml", "config/replicate.yaml", "config/replicate-offline.yaml")
    result = snakemake(project, "-n", "--configfile", *files)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = [job.split("\n\n")[0] for job in result.stdout.split("rule attack:")[1:]]  # inputs, outputs, shell
    untrained = [j for j in jobs if "output: results/table1/LeNetZhu_untrained_ours/seed0/images.pt" in j]
    assert len(untrained) == 1 and "input: data/raw/.CIFAR10.extracted" in untrained[0]
    assert (
        '"val_source": "first-per-class:data/raw/cifar10-jpeg"' in untrained[0] and "99.json" in result.stdout
    )
    batch = [j for j in jobs if "output: results/batch/" in j]
    assert batch and all(".extracted" not in j and '"val_source": "embedded-CIFAR100"' in j for j in batch)


def test_imagenet_cell_without_folder_is_not_run(tmp_path):
    from invgrad.replication import cells

    spec = {
        "experiment": "imagenet",
        "model": "efficientnet-lite0",
        "dataset": "ImageNet",
        "weights": "pretrained",
        "victim": None,
        "val_source": f"image-folder:{tmp_path}/missing",
        "data_root": str(tmp_path),
        "selection": {"rule": "list", "indices": [0], "per_user": 1, "users": 1, "names": ["0"]},
        "seed": 0,
        "device": "cpu",
    }
    records = cells.run_cell(spec, "efficientnet-lite0", tmp_path / "out", log=lambda _: None)
    assert records[0]["status"] == "not run"
    assert "needs an ImageNet validation folder" in records[0]["reason"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("bogus_key: 1\n", "Additional properties are not allowed ('bogus_key' was unexpected)"),
        ("threads: 0\n", "0 is less than the minimum of 1"),
    ],
)
def test_bad_config_fails_at_start_with_the_schema_message(tmp_path, edit, message):
    project = project_copy(tmp_path)
    bad = project / "config/bad.yaml"
    bad.write_text(edit)
    result = snakemake(project, "-n", "--configfile", "config/test.yaml", "config/bad.yaml")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (project / "results").exists()


@pytest.mark.slow
def test_unknown_model_fails_at_start(tmp_path):
    project = project_copy(tmp_path)
    (project / "config/bad.yaml").write_text("experiments:\n  labels:\n    models: [NoSuchNet]\n")
    result = snakemake(project, "-n", "--configfile", "config/test.yaml", "config/bad.yaml")
    assert result.returncode != 0
    assert "unknown model 'NoSuchNet'" in result.stderr + result.stdout


def test_a_figure_is_a_target_of_its_own_rule(project):
    result = snakemake(project, "-n", "figures/table1_grid.png", "--configfile", "config/test.yaml")
    assert result.returncode == 0, result.stderr + result.stdout
    assert re.search(r"^figure_table1\s+1$", result.stdout, re.M), result.stdout
    assert "figure_fedavg" not in result.stdout and "figures/table1_psnr.png" in result.stdout


def test_benchmarks_go_under_results(project):
    result = snakemake(project, "-n", "--configfile", "config/test.yaml")
    assert "benchmark: results/benchmarks/table1/" in result.stdout and "benchmarks/out" not in result.stdout


def test_a_config_without_a_block_runs_without_that_experiment(tmp_path):
    import yaml

    project = project_copy(tmp_path)
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    config["experiments"] = {"table1": config["experiments"]["table1"]}
    (project / "config/config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(project, "-n")
    assert result.returncode == 0, result.stderr + result.stdout
    figure_jobs = set(re.findall(r"^(figure_\w+)\s+1$", result.stdout, re.M))
    assert figure_jobs == {"figure_table1", "figure_data"}, result.stdout  # figure_data: table1's only
    assert "results/fedavg" not in result.stdout and "figures/data/table1" in result.stdout


@pytest.mark.slow
def test_a_split_without_data_is_resolved_again_and_nothing_is_deleted_at_parse(tmp_path):
    """config/test.yaml has no CIFAR-10 training data: the decoded split says 'not run'; the next run decodes it
    again, through the changed `retry` param; a dry run plans nothing and parsing leaves the file in place."""
    project = project_copy(tmp_path)
    split = "data/cache/CIFAR10-train.pt"
    first = snakemake(project, "--cores", "1", split, "--configfile", "config/test.yaml", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((project / "data/cache/CIFAR10-train.json").read_text())["status"] == "not run"
    assert "Nothing to be done" in snakemake(project, "-n", split, "--configfile", "config/test.yaml").stdout
    assert (project / split).is_file()  # a parse (the dry run's) deletes nothing
    again = snakemake(project, "--cores", "1", split, "--configfile", "config/test.yaml", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"^decode_split\s+1$", again.stdout + again.stderr, re.M), again.stderr[-3000:]
    assert "had no training data last time; resolving its source again" in again.stderr
    assert (project / split).is_file() and (project / "data/cache/CIFAR10-train.json").is_file()


@pytest.mark.slow
@pytest.mark.workflow
def test_whole_dag_on_test_config(project):
    """Whole DAG (every experiment, notebooks, report) on config/test.yaml; then a targeted rerun of one cell."""
    result = snakemake(project, "--cores", "2", "--configfile", "config/test.yaml", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = (project / "figures/REPORT.md").read_text()
    assert "| claim (arXiv 2003.14053) |" in report and "Runtime per stage" in report
    for experiment in EXPERIMENTS:
        assert (project / f"results/{experiment}/table.csv").exists()
        assert (project / f"results/{experiment}/{experiment}.ipynb").exists()
    assert (project / "figures/table1_psnr.png").exists() and (project / "figures/table1_psnr.pdf").exists()
    untrained = json.loads((project / "results/table1/LeNetZhu_untrained_ours/0.json").read_text())
    assert [it for it, _ in untrained["snapshots"]][-1] == untrained["spec"]["attack"]["max_iterations"]
    assert untrained["double_budget_run"]["iterations"] == 2 * untrained["spec"]["attack"]["max_iterations"]
    assert (project / "figures/claims.csv").exists() and (project / "figures/table1_convergence.png").exists()
    trained = json.loads((project / "results/table1/LeNetZhu_trained_ours/0.json").read_text())
    if TRAINING_ARCHIVE is not None:  # the trained path really ran: a checkpoint was trained and attacked
        assert trained["status"] in ("ok", "failed"), trained
        assert list((project / "results/victims").rglob("LeNetZhu*.pt"))
    else:
        assert trained["status"] == "not run" and "not run" in report

    # Nothing to do on a second call.
    again = snakemake(project, "-n", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr

    # A per-image record deleted by hand makes its cell run again, and only once.
    record = project / "results/table1/LeNetZhu_untrained_ours/0.json"
    record.unlink()
    cell = "results/table1/LeNetZhu_untrained_ours/images.pt"
    plan = snakemake(project, "-n", "--configfile", "config/test.yaml", "--", cell)
    assert re.search(r"^attack\s+1$", plan.stdout, re.M) and "0.json missing" in plan.stderr, plan.stdout
    rebuilt = snakemake(project, "--cores", "2", "--configfile", "config/test.yaml", "--", cell)
    assert rebuilt.returncode == 0 and record.is_file(), rebuilt.stderr[-3000:]
    again = snakemake(project, "-n", "--configfile", "config/test.yaml", "--", cell)
    assert "Nothing to be done" in again.stdout + again.stderr

    # A targeted rerun of one cell runs exactly that attack job (and what depends on it), nothing else.
    target = "results/table1/LeNetZhu_untrained_ours/images.pt"
    plan = snakemake(project, "-n", "--configfile", "config/test.yaml", "--forcerun", target, "--", target)
    text = plan.stdout
    assert plan.returncode == 0, plan.stderr
    assert re.search(r"^attack\s+1$", text, re.M) and "train_victim" not in text, text  # one attack job


@pytest.mark.slow
@pytest.mark.workflow
def test_every_notebook_runs_from_the_figure_data_alone(project, tmp_path):
    """Explorable from a fresh clone: without results/, each experiment's notebook executes from the
    figures/data/<experiment> the pipeline writes on config/test.yaml (here the whole-DAG test's copy, so nothing is
    rebuilt when that test ran first; run alone, this builds the figure data itself)."""
    from test_notebooks import _clone, _env

    from invgrad.replication import registry

    targets = [f"figures/data/{name}" for name in registry.BUILTIN]
    run = snakemake(project, "--cores", "2", *targets, "--configfile", "config/test.yaml", timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    clone = _clone(tmp_path)
    for name in registry.BUILTIN:
        shutil.copytree(project / "figures/data" / name, clone / "figures/data" / name)
    assert not (clone / "results").exists()
    for name in registry.BUILTIN:
        done = subprocess.run(
            [str(BIN / "jupyter"), "nbconvert", "--to", "notebook", "--execute"]
            + ["--output-dir", str(tmp_path / "executed"), f"notebooks/{name}.ipynb"],
            cwd=clone,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
        executed = (tmp_path / "executed" / f"{name}.ipynb").read_text()
        assert f"reading figures/data/{name}" in executed, name


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_machine_lacks_stops_a_run_before_any_job(tmp_path):
    """`device: cuda:0` on a CPU machine: a real (local) run stops at start with one line, and no job runs; a dry
    run still plans (the jobs may run elsewhere)."""
    project = project_copy(tmp_path)
    config = project / "config/config.yaml"
    config.write_text(config.read_text().replace("device: cpu", "device: cuda:0", 1))
    result = snakemake(project, "--cores", "1", timeout=300)
    assert result.returncode != 0
    assert "error: config device: device cuda:0: CUDA is not available" in result.stderr + result.stdout
    assert not (project / "results").exists() and not (project / "data/cache").exists()
    assert snakemake(project, "-n").returncode == 0
