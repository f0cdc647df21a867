"""DVC owns data and victim checkpoints, Snakemake the rest (docs/DVC.md).

* dvc.yaml agrees with config/config.yaml (paths, params that decide which victims exist).
* Checkpoints carry their metadata and sha256; a mismatching file is refused (by the job that loads it, never at
  parse) with a message naming `dvc pull`.
* The round trip on a tiny config in a temporary git repository: `dvc repro` (Snakemake underneath) → `dvc push`
  to the default remote (under $HOME, here a temporary one) → `git clone` elsewhere → `dvc pull` → `snakemake -n`
  plans no training and no extraction; `dvc exp run -S` reruns the victims and `dvc params diff` shows the change;
  a missing or unreachable remote and a corrupted checkpoint fail with clear messages.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from invgrad.replication import plan
from invgrad.victim import training

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = shutil.which("dvc", path=str(BIN)) or shutil.which("dvc")
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")
CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def dvc_stages() -> dict:
    return load_yaml(ROOT / "dvc.yaml")["stages"]


def stage_params(stage: str) -> list[str]:
    return [key for entry in dvc_stages()[stage]["params"] for key in entry["config/config.yaml"]]


def get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


# ------------------------------------------------------------------------------------------------------------
# dvc.yaml ↔ config
# ------------------------------------------------------------------------------------------------------------
def test_dvc_config_is_offline_with_a_copy_cache_and_a_default_remote_outside_the_repo():
    text = (ROOT / ".dvc/config").read_text()
    assert "analytics = false" in text and "type = copy" in text
    url = next(line.split("=", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("url"))
    assert url.startswith(("~", "/", "../..")), url


def test_dvc_yaml_paths_follow_the_config():
    config = load_yaml(ROOT / "config/config.yaml")
    stages = dvc_stages()
    archive = config["data"]["archives"]["CIFAR10"]
    folder = config["data"]["train"]["CIFAR10"].split(":", 1)[1]
    decoded = stages["decoded_data"]
    # No stage needs the archive or the folder: the source resolves in Snakemake (archive, folder or download).
    assert not {archive, folder} & set(decoded["deps"]) and "training_data" not in stages
    assert decoded["always_changed"] is True and decoded["outs"] == [{"data/cache": {"persist": True}}]
    assert all(f"{plan.CACHE_DIR}/CIFAR10-{s}.pt" in decoded["cmd"] for s in ("train", "test"))
    victims = stages["victims"]
    # the victims depend on their planned specs, not on a hand-kept list of config keys
    assert plan.CACHE_DIR in victims["deps"] and "results/victim_plan.json" in victims["deps"]
    assert "params" not in victims and stages["victim_plan"]["outs"] == ["results/victim_plan.json"]
    assert stages["victim_plan"]["always_changed"] is True
    assert {Path(p).parent.parent.as_posix() for p in plan.victims(config)} == {"results/victims"}
    assert victims["outs"] == ["results/victims"]
    for key in stage_params("decoded_data"):  # every listed param exists in the config
        get(config, key)


def test_victim_plan_holds_exactly_the_planned_victim_specs(tmp_path):
    """What DVC's `victims` stage hashes: every victim's training spec, and nothing an attack setting changes."""
    config = load_yaml(ROOT / "config/config.yaml")
    specs = plan.victims(config)
    out = tmp_path / "victim_plan.json"
    command = [
        sys.executable,
        str(ROOT / "scripts/victim_plan.py"),
        "--spec",
        json.dumps(specs),
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert json.loads(out.read_text()) == specs
    edited = copy.deepcopy(config)
    edited["experiments"]["table1"]["methods"]["ours"]["max_iterations"] += 1
    assert plan.victims(edited) == specs
    edited["training"]["epochs"] += 1
    assert plan.victims(edited) != specs


# ------------------------------------------------------------------------------------------------------------
# Checkpoint metadata and hashes
# ------------------------------------------------------------------------------------------------------------
def test_checkpoint_records_its_sha256_and_refuses_a_corrupted_file(tmp_path, lenet):
    path = tmp_path / "victims/CIFAR10/LeNetZhu_e1.pt"
    training.save_checkpoint(path, lenet, {"architecture": "LeNetZhu", "epochs": 1, "seed": 0})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sha256"] == training.file_sha256(path) == training.verify_checkpoint(path)
    state, loaded = training.load_checkpoint(path)
    assert loaded["sha256"] == meta["sha256"] and loaded["checkpoint"] == str(path)
    assert state.keys() == lenet.state_dict().keys()

    with open(path, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(training.CheckpointMismatchError, match=r"dvc pull .*victims/CIFAR10.*delete"):
        training.load_checkpoint(path)


def test_checkpoint_without_recorded_hash_is_refused(tmp_path, lenet):
    path = tmp_path / "old.pt"
    training.save_checkpoint(path, lenet, {"architecture": "LeNetZhu"})
    path.with_suffix(".json").write_text(json.dumps({"architecture": "LeNetZhu"}))  # written before hashes
    with pytest.raises(training.CheckpointMismatchError, match="records no readable sha256.*--forcerun"):
        training.load_checkpoint(path)


def test_training_data_hash_depends_on_content_not_location(tmp_path):
    from invgrad import data

    def folder(base: Path, seed: int) -> Path:
        make_image_folder(base, per_class=1, test_per_class=0, seed=seed)
        return base / "cifar10-jpeg"

    def digest(path: Path) -> str:
        return training.dataset_sha256(
            data.load_dataset(f"image-folder:{path}", split="train", stats="CIFAR10")
        )

    a, b, c = folder(tmp_path / "a", 0), folder(tmp_path / "b", 0), folder(tmp_path / "c", 1)
    assert digest(a) == digest(b) != digest(c)


# ------------------------------------------------------------------------------------------------------------
# Round trip
# ------------------------------------------------------------------------------------------------------------
def make_image_folder(base: Path, per_class: int, test_per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for name in CLASSES:
            folder = base / "cifar10-jpeg" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)


def tiny_config() -> dict:
    """config/test.yaml with one trained LeNet, one cheap attack method and every other experiment off."""
    config = load_yaml(ROOT / "config/test.yaml")
    config["training"].update(epochs=1, max_images=32, eval_images=10, batch_size=16)
    for name, block in config["experiments"].items():
        block["enabled"] = name == "table1"
    table1 = config["experiments"]["table1"]
    table1.update(models=["LeNetZhu"], weights=["trained"], images=1)
    table1["methods"] = {"ours": {"max_iterations": 2, "restarts": 1, "total_variation": 0.01, "lr": 0.1}}
    return config


def copy_project(target: Path, config: dict) -> None:
    """The project's workflow, code and DVC files under ``target``, with ``config`` as config/config.yaml."""
    for name in ("workflow", "scripts", "notebooks", "config", "src"):
        shutil.copytree(
            ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore"):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, target / name)
    (target / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run(cwd: Path, *args: str, home: Path, check: bool = True, timeout: int = 120):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home)}
    env.update(
        DVC_NO_ANALYTICS="1",
        MPLCONFIGDIR=str(cwd / ".cache/matplotlib"),
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A tiny project as a git + DVC repo: data and victims produced by `dvc repro`, committed and pushed."""
    if DVC is None or SNAKEMAKE is None:
        pytest.skip("dvc/snakemake not installed (pip install -e .[workflow])")
    base = tmp_path_factory.mktemp("dvc")
    home, origin = base / "home", base / "origin"
    home.mkdir()
    copy_project(origin, tiny_config())
    make_image_folder(base / "images", per_class=4, test_per_class=1)
    (origin / "data").mkdir()
    with tarfile.open(origin / "data/cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(base / "images/cifar10-jpeg", arcname="cifar10-jpeg")

    run(origin, "git", "init", "-q", home=home)
    run(origin, DVC, "add", "-q", "data/cifar10-jpeg.tar.gz", home=home)
    run(origin, DVC, "repro", home=home, timeout=300)
    run(origin, "git", "add", "-A", home=home)
    run(origin, "git", "commit", "-qm", "tiny project", home=home)
    run(origin, DVC, "push", home=home)
    return {"base": base, "home": home, "origin": origin}


def clone(pushed, name: str) -> Path:
    target = pushed["base"] / name
    run(pushed["base"], "git", "clone", "-q", str(pushed["origin"]), str(target), home=pushed["home"])
    return target


CHECKPOINT = "results/victims/CIFAR10/LeNetZhu_e1.pt"


def planned_jobs(dry_run: str) -> dict[str, int]:
    """{rule: count} from the first 'Job stats' table of `snakemake -n` ({} when nothing is to be done)."""
    if "Job stats:" not in dry_run:
        return {}
    jobs = {}
    for line in dry_run.split("Job stats:", 1)[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def pulled(pushed) -> Path:
    """A fresh clone elsewhere, after `dvc pull` from the default remote."""
    copy_ = clone(pushed, "pulled")
    assert not (copy_ / CHECKPOINT).exists()
    run(copy_, DVC, "pull", home=pushed["home"])
    return copy_


@pytest.mark.slow
def test_push_clone_pull_then_snakemake_plans_nothing_upstream_of_the_attacks(pushed, pulled):
    origin = pushed["origin"]
    meta = json.loads((origin / CHECKPOINT).with_suffix(".json").read_text())
    assert meta["status"] == "ok" and meta["architecture"] == "LeNetZhu" and meta["epochs"] == 1
    assert meta["seed"] == 0 and 0 <= meta["val_accuracy"] <= 1 and len(meta["training_data_sha256"]) == 64
    assert meta["sha256"] == training.file_sha256(origin / CHECKPOINT)

    assert training.verify_checkpoint(pulled / CHECKPOINT) == meta["sha256"]
    status = run(pulled, DVC, "status", home=pushed["home"]).stdout
    assert "always changed" in status and "modified" not in status and "changed deps" not in status, status

    plan = planned_jobs(run(pulled, SNAKEMAKE, "-n", home=pushed["home"]).stdout)
    assert plan.get("attack") == 1  # results are not shared: the attacks run ...
    assert "train_victim" not in plan and "extract_training_data" not in plan  # ... on the pulled victims
    assert "decode_split" not in plan


@pytest.mark.slow
def test_repro_without_training_data_says_so_then_trains_once_it_is_supplied(tmp_path):
    """No archive, no folder, no download: `dvc repro` succeeds and the victim records why it was not trained.
    Supplying the archive later is enough: the next `dvc repro` decodes it and trains (the 'not run' split is
    retried, not kept)."""
    if DVC is None or SNAKEMAKE is None:
        pytest.skip("dvc/snakemake not installed (pip install -e .[workflow])")
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    config = tiny_config()
    config["data"]["download"] = False  # no network in tests: the download path is tests/test_download.py's
    copy_project(project, config)
    run(project, "git", "init", "-q", home=home)

    run(project, DVC, "repro", home=home, timeout=300)
    meta = json.loads((project / CHECKPOINT).with_suffix(".json").read_text())
    assert meta["status"] == "not run" and "needs the CIFAR10 training split" in meta["reason"]
    assert "CIFAR10_ARCHIVE" in meta["reason"]  # the message names how to supply it

    make_image_folder(tmp_path / "images", per_class=4, test_per_class=1)
    (project / "data").mkdir(exist_ok=True)
    with tarfile.open(project / config["data"]["archives"]["CIFAR10"], "w:gz") as tar:
        tar.add(tmp_path / "images/cifar10-jpeg", arcname="cifar10-jpeg")
    run(project, DVC, "repro", home=home, timeout=300)
    meta = json.loads((project / CHECKPOINT).with_suffix(".json").read_text())
    assert (
        meta["status"] == "ok" and meta["training_images"] == 32 and len(meta["training_data_sha256"]) == 64
    )
    assert training.verify_checkpoint(project / CHECKPOINT) == meta["sha256"]


@pytest.mark.slow
def test_a_corrupted_checkpoint_is_refused_and_dvc_restores_it(pushed, pulled):
    home, checkpoint = pushed["home"], pulled / CHECKPOINT
    good = checkpoint.read_bytes()
    try:
        with open(checkpoint, "r+b") as handle:
            handle.seek(100)
            handle.write(b"garbage")
        # Planning reads no checkpoint (a lean parse); the job that loads it verifies it and refuses to attack.
        assert run(pulled, SNAKEMAKE, "-n", home=home).returncode == 0
        cell = "results/table1/LeNetZhu_trained_ours"
        refused = run(pulled, SNAKEMAKE, "--cores", "1", f"{cell}/images.pt", home=home, check=False)
        assert refused.returncode != 0 and "train_victim" not in refused.stdout  # never retrained over
        message = (pulled / "logs/table1/LeNetZhu_trained_ours.log").read_text()
        assert "is corrupted or was replaced" in message and "dvc pull results/victims" in message
        assert not (pulled / cell / "0.json").exists()
        assert "modified" in run(pulled, DVC, "status", home=home).stdout

        run(pulled, DVC, "checkout", "--force", "results/victims", home=home)
        assert checkpoint.read_bytes() == good
        training.verify_checkpoint(checkpoint)
    finally:
        checkpoint.write_bytes(good)


@pytest.mark.slow
def test_pull_without_a_reachable_remote_fails_clearly(pushed):
    copy_ = clone(pushed, "noremote")
    home = pushed["home"]
    missing = run(copy_, DVC, "pull", "-r", "nowhere", home=home, check=False)
    assert missing.returncode != 0 and "nowhere" in missing.stderr
    run(copy_, DVC, "remote", "modify", "--local", "machine", "url", str(pushed["base"] / "gone"), home=home)
    unreachable = run(copy_, DVC, "pull", home=home, check=False)
    assert unreachable.returncode != 0
    assert "failed to pull" in unreachable.stderr.lower() or "missing" in unreachable.stderr.lower()
    assert not (copy_ / CHECKPOINT).exists()


@pytest.mark.slow
def test_a_param_change_is_an_experiment(pushed):
    copy_, home = pushed["origin"], pushed["home"]  # clones start from the commit, not from this workspace
    config_file = copy_ / "config/config.yaml"
    original = config_file.read_text()
    config = yaml.safe_load(original)
    config["experiments"]["table1"]["methods"]["ours"]["max_iterations"] = (
        3  # an attack setting: no retraining
    )
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        out = run(copy_, DVC, "repro", home=home, timeout=300).stdout
        assert "Stage 'victims' didn't change, skipping" in out, out
    finally:
        config_file.write_text(original)
    run(copy_, DVC, "exp", "run", "-S", "config/config.yaml:training.epochs=2", home=home, timeout=300)
    assert (copy_ / "results/victims/CIFAR10/LeNetZhu_e2.pt").exists()
    assert not (copy_ / CHECKPOINT).exists()  # DVC cleared the stage's outputs before rerunning it
    meta = json.loads((copy_ / "results/victims/CIFAR10/LeNetZhu_e2.json").read_text())
    assert meta["epochs"] == 2
    diff = run(copy_, DVC, "params", "diff", "--json", home=home).stdout
    change = json.loads(diff)["config/config.yaml"]["training.epochs"]
    assert (change["old"], change["new"]) == (1, 2)
    assert (
        torch.load(copy_ / "results/victims/CIFAR10/LeNetZhu_e2.pt", weights_only=True)["meta"]["epochs"] == 2
    )
