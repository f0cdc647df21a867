"""first-per-class:<folder>: the first k test images of each class, interleaved by number, exact images substituted."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invgrad import data
from invgrad.data import per_class

CLASSES = data.CIFAR10_CLASSES


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
    """A 3-class test split (airplane, automobile, bird; 4 files each, value = 10*label + number) and a fake
    embedded folder holding test images 0-2 with labels 1, 0, 1 (values 200+index)."""
    root = tmp_path / "cifar10-jpeg"
    for label in range(3):
        for number in range(4):
            _png(root / "test" / CLASSES[label] / f"{number:04d}.png", 10 * label + number)
    _png(root / "train" / CLASSES[0] / "0000.png", 99)
    embedded = tmp_path / "embedded"
    for index, label in enumerate([1, 0, 1]):
        _png(embedded / f"cifar10_{index:02d}_{label}.png", 200 + index)
    return root, embedded


def _pixel(dataset, i):
    image, _ = dataset[i]
    return int(round(float(data.denormalize(image, "CIFAR10")[0, 0, 0]) * 255))


def test_interleaved_order_and_exact_substitution(folders):
    root, embedded = folders
    dataset = per_class.first_per_class(root, per_class=3, embedded_folder=embedded)
    assert dataset.labels == [0, 1, 2] * 3
    assert dataset.number == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # (label 0, number 0) <- test image 1; (label 1, numbers 0, 1) <- test images 0 and 2
    assert dataset.exact == [True, True, False, False, True, False, False, False, False]
    assert [_pixel(dataset, i) for i in range(9)] == [201, 200, 20, 1, 202, 21, 2, 12, 22]
    assert dataset.files[0].parent == embedded and dataset.files[2].suffix == ".png"


def test_exact_count_of_attacked_positions(folders):
    root, embedded = folders
    dataset = per_class.first_per_class(root, per_class=3, embedded_folder=embedded)
    assert per_class.exact_count(dataset, [0, 1, 2, 3]) == 2 and per_class.exact_count(dataset, [5, 6]) == 0
    assert data.exact_count(data.load_dataset("embedded-CIFAR10"), [0, 1]) is None  # the source does not say


def test_the_pipeline_plans_it_only_where_its_folder_exists_or_is_unpacked(tmp_path):
    """data.val.CIFAR10: first-per-class:<folder> plans when the folder exists or is data.train.CIFAR10's folder
    with an archive to unpack; otherwise, and when the experiments need more than its 100 images, one line."""
    import yaml

    from invgrad.replication import plan

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    config["data"].update(
        val={**config["data"]["val"], "CIFAR10": f"first-per-class:{tmp_path}/cifar10-jpeg"},
        train={**config["data"]["train"], "CIFAR10": f"image-folder:{tmp_path}/cifar10-jpeg"},
        archives={**config["data"]["archives"], "CIFAR10": str(archive)},
    )
    missing = [p for p in plan.check(config) if p.startswith("data.val.CIFAR10")]
    assert missing == [
        f"data.val.CIFAR10: image folder {tmp_path}/cifar10-jpeg does not exist (nor is it data.train.CIFAR10's "
        "folder, which the run unpacks from data.archives.CIFAR10)"
    ]
    archive.write_bytes(b"")
    assert not [p for p in plan.check(config) if p.startswith("data.val")]
    # the same test the workflow asks before a cell waits for the extraction
    assert plan.reads_training_folder(config, "CIFAR10", config["data"]["val"]["CIFAR10"])
    assert not plan.reads_training_folder(config, "CIFAR10", f"first-per-class:{tmp_path}/elsewhere")
    assert not plan.reads_training_folder(config, "CIFAR10", "embedded-CIFAR10")
    config["experiments"]["table1"]["images"] = 101
    config["experiments"]["table1"]["distinct_images"] = False
    assert [p for p in plan.check(config) if p.startswith("data.val")] == [
        f"data.val.CIFAR10: first-per-class:{tmp_path}/cifar10-jpeg holds 100 images (10 per class), the "
        "experiments select up to 101"
    ]


def test_embedded_files_map_to_class_numbers(folders):
    _, embedded = folders
    mapping = per_class.embedded_exact_files("CIFAR10", embedded)
    assert {key: f.name for key, f in mapping.items()} == {
        (1, 0): "cifar10_00_1.png",
        (0, 0): "cifar10_01_0.png",
        (1, 1): "cifar10_02_1.png",
    }
    assert per_class.embedded_exact_files("ImageNet", embedded) == {}


def test_the_real_embedded_images_fill_their_class_numbers(tmp_path):
    """With the wheel's 20 images, files 0000-000j of each class are replaced by the exact image of that class."""
    embedded = data.load_dataset("embedded-CIFAR10")
    counts = np.bincount(embedded.labels, minlength=10)
    root = tmp_path / "f"
    for name in CLASSES:
        for number in range(10):
            _png(root / "test" / name / f"{number:04d}.jpg", 1)
    dataset = data.load_dataset(f"first-per-class:{root}", stats="CIFAR10")
    assert len(dataset) == 100 and sum(dataset.exact) == 20
    for i, (label, number) in enumerate(zip(dataset.labels, dataset.number, strict=True)):
        assert dataset.exact[i] == (number < counts[label])
    # the exact image is the embedded one, bit for bit
    first = dataset.files.index(embedded.files[0])
    assert torch.equal(dataset[first][0], embedded[0][0])


def test_bad_requests_are_one_clear_error(folders):
    root, embedded = folders
    with pytest.raises(ValueError, match="holds 4 images, fewer than per_class=10"):
        data.load_dataset(f"first-per-class:{root}", stats="CIFAR10")
    with pytest.raises(ValueError, match="holds only test images"):
        data.load_dataset(f"first-per-class:{root}", stats="CIFAR10", split="train")
    with pytest.raises(ValueError, match="needs stats="):
        data.load_dataset(f"first-per-class:{root}")
    with pytest.raises(ValueError, match="per_class must be a positive integer"):
        per_class.first_per_class(root, per_class=0)
    with pytest.raises(ValueError, match="not CIFAR100 class names"):
        per_class.first_per_class(root, stats="CIFAR100", per_class=2, embedded_folder=embedded)
    assert data.source_root(f"first-per-class:{root}", "data/raw") is None


def test_a_pipeline_cell_records_the_source_and_its_exact_images(tmp_path):
    """A Table-1 cell on first-per-class (10 classes × 10 files): the records say which source and how many of
    each user's images are exact (the embedded airplane/0000 and automobile/0000 stand in for positions 0, 1)."""
    import copy

    import yaml

    from invgrad.replication import cells, plan

    for label in range(10):
        for number in range(10):
            _png(tmp_path / "folder" / "test" / CLASSES[label] / f"{number:04d}.png", 10 * label + number)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "test.yaml").read_text())
    spec = copy.deepcopy(plan.plan(config)["table1"]["LeNetZhu_untrained_ours"])
    spec["attack"].update(max_iterations=2)
    spec["val_source"] = f"first-per-class:{tmp_path / 'folder'}"
    records = cells.run_cell(spec, "LeNetZhu_untrained_ours", tmp_path / "out", log=lambda _: None)
    assert [r["indices"] for r in records] == [[0], [1]]
    assert [(r["val_source"], r["exact_images"]) for r in records] == [(spec["val_source"], 1)] * 2
