"""Data-set constants: names, normalisation, shapes, label spaces. Imports no torch, so planning can use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DatasetInfo:
    """What the attack and the models need to know about a data set (normalisation, shape, label space)."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...] | None = None


CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# The 100 CIFAR-100 fine labels in index order (alphabetical, as in the data set's meta file).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

DATASETS: dict[str, DatasetInfo] = {
    "CIFAR10": DatasetInfo(
        name="CIFAR10",
        mean=(0.4914672374725342, 0.4822617471218109, 0.4467701315879822),
        std=(0.24703224003314972, 0.24348513782024384, 0.26158785820007324),
        num_classes=10,
        image_shape=(3, 32, 32),
        class_names=CIFAR10_CLASSES,
    ),
    "CIFAR100": DatasetInfo(
        name="CIFAR100",
        mean=(0.5071598291397095, 0.4866936206817627, 0.44120192527770996),
        std=(0.2673342823982239, 0.2564384639263153, 0.2761504650115967),
        num_classes=100,
        image_shape=(3, 32, 32),
        class_names=CIFAR100_CLASSES,
    ),
    "ImageNet": DatasetInfo(
        name="ImageNet",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        num_classes=1000,
        image_shape=(3, 224, 224),
        class_names=None,
    ),
}

# Shorter-side size before the centre crop in evaluation pipelines. ImageNet uses the standard 256 -> 224; for
# the others the shorter side goes straight to the crop size (32x32 CIFAR images are then left untouched).
_EVAL_RESIZE = {"ImageNet": 256}

_EMBEDDED_PREFIX = "embedded-"
_FOLDER_PREFIX = "image-folder:"
# The first 10 test images per class of an image folder, exact embedded images substituted (data/per_class.py).
_FIRST_PER_CLASS_PREFIX = "first-per-class:"
FIRST_PER_CLASS_IMAGES = 10  # what the source name gives: "the first 10 test images per class"


def dataset_info(name: str | DatasetInfo) -> DatasetInfo:
    """Look up the constants of ``name``; accepts ``CIFAR10``, ``cifar10``, ``embedded-CIFAR10`` or an info."""
    if isinstance(name, DatasetInfo):
        return name
    key = name[len(_EMBEDDED_PREFIX) :] if name.lower().startswith(_EMBEDDED_PREFIX) else name
    for canonical, info in DATASETS.items():
        if canonical.lower() == key.lower():
            return info
    raise ValueError(f"unknown normalisation/stats name {name!r}; valid: {', '.join(DATASETS)}")


# The status of a result that could not be produced (a split without a source, a victim without training data).
NOT_RUN = "not run"
# The 'not run' reason of a cell whose victim lacks its training split (formatted with the dataset's name).
NO_TRAINING_DATA = "not run: needs the {dataset} training split"


def image_folder_path(source: str | None) -> Path | None:
    """The folder an ``image-folder:<path>`` or ``first-per-class:<path>`` source names (``~`` expanded); None
    for every other source."""
    for prefix in (_FOLDER_PREFIX, _FIRST_PER_CLASS_PREFIX):
        if source and source.lower().startswith(prefix):
            return Path(source[len(prefix) :]).expanduser()
    return None
