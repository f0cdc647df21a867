"""The command line (``scripts/reconstruct_image.py`` → ``invgrad.cli.main``) end to end, with tiny budgets.

Runs in-process through ``main(argv)`` (one subprocess check of the script itself); torch on one thread (2 threads on
the busy 2-core machine made small convolutions 30-60× slower).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from invgrad.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *args):
    out = tmp_path / "out"
    code = main(["--model", "LeNetZhu", "--max_iterations", "3", "--output", str(out), *args])
    return code, out


def test_fedsgd_run_writes_metrics_and_png(tmp_path, capsys):
    code, out = _run(tmp_path, "--target_id", "2", "--tv", "1e-2")
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["threat_model"] == {"threat_model": "fedsgd"} and result["label_strategy"] == "known"
    assert result["defense"]["active"] is False and result["defense"]["privacy"] is None
    assert result["experiments"][0]["indices"] == [2] and result["config"]["max_iterations"] == 3
    assert 0 < result["psnr_mean"] < 60 and result["pairing"] == "identity"
    assert Image.open(out / "reconstruction.png").size[0] > 32
    assert "PSNR" in capsys.readouterr().out


def test_fedavg_run_with_label_recovery_and_defense(tmp_path):
    code, out = _run(
        tmp_path,
        "--accumulation", "2",
        "--local_lr", "1e-2",
        "--num_images", "2",
        "--batch_size", "1",
        "--labels", "last-layer",
        "--defense_clip", "1.0",
        "--defense_noise", "1.0",
        "--defense_prune", "0.5",
        "--defense_bits", "8",
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    threat = result["threat_model"]
    assert threat["threat_model"] == "fedavg" and threat["local_steps"] == 2 and threat["batch_size"] == 1
    assert threat["local_epochs"] == 1.0 and threat["local_lr"] == 0.01
    assert result["pairing"] == "hungarian" and len(result["experiments"][0]["psnr"]) == 2
    assert result["label_strategy"] == "last-layer"
    # σ = 1 after clipping to 1 drowns the update: labels are reported, not necessarily right
    assert len(result["experiments"][0]["labels_used"]) == 2 and "label_accuracy" in result["experiments"][0]
    privacy = result["defense"]["privacy"]
    assert result["defense"]["active"] and privacy["noise_multiplier"] == 1.0
    assert privacy["epsilon"] == pytest.approx(9.9973, abs=1e-3) and privacy["neighbouring"] == "replace-one"
    assert (out / "reconstruction.png").is_file()


def test_joint_labels_from_the_cli(tmp_path):
    code, out = _run(tmp_path, "--labels", "joint", "--num_images", "2")
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    assert len(result["experiments"][0]["labels_used"]) == 2 and 0 <= result["label_accuracy_mean"] <= 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--trained_model"], "--trained_model for LeNetZhu needs --checkpoint"),
        (["--model", "NoSuchNet"], "Unknown model 'NoSuchNet'"),
        (
            ["--accumulation", "2", "--num_images", "4", "--batch_size", "3"],
            "batch_size=3 does not divide .*num_images=4",
        ),
        (["--accumulation", "-1"], "local_steps must be an integer >= 0, got -1"),
        (["--accumulation", "2", "--local_lr", "0"], "local_lr must be a positive finite number, got 0.0"),
        (["--batch_size", "1", "--num_images", "2"], "--batch_size 1 needs --accumulation > 0"),
        (["--labels", "idlg", "--num_images", "2"], "--labels idlg recovers one image's label"),
        (["--defense_noise", "-1"], r"noise \(std σ\) must lie in \[0.0, inf\), got -1.0"),
        (["--defense_prune", "2"], r"prune \(fraction kept p\) must lie in \(0.0, 1.0\], got 2.0"),
        (["--defense_bits", "0"], r"bits must be an integer in \[1, 16\], got 0"),
        (["--num_images", "11"], "count=11 .*only 10 classes"),
        (["--dataset", "MNIST"], "unknown dataset 'MNIST'"),
        (["--cost_fn", "cosine"], "unknown value 'cosine' for config\\['cost_fn'\\]"),
        (["--indices", "top-ten"], "top-ten"),
        (["--optim", "ours", "--init", "gauss"], "gauss"),
        (["--target_id", "25"], "25"),
        (["--dataset", "image-folder:/no/such/folder", "--stats", "CIFAR10"], "/no/such/folder"),
        (["--device", "cuda:3"], "CUDA is not available"),
        (["--device", "mps"], "device 'mps' is not supported; use one of cpu, cuda, cuda:N"),
        (["--device", "foo"], "device 'foo' is not a torch device"),
        (["--max_iterations", "0"], "max_iterations'\\] must be a positive integer, got 0"),
        (["--lr", "inf"], "lr'\\] must be a finite number > 0, got inf"),
        (["--lr", "0"], "lr'\\] must be a finite number > 0, got 0"),
        (["--tv", "inf"], "total_variation'\\] must be a finite number >= 0, got inf"),
        (["--tv", "nan"], "total_variation'\\] must be a finite number >= 0, got nan"),
        (["--seed", str(2**70)], r"seed'\] must be an integer in \[0, 2\*\*63\)"),
        (["--defense_noise", "nan"], "noise .* must be a finite number, got nan"),
        (["--accumulation", "2", "--local_lr", "inf"], "local_lr must be a positive finite number, got inf"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys, args, fragment):
    code, out = _run(tmp_path, *args)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert __import__("re").search(fragment, err), err
    assert not out.exists()  # nothing half-written: not even the output folder


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    from invgrad.io import save_tensors
    from invgrad.victim.models import build_model

    ckpt = save_tensors(
        {"state_dict": build_model("ConvNet8", seed=0).state_dict()}, tmp_path / "convnet8.pt"
    )
    code, out = _run(tmp_path, "--trained_model", "--checkpoint", str(ckpt))
    assert code == 2 and f"checkpoint {ckpt} does not fit LeNetZhu" in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["--model", "LeNetZhu", "--max_iterations", "1", "--output", str(blocker / "out")])
    assert code == 2 and "cannot be created" in capsys.readouterr().err


def test_offline_torchvision_cifar_names_the_embedded_alternative(tmp_path, capsys):
    code, _ = _run(tmp_path, "--dataset", "CIFAR10", "--data_root", str(tmp_path / "nodata"))
    assert code == 2
    assert "embedded-CIFAR10" in capsys.readouterr().err


@pytest.mark.slow
def test_script_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reconstruct_image.py"), "--model", "NoSuchNet", "--output",
         str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Unknown model 'NoSuchNet'" in proc.stderr


def test_reconstruction_png_is_the_paper_grid_with_psnr_and_class_names(tmp_path, monkeypatch):
    import re

    import matplotlib.text
    import torch

    from invgrad import metrics, plot
    from invgrad.data.catalog import CIFAR10_CLASSES

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no AlexNet weights here
    figures, draw = [], plot.grid
    monkeypatch.setattr(plot, "grid", lambda *a, **k: figures.append(draw(*a, **k)) or figures[-1])
    code, out = _run(tmp_path, "--target_id", "0", "--num_exp", "3")
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    texts = [t.get_text() for t in figures[0].findobj(matplotlib.text.Text) if t.get_text()]
    psnr = [v for exp in result["experiments"] for v in exp["psnr"]]
    assert [t for t in texts if t.endswith(" dB") and "\n" not in t] == [f"{v:.2f} dB" for v in psnr]
    classes = {CIFAR10_CLASSES[label] for exp in result["experiments"] for label in exp["labels"]}
    assert {"ground truth", "proposed"} | classes <= set(texts)
    assert any(t.startswith("LeNetZhu on embedded-CIFAR10: mean PSNR") for t in texts)
    assert not [t for t in texts[:-1] if re.search(r"\b\w+_\w+\b", t)]  # only the footer may name a path
    width, height = Image.open(out / "reconstruction.png").size
    assert max(width / height, height / width) <= 4
    assert result["lpips_mean"] == metrics.LPIPS_NO_WEIGHTS
    assert all(exp["lpips"] == metrics.LPIPS_NO_WEIGHTS for exp in result["experiments"])


def test_the_tv_default_is_the_presets_and_the_help_says_it():
    from invgrad import cli
    from invgrad.config import PRESETS

    args = cli.build_parser().parse_args([])
    assert cli._attack_config(args)["total_variation"] == PRESETS["ours"]["total_variation"] == 1e-2
    zhu = cli.build_parser().parse_args(["--optim", "zhu"])
    assert cli._attack_config(zhu)["total_variation"] == 0.0
    tv_help = next(a.help for a in cli.build_parser()._actions if "--tv" in a.option_strings)
    assert tv_help == "total-variation weight (default: 0.01 ours, 0 zhu)"
    optim_help = next(a.help for a in cli.build_parser()._actions if "--optim" in a.option_strings)
    assert "cosine, signed Adam lr 0.1, 4800 iterations, TV 0.01" in optim_help
    assert PRESETS["ours"]["cost_fn"] == "sim" and PRESETS["ours"]["signed"] and PRESETS["ours"]["lr"] == 0.1
    assert cli._attack_config(args)["max_iterations"] == 4800


def test_integer_checkpoint_weights_are_refused(tmp_path, capsys):
    from invgrad.io import save_tensors
    from invgrad.victim.models import build_model

    state = {k: v.mul(100).long() for k, v in build_model("LeNetZhu", seed=0).state_dict().items()}
    ckpt = save_tensors({"state_dict": state}, tmp_path / "int64.pt")
    code, out = _run(tmp_path, "--trained_model", "--checkpoint", str(ckpt))
    err = capsys.readouterr().err
    assert code == 2 and "has dtype torch.int64, but the model's weights are floating point" in err, err
    assert not out.exists()


def test_offline_pretrained_weights_name_the_remedy(tmp_path, capsys, monkeypatch):
    import urllib.error

    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    for model in ("torchvision-resnet18", "ResNet152"):
        code, out = _run(
            tmp_path,
            "--model",
            model,
            "--dataset",
            "embedded-ImageNet",
            "--trained_model",
            "--weights_dir",
            str(tmp_path / "weights"),
        )
        err = capsys.readouterr().err
        assert (
            code == 2
            and err.startswith("error: Could not fetch torchvision weights")
            and err.count("\n") == 1
        )
        assert "internet once" in err and "--weights_dir" in err and str(tmp_path / "weights") in err
        assert not out.exists()


def test_a_second_run_into_a_locked_folder_fails_with_one_line(tmp_path, capsys):
    from invgrad.io import folder_lock

    out = tmp_path / "out"
    with folder_lock(out):  # the lock is per open file: a held one refuses this process's second run too
        code, _ = _run(tmp_path, "--target_id", "2")
    err = capsys.readouterr().err
    assert code == 2 and f"error: output folder {out} is in use by process" in err
    assert not (out / "metrics.json").exists()


def test_a_full_disk_ends_with_one_line_and_no_partial_output(tmp_path, capsys, monkeypatch):
    import errno

    from invgrad import io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.Image.Image, "save", full)
    code, out = _run(tmp_path, "--target_id", "2")
    err = capsys.readouterr().err
    assert code == 2 and "reconstruction.png: no space left on its disk" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]
