"""Tests for invgrad.data: constants, offline sources, image loading and target selection (all offline, fast)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invgrad import data

CIFAR10_FIRST20 = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
# The real CIFAR-10 image-folder archive, when `make test CIFAR10_ARCHIVE=<path>` names one (.ci/run does).
TARBALL = Path(os.environ.get("CIFAR10_ARCHIVE") or "cifar10-jpeg.tar.gz-not-given")


class FakeDataset(torch.utils.data.Dataset):
    """Labels-only stand-in: selection must never decode images, so __getitem__ fails loudly."""

    def __init__(self, labels, num_classes=10):
        self.labels = list(labels)
        self.info = dataclasses.replace(data.DATASETS["CIFAR10"], num_classes=num_classes)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        raise AssertionError("selection must not load images")


def _write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


# ---------------------------------------------------------------------------------------------- constants


def test_constants_exact():
    c10, c100, inet = data.DATASETS["CIFAR10"], data.DATASETS["CIFAR100"], data.DATASETS["ImageNet"]
    assert c10.mean == (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
    assert c10.std == (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)
    assert (c10.num_classes, c10.image_shape) == (10, (3, 32, 32))
    assert c10.class_names == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip
    assert c100.mean == (0.5071598291397095, 0.4866936206817627, 0.44120192527770996)
    assert c100.std == (0.2673342823982239, 0.2564384639263153, 0.2761504650115967)
    assert (c100.num_classes, c100.image_shape) == (100, (3, 32, 32))
    assert inet.mean == (0.485, 0.456, 0.406) and inet.std == (0.229, 0.224, 0.225)
    assert (inet.num_classes, inet.image_shape, inet.class_names) == (1000, (3, 224, 224), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c10.num_classes = 3


def test_cifar100_class_names():
    names = data.DATASETS["CIFAR100"].class_names
    assert len(names) == 100 == len(set(names))
    assert list(names) == sorted(names)  # the fine labels are in alphabetical index order
    assert names[:10] == (
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    )  # fmt: skip
    # labels of the embedded CIFAR-100 test images 0..9: mountain forest seal mushroom sea tulip camel ...
    spot = {49: "mountain", 33: "forest", 72: "seal", 51: "mushroom", 71: "sea", 92: "tulip", 15: "camel"}
    assert all(names[i] == n for i, n in spot.items())
    assert names[58] == "pickup_truck" and names[99] == "worm"


def test_mean_std_and_normalize_roundtrip():
    dm, ds = data.mean_std("CIFAR10")
    assert dm.shape == ds.shape == (3, 1, 1) and dm.dtype == torch.float32
    assert torch.equal(dm.flatten(), torch.tensor(data.DATASETS["CIFAR10"].mean))
    assert torch.equal(data.mean_std("embedded-cifar10")[1], ds)  # aliases resolve to the same constants
    x = torch.rand(2, 4, 3, 8, 8, dtype=torch.float64)
    for name in data.DATASETS:
        y = data.normalize(x, name)
        assert y.dtype == torch.float64
        assert torch.allclose(data.denormalize(y, name), x, atol=1e-12)
    y = data.normalize(x, "ImageNet")
    assert torch.allclose(y[..., 1, :, :], (x[..., 1, :, :] - 0.456) / 0.224)
    with pytest.raises(ValueError, match="MNIST"):
        data.mean_std("MNIST")


# ---------------------------------------------------------------------------------------------- embedded


def test_embedded_cifar10_exact():
    ds = data.load_dataset("embedded-CIFAR10")
    assert len(ds) == 20 and ds.labels == CIFAR10_FIRST20
    assert ds.info is data.DATASETS["CIFAR10"]
    img, label = ds[0]
    assert img.shape == (3, 32, 32) and label == 3
    png = data.embedded_data_dir() / "cifar10_00_3.png"
    pixels = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1).double() / 255
    assert torch.allclose(data.denormalize(img.double(), "CIFAR10"), pixels, atol=1e-6, rtol=0)


def test_embedded_cifar100_and_imagenet():
    c100 = data.load_dataset("embedded-CIFAR100")
    assert len(c100) == 20 and c100.labels[:3] == [49, 33, 72] and c100[5][0].shape == (3, 32, 32)
    inet = data.load_dataset("embedded-ImageNet")
    assert len(inet) == 20 and inet.labels[6:8] == [609, 609]
    images, labels = data.load_targets(inet, [0, 10])  # 10 is the non-square 1024x683 photo
    assert images.shape == (2, 3, 224, 224) and labels.tolist() == [243, 541]
    raw = data.denormalize(images, "ImageNet")
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6


def test_embedded_rejects_train_split_and_wrong_stats():
    with pytest.raises(ValueError, match="val"):
        data.load_dataset("embedded-CIFAR10", split="train")
    with pytest.raises(ValueError, match="CIFAR10"):
        data.load_dataset("embedded-CIFAR10", stats="ImageNet")


def test_unknown_name_lists_valid_forms():
    with pytest.raises(ValueError) as err:
        data.load_dataset("MNIST")
    msg = str(err.value)
    assert "embedded-CIFAR10" in msg and "CIFAR100" in msg and "image-folder:<path>" in msg


# ---------------------------------------------------------------------------------------------- torchvision


def test_torchvision_cifar10_offline_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DataUnavailableError) as err:
        data.load_dataset("CIFAR10", root=tmp_path / "raw")
    assert time.monotonic() - start < 30
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError) and "\n" not in msg
    assert "CIFAR10" in msg and "embedded-CIFAR10 (20 images, offline)" in msg
    assert "image-folder:<path>" in msg


def test_default_root_is_data_raw_under_the_working_directory_or_invgrad_data(tmp_path, monkeypatch):
    monkeypatch.delenv("INVGRAD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data.default_root() == tmp_path / "data" / "raw"
    monkeypatch.setenv("INVGRAD_DATA", str(tmp_path / "elsewhere"))
    assert data.default_root() == tmp_path / "elsewhere"


# ---------------------------------------------------------------------------------------------- image folders


def test_image_folder_with_generated_pngs(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    arrays = {}
    for cls, n in [("alpha", 2), ("beta", 3)]:
        for i in range(n):
            arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            arrays[(cls, i)] = arr
            _write_png(folder / cls / f"{i}.png", arr)
    _write_png(folder / "beta" / "big.png", rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8))
    (folder / "beta" / "notes.txt").write_text("not an image")

    ds = data.load_dataset(f"image-folder:{folder}", stats="CIFAR10")
    assert len(ds) == 6 and ds.labels == [0, 0, 1, 1, 1, 1]
    assert ds.info.class_names == ("alpha", "beta") and ds.info.num_classes == 2
    assert ds.info.mean == data.DATASETS["CIFAR10"].mean
    img, label = ds[1]
    assert label == 0
    expected = torch.from_numpy(arrays[("alpha", 1)]).permute(2, 0, 1).double() / 255
    assert torch.allclose(data.denormalize(img.double(), "CIFAR10"), expected, atol=1e-6, rtol=0)
    assert all(ds[i][0].shape == (3, 32, 32) for i in range(len(ds)))

    aug = data.load_dataset(f"image-folder:{folder}", split="train", stats="CIFAR10", train_augment=True)
    assert aug[0][0].shape == (3, 32, 32)

    inet = data.load_dataset(f"image-folder:{folder}", stats="ImageNet")
    assert inet[0][0].shape == (3, 224, 224)


def test_image_folder_missing_or_empty(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        data.load_dataset(f"image-folder:{missing}", stats="CIFAR10")
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        data.load_dataset(f"image-folder:{empty}", stats="CIFAR10")
    flat = tmp_path / "flat"
    _write_png(flat / "x.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="flat"):
        data.load_dataset(f"image-folder:{flat}", stats="CIFAR10")
    with pytest.raises(ValueError, match="stats"):
        data.load_dataset(f"image-folder:{flat}")


@pytest.mark.skipif(not TARBALL.is_file(), reason=f"CIFAR-10 JPEG tarball absent at {TARBALL}")
def test_image_folder_real_cifar10_jpeg(tmp_path):
    members = ["cifar10-jpeg/test/cat/000*", "cifar10-jpeg/test/ship/000*", "cifar10-jpeg/train/cat/000*"]
    subprocess.run(
        ["tar", "-xzf", str(TARBALL), "-C", str(tmp_path), "--wildcards", *members], check=True, timeout=60
    )
    # the root holds only split folders: split="val" picks test/, and class names map to CIFAR-10 indices
    ds = data.load_dataset(f"image-folder:{tmp_path / 'cifar10-jpeg'}", stats="CIFAR10")
    assert len(ds) == 20 and set(ds.labels) == {3, 8}
    assert ds.info is data.DATASETS["CIFAR10"]
    images, labels = data.load_targets(ds, data.unique_label_indices(ds, 0, 2))
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 8]
    raw = data.denormalize(images, "CIFAR10")
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6 and raw.std() > 0.05
    train = data.load_dataset(
        f"image-folder:{tmp_path / 'cifar10-jpeg' / 'train'}",
        split="train",
        stats="CIFAR10",
        train_augment=True,
    )
    assert len(train) == 10 and train.labels == [3] * 10 and train[0][0].shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------- single images


def test_load_image_converts_modes(tmp_path):
    gray = _write_png(tmp_path / "gray.png", np.full((40, 60), 128, np.uint8), mode="L")
    x = data.load_image(gray, stats="CIFAR10")
    assert x.shape == (3, 32, 32)
    raw = data.denormalize(x, "CIFAR10")
    assert torch.allclose(raw, torch.full_like(raw, 128 / 255), atol=1e-6)

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:32, :, 3] = 255  # top half opaque red, bottom half fully transparent -> white
    x = data.load_image(_write_png(tmp_path / "rgba.png", rgba, mode="RGBA"), stats="CIFAR10")
    raw = data.denormalize(x, "CIFAR10")
    assert x.shape == (3, 32, 32)
    assert torch.allclose(raw[:, :8], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 8, 32), atol=1e-5)
    assert torch.allclose(raw[:, -8:], torch.ones(3, 8, 32), atol=1e-5)

    pal = Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64) % 7).convert("P")
    pal.save(tmp_path / "pal.png")
    assert data.load_image(tmp_path / "pal.png", stats="ImageNet").shape == (3, 224, 224)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        data.load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="bad.png"):
        data.load_image(bad)


def test_demo_image():
    x, label = data.demo_image()
    assert x.shape == (3, 32, 32) and label == 1
    assert data.DATASETS["CIFAR10"].class_names[label] == "automobile"
    raw = data.denormalize(x, "CIFAR10")
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6 and raw.std() > 0.05
    x, label = data.demo_image("ImageNet")
    assert x.shape == (3, 224, 224) and label == 609


# ---------------------------------------------------------------------------------------------- selection


def test_consecutive_indices():
    ds = FakeDataset([0] * 10)
    assert data.consecutive_indices(ds, 3, 4) == [3, 4, 5, 6]
    assert data.consecutive_indices(ds, 9, 1) == [9]
    with pytest.raises(ValueError, match=r"start=8.*count=3|count=3.*start=8"):
        data.consecutive_indices(ds, 8, 3)
    with pytest.raises(ValueError, match="len=10"):
        data.consecutive_indices(ds, -1, 2)


def test_unique_label_indices():
    ds = FakeDataset([3, 3, 1, 3, 2, 1, 0, 4, 2], num_classes=5)
    assert data.unique_label_indices(ds, 0, 3) == [0, 2, 4]
    assert data.unique_label_indices(ds, 0, 5) == [0, 2, 4, 6, 7]
    assert data.unique_label_indices(ds, 3, 4) == [3, 4, 5, 6]
    assert data.unique_label_indices([5, 5, 6], 0, 2) == [0, 2]  # a plain label list works too
    with pytest.raises(ValueError, match=r"count=6.*5"):
        data.unique_label_indices(ds, 0, 6)  # more than num_classes
    with pytest.raises(ValueError, match=r"count=4.*only 3 unique"):
        data.unique_label_indices(ds, 6, 4)  # data runs out: only labels 0, 4, 2 from index 6


def test_unique_label_indices_on_embedded_cifar10():
    ds = data.load_dataset("embedded-CIFAR10")
    idx = data.unique_label_indices(ds, 0, 8)
    assert idx == [0, 1, 3, 4, 6, 11, 12, 13]
    assert sorted(ds.labels[i] for i in idx) == [0, 1, 3, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match=r"count=9.*only 8 unique"):
        data.unique_label_indices(ds, 0, 9)  # bird (2) and deer (4) are absent from the first 20
    images, labels = data.load_targets(ds, idx[:3])
    assert images.shape == (3, 3, 32, 32) and labels.dtype == torch.long and labels.tolist() == [3, 8, 0]
    with pytest.raises(ValueError, match="out of range"):
        data.load_targets(ds, [20])


def test_missing_foolbox_names_the_install_command(monkeypatch):
    monkeypatch.setattr(data.sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install foolbox==3\.3\.4"):
        data.load_dataset("embedded-CIFAR10")


def test_datasets_pickle_for_dataloader_workers():
    import pickle

    ds = data.load_dataset("embedded-CIFAR10")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.labels == ds.labels and torch.equal(clone[2][0], ds[2][0])


def test_a_decompression_bomb_is_one_clear_error(tmp_path, monkeypatch):
    path = _write_png(tmp_path / "bomb.png", np.zeros((64, 64, 3), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 × the limit: PIL's bomb error
    with pytest.raises(ValueError, match=r"refusing image file .*bomb\.png: .*decompression bomb") as error:
        data.load_image(path)
    assert "\n" not in str(error.value)


def _archive(path: Path, top: str) -> Path:
    import tarfile

    source = path.parent / f"src-{top}"
    (source / top).mkdir(parents=True)
    (source / top / "new.txt").write_text("from the archive\n")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source / top, arcname=top)
    return path


def test_extraction_never_replaces_a_folder_it_did_not_create(tmp_path):
    root = tmp_path / "data"
    (root / "cache").mkdir(parents=True)
    (root / "cache" / "mine.txt").write_text("the user's own\n")
    archive = _archive(tmp_path / "a.tar.gz", "cache")
    with pytest.raises(
        data.DataUnavailableError, match=r"would replace .*data/cache, which no extraction created"
    ):
        data.extract_archive(archive, root)
    assert [p.name for p in (root / "cache").iterdir()] == ["mine.txt"]


def test_extraction_replaces_what_an_earlier_extraction_created(tmp_path):
    root = tmp_path / "data"
    first = data.extract_archive(_archive(tmp_path / "a.tar.gz", "images"), root)
    assert first == [root / "images"]
    (root / "images" / "new.txt").write_text("stale\n")
    (tmp_path / "b").mkdir()
    data.extract_archive(_archive(tmp_path / "b" / "b.tar.gz", "images"), root)
    assert (root / "images" / "new.txt").read_text() == "from the archive\n"


def test_extract_script_refuses_with_one_line(tmp_path, capsys):
    import importlib.util
    import sys

    root = tmp_path / "data"
    (root / "cache").mkdir(parents=True)
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        spec = importlib.util.spec_from_file_location("extract_data", scripts / "extract_data.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        archive = _archive(tmp_path / "a.tar.gz", "cache")
        code = module.main(["--archive", str(archive), "--root", str(root), "--flag", str(tmp_path / "flag")])
    finally:
        sys.path.remove(str(scripts))
    captured = capsys.readouterr()
    assert code == 1 and "which no extraction created" in captured.out + captured.err
    assert not (tmp_path / "flag").exists() and list((root / "cache").iterdir()) == []
