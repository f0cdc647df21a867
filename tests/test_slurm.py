"""workflow/profiles/slurm on a real, private, single-node SLURM cluster (tests/slurm_cluster.py).

One module-scoped cluster on 127.0.0.1 (installed with apt when missing and running as root), one tiny target set
(two table1 cells at 1 image each, plus the labels table), and a local run of the same targets for reference:

1. the two attack cells go through ``sbatch`` as ONE group job (``group-components``) asking for ``--gpus`` of the
   profile's GPU model, and their outputs equal the local run's;
2. a profile naming a partition that does not exist: sbatch's message is in Snakemake's output, the run stops
   with a non-zero status and finished outputs are untouched;
3. the fixed profile resumes: only the missing job is submitted, the finished ones are not redone.

The profile is the shipped one with its documented placeholders edited, as a user would (partition, account,
GPU model, memory), plus test-only polling settings (no accounting database here: ``squeue`` for status).
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
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import GPU_TYPE, PARTITION, SlurmCluster, ensure_slurm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")
try:
    import snakemake_executor_plugin_slurm  # noqa: F401

    PLUGIN = True
except ImportError:
    PLUGIN = False

pytestmark = [
    pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed (pip install -e .[workflow])"),
    pytest.mark.skipif(
        not PLUGIN,
        reason="snakemake-executor-plugin-slurm is not installed (pip install -e .[workflow])",
    ),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the test cluster needs Linux"),
]

CELLS = ("LeNetZhu_untrained_ours", "LeNetZhu_untrained_zhu")
# What the attack rule declares (images.pt: the cell is done), and all a cell writes (its per-image JSONs too).
ATTACKS = [f"results/table1/{cell}/images.pt" for cell in CELLS]
CELL_RESULTS = ATTACKS + [f"results/table1/{cell}/0.json" for cell in CELLS]
LABELS = ["results/labels/table.csv", "results/labels/trials.csv"]
TINY = {"experiments": {"table1": {"images": 1}}}  # on top of config/test.yaml
CONFIG = ["--configfile", "config/test.yaml", "config/tiny.yaml"]
RUN_TIMEOUT = 150  # Snakemake ignores SIGTERM while jobs run; subprocess.run kills it (SIGKILL) past this


def project_copy(tmp: Path) -> Path:
    for name in ("workflow", "scripts", "notebooks", "config"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
    (tmp / "config" / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return tmp


def edit_profile(project: Path, partition: str = PARTITION) -> Path:
    """The shipped profile with its EDIT placeholders set for the test cluster, as docs/CLUSTER.md tells users."""
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = partition
    del profile["default-resources"]["slurm_account"]  # no accounts on this cluster
    profile["default-resources"]["mem_mb"] = 300
    for rule in profile["set-resources"].values():
        rule.update(gpu_model=GPU_TYPE, mem_mb=300)
    # config/test.yaml runs on the CPU (gpu=0); ask for the GPU anyway so the gpu -> --gpus mapping is exercised.
    profile["set-resources"]["attack"]["gpu"] = 1
    # Test-only: no accounting database (squeue for status), poll quickly, keep the SLURM logs as evidence.
    profile.update(
        {
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 1,
            "slurm-keep-successful-logs": True,
            "latency-wait": 5,
        }
    )
    folder = project / "workflow/profiles/slurm"
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def start_snakemake(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**(env or os.environ), "PATH": f"{BIN}{os.pathsep}{(env or os.environ).get('PATH', '')}"}
    env["MPLCONFIGDIR"] = str(cwd / ".cache" / "matplotlib")
    return subprocess.Popen(
        [SNAKEMAKE, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """Exit status and output; past RUN_TIMEOUT the run is killed (Snakemake ignores SIGTERM while jobs run)."""
    try:
        out, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"snakemake ran past {RUN_TIMEOUT} s:\n{out[-4000:]}")
    return process.returncode, out


def snakemake(cwd: Path, *args: str, env: dict | None = None) -> tuple[int, str]:
    return finish(start_snakemake(cwd, *args, env=env))


def submissions(cluster: SlurmCluster) -> list[str]:
    """Job ids slurmctld accepted from sbatch, from its own log (no accounting database here)."""
    return re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", cluster.ctld_log())


def same_results(a: Path, b: Path, paths: list[str]) -> None:
    for path in paths:
        if path.endswith(".json"):
            left, right = (json.loads((root / path).read_text()) for root in (a, b))
            left.pop("seconds"), right.pop("seconds")
            assert left == right, path
        elif path.endswith(".pt"):
            left, right = (torch.load(root / path, weights_only=True) for root in (a, b))
            assert left["status"] == right["status"], path
            assert left["targets"].keys() == right["targets"].keys(), path
            for name in left["targets"]:
                torch.testing.assert_close(left["targets"][name], right["targets"][name], rtol=0, atol=0)
        else:
            assert (a / path).read_text() == (b / path).read_text(), path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = ensure_slurm()
    if reason:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), memory_mb=2000) as running:
        yield running


@pytest.mark.slow
def test_profile_through_sbatch_groups_bad_partition_and_resume(cluster, tmp_path):
    # The local reference run goes alongside step 1 (whose SLURM job mostly waits on status polls).
    local = project_copy(tmp_path / "local")
    local_run = start_snakemake(local, *ATTACKS, *LABELS, "--cores", "2", *CONFIG)
    try:
        through_slurm(cluster, tmp_path / "cluster", local, local_run)
    finally:
        if local_run.poll() is None:
            local_run.kill()
            local_run.communicate()


def through_slurm(cluster: SlurmCluster, project: Path, local: Path, local_run: subprocess.Popen) -> None:
    project = project_copy(project)
    profile = edit_profile(project)
    run = ["--profile", str(profile), *CONFIG]

    # 1. Two attack cells: one group job, one sbatch, one allocation, the profile's GPU model; results as local.
    returncode, log = snakemake(project, *ATTACKS, *run, env=cluster.env)
    assert returncode == 0, log[-4000:] + cluster.logs()
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert len(submitted) == 1, log[-4000:]
    assert "Group job attacks" in log
    assert submissions(cluster) == submitted
    job = subprocess.run(
        ["scontrol", "-o", "show", "job", submitted[0]], env=cluster.env, capture_output=True, text=True
    ).stdout
    assert f"gpu:{GPU_TYPE}:1" in job and f"Partition={PARTITION}" in job, job
    assert list((project / ".snakemake/slurm_logs").glob("group_attacks*/**/*.log"))
    returncode, local_log = finish(local_run)
    assert returncode == 0, local_log[-4000:]
    same_results(project, local, CELL_RESULTS)
    finished = {path: (project / path).stat().st_mtime_ns for path in CELL_RESULTS}

    # 2. A partition that does not exist: SLURM's message surfaces, the run stops, finished outputs stay.
    edit_profile(project, partition="nosuchpartition")
    returncode, log = snakemake(project, *ATTACKS, *LABELS, *run, env=cluster.env)
    assert returncode != 0, log[-4000:]
    assert "Invalid partition name specified" in log, log[-4000:]
    assert "SLURM sbatch failed" in log
    assert not (project / LABELS[0]).exists()
    assert {path: (project / path).stat().st_mtime_ns for path in CELL_RESULTS} == finished

    # 3. Fixed profile, same command: only the labels job is submitted; the attacks are not redone.
    edit_profile(project)
    returncode, log = snakemake(project, *ATTACKS, *LABELS, *run, env=cluster.env)
    assert returncode == 0, log[-4000:] + cluster.logs()
    resubmitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert len(resubmitted) == 1 and "rule compute_table" in log and "rule attack" not in log, log[-4000:]
    assert submissions(cluster) == submitted + resubmitted
    assert {path: (project / path).stat().st_mtime_ns for path in CELL_RESULTS} == finished
    same_results(project, local, CELL_RESULTS + LABELS)
