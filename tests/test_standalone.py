"""The library works outside a checkout and changes nothing process-wide: roots and caches are arguments (or read
from the environment), never derived from where the package lies and never written into ``os.environ``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

IMPORT_AND_BUILD = """
import json, os, socket, sys
import torch, torchvision  # torchvision's import sets TORCHINDUCTOR_CACHE_DIR itself: not ours to judge
def offline(url, *args, **kwargs):
    raise OSError("no network in this test")
torch.hub.download_url_to_file = offline
before = (dict(os.environ), socket.getdefaulttimeout())
import invgrad
from invgrad import data, metrics, user, attack, victim
from invgrad.replication import cells, notebook
from invgrad.victim.models import build_model
for name in ("LeNetZhu", "ConvNet8", "ResNet20", "torchvision-resnet18"):
    build_model(name, seed=0)
build_model("efficientnet-lite0", pretrained=True)
try:  # a download attempt (offline here) reads its cache folder, and sets nothing
    build_model("torchvision-resnet18", pretrained=True, weights_dir=sys.argv[1])
except RuntimeError as error:
    assert sys.argv[1] in str(error), error
data.load_dataset("embedded-CIFAR10")
invgrad.GradientReconstructor, invgrad.Defense, invgrad.make_config
after = (dict(os.environ), socket.getdefaulttimeout())
print(json.dumps({"same": before == after, "added": sorted(set(after[0]) - set(before[0])),
                  "timeout": [before[1], after[1]], "data_root": str(data.default_root()),
                  "package": invgrad.__file__}))
"""


def _python(code: str, cwd, tmp_path, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "INVGRAD_DATA", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tmp_path / "site"), OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"))
    env.update(extra_env or {})
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "weights")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _install_copy(tmp_path) -> Path:
    """The package alone, copied away from the checkout (as a wheel would install it), and an empty work folder."""
    shutil.copytree(ROOT / "src" / "invgrad", tmp_path / "site" / "invgrad")
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.mark.slow
def test_import_and_building_models_change_nothing_process_wide(tmp_path):
    work = _install_copy(tmp_path)
    report = json.loads(_python(IMPORT_AND_BUILD, work, tmp_path).strip().splitlines()[-1])
    assert report["added"] == [] and report["same"] and report["timeout"] == [None, None]
    assert report["package"].startswith(str(tmp_path / "site"))
    assert report["data_root"] == str(work / "data" / "raw")


@pytest.mark.slow
def test_the_cli_runs_from_a_folder_outside_the_checkout(tmp_path):
    """From an empty folder: data root, outputs and attack state all land under it (or where told)."""
    work = _install_copy(tmp_path)
    code = (
        "import sys, torch; torch.set_num_threads(1); from invgrad.cli import main; "
        "sys.exit(main(['--model', 'LeNetZhu', '--max_iterations', '2', '--target_id', '1', "
        "'--defense_noise', '0.01', '--output', 'out']))"
    )
    stdout = _python(code, work, tmp_path, {"INVGRAD_DATA": str(tmp_path / "cache")})
    assert "PSNR" in stdout
    result = json.loads((work / "out" / "metrics.json").read_text())
    assert result["experiments"][0]["indices"] == [1] and (work / "out" / "reconstruction.png").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["out"]
