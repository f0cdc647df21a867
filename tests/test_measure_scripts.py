"""The measurement scripts behind docs/DESIGN.md's JPEG and ImageNet tables: their pairing and bad input."""

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jpeg_pairs_are_files_0000_to_0003_of_each_embedded_images_class(tmp_path):
    jpeg_bias = _script("jpeg_bias")
    from invgrad import data

    names = data.dataset_info("CIFAR10").class_names
    for name in names:
        (tmp_path / "test" / name).mkdir(parents=True)
        for j in range(5):
            (tmp_path / "test" / name / f"{j:04d}.jpg").touch()
    found = jpeg_bias.pairs(tmp_path)
    assert len(found) == 20
    first = found[0]  # cifar10_00_3.png: test image 0, a cat, is file 0000 of cat/
    assert first[2].name == "cifar10_00_3.png" and first[3] == tmp_path / "test" / "cat" / "0000.jpg"
    assert len({(label, number) for label, number, _, _ in found}) == 20  # no JPEG paired twice
    assert max(number for _, number, _, _ in found) <= 3


def test_jpeg_pairs_refuse_a_folder_without_the_test_files(tmp_path):
    jpeg_bias = _script("jpeg_bias")
    from invgrad import data

    for name in data.dataset_info("CIFAR10").class_names:
        (tmp_path / name).mkdir()
    with pytest.raises(SystemExit, match="lacks file 0000"):
        jpeg_bias.pairs(tmp_path)


@pytest.mark.parametrize("text", ["48:800", "48:0:1", "a:b:c", "48:800:-1"])
def test_an_imagenet_setting_must_be_three_positive_integers(text):
    with pytest.raises(argparse.ArgumentTypeError):
        _script("imagenet_budget").setting(text)


def test_an_imagenet_setting_reads_size_iterations_restarts():
    assert _script("imagenet_budget").setting("48:800:1") == (48, 800, 1)
