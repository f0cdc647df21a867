"""A device the machine lacks is refused with one clear message before any work (CLI, cells, benchmarks)."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from invgrad.devices import checked_device
from invgrad.replication import cells, plan

ROOT = Path(__file__).resolve().parents[1]


def _cuda_count(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("name, count", [("cuda", 0), ("cuda:0", 0), ("cuda:1", 1)])
def test_a_missing_cuda_device_is_refused(monkeypatch, name, count):
    _cuda_count(monkeypatch, count)
    with pytest.raises(ValueError, match=f"device {name}: CUDA is not available .*sees {count} CUDA"):
        checked_device(name)


def test_present_devices_pass(monkeypatch):
    _cuda_count(monkeypatch, 2)
    assert checked_device("cuda:1") == torch.device("cuda", 1)
    assert checked_device("cpu") == torch.device("cpu")


def test_a_cell_on_a_missing_device_fails_before_loading_anything(monkeypatch, tmp_path):
    _cuda_count(monkeypatch, 0)
    spec = copy.deepcopy(plan.plan(yaml.safe_load((ROOT / "config" / "test.yaml").read_text()))["table1"])
    name, cell = next(iter(spec.items()))
    cell = {**cell, "device": "cuda"}
    monkeypatch.setattr(cells, "load_victim", lambda spec: pytest.fail("loaded a victim"))
    with pytest.raises(ValueError, match="CUDA is not available"):
        cells.run_cell(cell, name, tmp_path, log=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_bench_on_a_missing_device_says_so_and_exits_2():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--device", "cuda", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "CUDA is not available" in result.stdout and "use --device cpu" in result.stdout


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("foo", "'foo' is not a torch device"),
        ("mps", "'mps' is not supported"),
        ("meta", "'meta' is not supported"),
    ],
)
def test_unknown_or_unsupported_device_names_are_refused(name, fragment):
    with pytest.raises(ValueError, match=f"device {fragment}; use one of cpu, cuda, cuda:N"):
        checked_device(name)
