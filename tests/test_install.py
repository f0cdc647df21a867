"""Installing invgrad keeps a user's compatible torch, refuses a too-old one, and every install path goes through
the one lock file (constraints.txt). Offline: pip runs with --no-index against what is installed, in seconds."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def _pip(*args, cwd):
    """pip of the project's venv, offline, without this machine's pip.conf (its own torch cap would interfere)."""
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    cmd = [sys.executable, "-m", "pip", *args, "--dry-run", "--no-index", "--no-build-isolation"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _fake_dist(site: Path, name: str, version: str, requires: str = "") -> None:
    """Metadata only: pip's resolver sees it as installed; nothing is importable."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    extra = f"Requires-Dist: {requires}\n" if requires else ""
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{extra}")
    (info / "INSTALLER").write_text("pip\n")


@pytest.mark.slow
def test_a_users_newer_torch_is_kept(tmp_path):
    """A throwaway venv that sees the project's packages, with a (fake) torch 2.15.0 / torchvision 0.29.2 of its
    own: `pip install --dry-run --report` of invgrad installs invgrad alone."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "zz_project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _fake_dist(site, "torch", "2.15.0")
    _fake_dist(site, "torchvision", "0.29.2", "torch==2.15.0")
    report = tmp_path / "report.json"
    done = _pip(
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "--quiet",
        "--report",
        str(report),
        str(ROOT),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    installs = {
        i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    assert installs == {"invgrad": "0.1.0"}


@pytest.mark.slow
def test_a_too_old_torch_fails_at_install_time_with_pips_message(tmp_path):
    info = "torch-1.13.0.dist-info"
    with zipfile.ZipFile(tmp_path / "torch-1.13.0-py3-none-any.whl", "w") as wheel:  # a fake old torch wheel
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 1.13.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    done = _pip("install", "--find-links", str(tmp_path), str(ROOT), "torch==1.13.0", cwd=tmp_path)
    assert done.returncode != 0
    assert "The user requested torch==1.13.0" in done.stdout + done.stderr
    assert re.search(r"invgrad 0\.1\.0 depends on torch>=2\.14\.1", done.stdout + done.stderr)


def test_the_library_declares_ranges_and_the_lock_pins_everything():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    assert not [r for r in declared if "==" in r], "exact pins belong in constraints.txt"
    assert "torch>=2.14.1" in declared and "torchvision>=0.29.1" in declared
    lock = LOCK.read_text()
    assert (
        "uv pip compile pyproject.toml constraints.in" in lock.splitlines()[1]
    )  # the command, in the header
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, flags=re.M))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert {"jupyterlab", "nbconvert", "dp-accounting", "snakemake"} <= set(pins)


def test_every_install_path_goes_through_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert (
        re.search(r"pip install --quiet -c \$\(LOCK\) -e", makefile) and "LOCK := constraints.txt" in makefile
    )
    assert re.search(r"^lock: .*\n\t\$\(BIN\)/uv pip compile", makefile, flags=re.M)
    for env_file in (ROOT / "environment.yml", ROOT / "workflow" / "envs" / "invgrad.yaml"):
        pip_section = next(
            d["pip"] for d in yaml.safe_load(env_file.read_text())["dependencies"] if isinstance(d, dict)
        )
        constraint = next(line for line in pip_section if line.startswith("-c "))
        assert (env_file.parent / constraint[3:]).resolve() == LOCK
        assert all(line.startswith(("-c ", "-e ")) for line in pip_section), pip_section  # nothing hand-kept
