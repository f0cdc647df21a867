"""Data sources, normalisation constants and target selection.

Every source returns a :class:`LabelledDataset`: items are ``(normalised image [C,H,W], int label)`` and the
object carries ``.info`` (a :class:`DatasetInfo`) and ``.labels`` (``list[int]``) so that target selection can
run on labels alone, without decoding any image.

Sources (all through :func:`load_dataset`):

* ``embedded-CIFAR10`` / ``embedded-CIFAR100`` / ``embedded-ImageNet``: the 20 test images per data set that
  the foolbox 3.3.4 wheel ships; available offline, CIFAR ones bit-exact.
* ``CIFAR10`` / ``CIFAR100``: torchvision, downloaded on demand (:mod:`invgrad.download`: timeout per read,
  checksums, nothing half-written kept); fails fast offline with :class:`DataUnavailableError` naming the offline
  alternatives.
* ``image-folder:<path>``: a torchvision ``ImageFolder`` layout (``<path>/<class>/<image>``), normalised with
  the constants of ``stats=``.

Training splits for victims resolve through :func:`resolve_training_source`: a local folder (or its archive), else
torchvision's download, else a 'not run' reason naming both.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms

from .download import DataUnavailableError, cifar_class, download_cifar, extract_archive

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "DatasetInfo",
    "LabelledDataset",
    "NO_TRAINING_DATA",
    "TrainingSource",
    "consecutive_indices",
    "dataset_info",
    "default_root",
    "demo_image",
    "denormalize",
    "embedded_data_dir",
    "load_dataset",
    "load_image",
    "load_targets",
    "mean_std",
    "normalize",
    "source_root",
    "resolve_training_source",
    "unique_label_indices",
    "valid_dataset_names",
]


# --------------------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------------------


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


def dataset_info(name: str | DatasetInfo) -> DatasetInfo:
    """Look up the constants of ``name``; accepts ``CIFAR10``, ``cifar10``, ``embedded-CIFAR10`` or an info."""
    if isinstance(name, DatasetInfo):
        return name
    key = name[len(_EMBEDDED_PREFIX) :] if name.lower().startswith(_EMBEDDED_PREFIX) else name
    for canonical, info in DATASETS.items():
        if canonical.lower() == key.lower():
            return info
    raise ValueError(f"unknown normalisation/stats name {name!r}; valid: {', '.join(DATASETS)}")


def mean_std(
    name: str | DatasetInfo, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(dm, ds)`` as ``[C,1,1]`` tensors: the form the attack uses to clamp/normalise its iterate."""
    info = dataset_info(name)
    dm = torch.tensor(info.mean, device=device, dtype=dtype).view(-1, 1, 1)
    ds = torch.tensor(info.std, device=device, dtype=dtype).view(-1, 1, 1)
    return dm, ds


def normalize(x: torch.Tensor, name: str | DatasetInfo) -> torch.Tensor:
    """Map ``[0,1]`` images ``[..., C, H, W]`` to the normalised space of ``name``."""
    dm, ds = mean_std(name, device=x.device, dtype=x.dtype)
    return (x - dm) / ds


def denormalize(x: torch.Tensor, name: str | DatasetInfo) -> torch.Tensor:
    """Inverse of :func:`normalize` (no clamping, so it is an exact inverse)."""
    dm, ds = mean_std(name, device=x.device, dtype=x.dtype)
    return x * ds + dm


# --------------------------------------------------------------------------------------------------------------
# Errors, paths
# --------------------------------------------------------------------------------------------------------------


def default_root() -> Path:
    """``<project>/data/raw``: project root is the parent of ``src/`` (this file is ``src/invgrad/data.py``)."""
    return Path(__file__).resolve().parents[2] / "data" / "raw"


def embedded_data_dir() -> Path:
    """The ``data`` folder of the installed foolbox wheel, found without importing foolbox (slow, eagerpy)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the embedded sample images come from the foolbox wheel, which is not installed: "
            "pip install foolbox==3.3.4"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"foolbox is installed but has no data folder at {path}: pip install foolbox==3.3.4"
        )
    return path


# --------------------------------------------------------------------------------------------------------------
# Image decoding and resizing
# --------------------------------------------------------------------------------------------------------------


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB explicitly.

    Transparency is composited onto white (dropping alpha would expose arbitrary colours of invisible pixels);
    16-bit/float greyscale is rescaled to 8 bit (PIL's plain convert would clip it to white).
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if peak > 255.0:
            arr = arr * (255.0 / (65535.0 if peak <= 65535.0 else peak))
        elif img.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB; FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err


def _resize_crop(
    img: Image.Image,
    hw: tuple[int, int],
    shorter: int | None = None,
    interpolation: transforms.InterpolationMode = transforms.InterpolationMode.BILINEAR,
) -> Image.Image:
    """Resize the shorter side (to ``shorter`` or to fit ``hw``), then centre-crop; exact-size images pass."""
    h, w = hw
    if img.size == (w, h):
        return img
    if shorter is None:
        # Smallest scale so that the crop fits inside the resized image.
        scale = max(h / img.height, w / img.width)
        size = [max(h, round(img.height * scale)), max(w, round(img.width * scale))]
    else:
        size = [shorter]
    img = TF.resize(img, size, interpolation=interpolation, antialias=True)
    return TF.center_crop(img, [h, w])


class _EvalTransform:
    """Deterministic pipeline: (resize+crop if needed) -> [0,1] tensor -> normalise.

    A class rather than a closure so that DataLoader workers can pickle it under any start method.
    """

    def __init__(self, info: DatasetInfo):
        self.info = info
        self.hw = info.image_shape[1:]
        self.shorter = _EVAL_RESIZE.get(info.name)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return normalize(TF.to_tensor(_resize_crop(img, self.hw, self.shorter)), self.info)


class _TrainTransform:
    """Standard augmentation for training victims: pad-4 random crop + flip (CIFAR), random-resized crop (ImageNet)."""

    def __init__(self, info: DatasetInfo):
        self.info = info
        self.hw = info.image_shape[1:]
        self.imagenet_style = info.name == "ImageNet"
        if self.imagenet_style:
            self.geometric = transforms.Compose(
                [transforms.RandomResizedCrop(self.hw), transforms.RandomHorizontalFlip()]
            )
        else:
            self.geometric = transforms.Compose(
                [transforms.RandomCrop(self.hw, padding=4), transforms.RandomHorizontalFlip()]
            )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if not self.imagenet_style:
            img = _resize_crop(img, self.hw)
        return normalize(TF.to_tensor(self.geometric(img)), self.info)


def load_image(path: str | Path, stats: str | DatasetInfo = "CIFAR10") -> torch.Tensor:
    """Load one user image as a normalised ``[C,H,W]`` tensor of the shape of ``stats``.

    Any PIL mode becomes RGB; the shorter side is resized (bicubic) to fit, then centre-cropped, so the whole
    subject stays in view (unlike the 256->224 evaluation pipeline, which trims a border).
    """
    info = dataset_info(stats)
    img = _resize_crop(
        _open_rgb(path), info.image_shape[1:], interpolation=transforms.InterpolationMode.BICUBIC
    )
    return normalize(TF.to_tensor(img), info)


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------


class LabelledDataset(Dataset):
    """Base: items ``(normalised image, int label)``; ``.info`` and ``.labels`` available without decoding."""

    def __init__(self, name: str, info: DatasetInfo, labels: Sequence[int]):
        self.name = name
        self.info = info
        self.labels: list[int] = [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)}, stats={self.info.name!r})"


class ImageFileDataset(LabelledDataset):
    """Images read lazily from a list of files (embedded samples, image folders)."""

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        files: Sequence[Path],
        labels: Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor],
    ):
        super().__init__(name, info, labels)
        if len(files) != len(self.labels):
            raise ValueError("files and labels differ in length")
        self.files = [Path(f) for f in files]
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(_open_rgb(self.files[index])), self.labels[index]


class TorchvisionDataset(LabelledDataset):
    """Wrap a torchvision data set that yields PIL images and has ``.targets``."""

    def __init__(self, name: str, info: DatasetInfo, base, transform: Callable[[Image.Image], torch.Tensor]):
        super().__init__(name, info, base.targets)
        self.base = base
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[index]
        return self.transform(_to_rgb(img)), int(label)


def _check_split(split: str, train_augment: bool) -> str:
    """Normalise the split name ("test" is accepted as an alias of "val")."""
    s = split.lower()
    if s == "test":
        s = "val"
    if s not in ("val", "train"):
        raise ValueError(f"unknown split {split!r}; valid: 'val' (alias 'test') or 'train'")
    if train_augment and s != "train":
        raise ValueError("train_augment=True only applies to split='train'")
    return s


def _check_stats(stats: str | DatasetInfo | None, own: str, source: str) -> DatasetInfo:
    """Fixed-source data sets are normalised with their own constants; refuse a mismatching request."""
    info = DATASETS[own]
    if stats is not None and dataset_info(stats) != info:
        raise ValueError(f"{source} is normalised with {own} statistics; got stats={stats!r}")
    return info


def _embedded(
    key: str, prefix: str, ext: str, split: str, stats, train_augment: bool, root
) -> ImageFileDataset:
    """The 20 embedded test images of one data set, sorted by their test-set index."""
    name = _EMBEDDED_PREFIX + key
    if _check_split(split, train_augment) != "val":
        raise ValueError(f"{name} holds only test images; use split='val'")
    info = _check_stats(stats, key, name)
    folder = embedded_data_dir()
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_(\d+)\.{ext}$")
    found = []
    for f in folder.iterdir():
        m = pattern.match(f.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), f))
    if not found:
        raise FileNotFoundError(f"no {prefix}_*.{ext} images in {folder}: pip install foolbox==3.3.4")
    found.sort()
    return ImageFileDataset(
        name, info, [f for _, _, f in found], [y for _, y, _ in found], _EvalTransform(info)
    )


def _torchvision_cifar(key: str, split: str, stats, train_augment: bool, root) -> TorchvisionDataset:
    """torchvision CIFAR10/100, downloaded once (:func:`invgrad.download.download_cifar`: per-read timeout,
    checksums); offline it fails within seconds with the alternatives."""
    import torchvision.datasets as tvd

    s = _check_split(split, train_augment)
    info = _check_stats(stats, key, key)
    root = Path(root) if root is not None else default_root()
    cls = tvd.CIFAR10 if key == "CIFAR10" else tvd.CIFAR100
    try:
        download_cifar(key, root)
        base = cls(str(root), train=(s == "train"), download=False)
    except (OSError, RuntimeError) as err:  # DataUnavailableError is a RuntimeError
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise DataUnavailableError(
            f"{key} is not under {root} and could not be downloaded ({reason}); offline alternatives: "
            f"{_EMBEDDED_PREFIX}{key} (20 images, offline), an image folder via {_FOLDER_PREFIX}<path>"
        ) from err
    transform = _TrainTransform(info) if train_augment else _EvalTransform(info)
    return TorchvisionDataset(key, info, base, transform)


_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SPLIT_DIRS = {"val": ("val", "test"), "train": ("train",)}


def _image_folder(path: str, split: str, stats, train_augment: bool, root) -> ImageFileDataset:
    """An ImageFolder layout ``<path>/<class>/**/<image>``.

    If ``<path>`` only holds split folders (``train``/``test``/``val``), the one for ``split`` is used, so that
    ``cifar10-jpeg`` does not silently become a 2-class data set. When every class folder is a class name of
    ``stats`` (e.g. the CIFAR-10 folders), labels are those names' standard indices even for a subset of
    classes; otherwise labels are the alphabetical folder order (as in torchvision's ImageFolder).
    """
    s = _check_split(split, train_augment)
    if stats is None:
        raise ValueError(
            f"{_FOLDER_PREFIX}{path} needs stats= (one of {', '.join(DATASETS)}) for normalisation"
        )
    stats_info = dataset_info(stats)
    folder = Path(path).expanduser()
    if root is not None and not folder.is_absolute():
        folder = Path(root) / folder
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs and set(subdirs) <= {"train", "test", "val"}:
        chosen = next((d for d in _SPLIT_DIRS[s] if d in subdirs), None)
        if chosen is None:
            raise FileNotFoundError(
                f"image folder {folder} has splits {subdirs} but none for split={split!r}"
            )
        folder = folder / chosen
        subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise ValueError(f"image folder {folder} has no class subfolders (expected <folder>/<class>/<image>)")

    names = stats_info.class_names
    if names is not None and set(subdirs) <= set(names):
        class_to_idx = {c: names.index(c) for c in subdirs}
        info = stats_info
    else:
        class_to_idx = {c: i for i, c in enumerate(subdirs)}
        num_classes = stats_info.num_classes if len(subdirs) == stats_info.num_classes else len(subdirs)
        info = replace(stats_info, num_classes=num_classes, class_names=tuple(subdirs))

    files, labels = [], []
    for c in subdirs:
        for f in sorted((folder / c).rglob("*")):
            if f.suffix.lower() in _IMAGE_EXTENSIONS and f.is_file():
                files.append(f)
                labels.append(class_to_idx[c])
    if not files:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(_IMAGE_EXTENSIONS)})")
    transform = _TrainTransform(info) if train_augment else _EvalTransform(info)
    return ImageFileDataset(f"{_FOLDER_PREFIX}{folder}", info, files, labels, transform)


# name -> factory(split, stats, train_augment, root)
_SOURCES: dict[str, Callable[..., LabelledDataset]] = {
    "embedded-CIFAR10": lambda *a: _embedded("CIFAR10", "cifar10", "png", *a),
    "embedded-CIFAR100": lambda *a: _embedded("CIFAR100", "cifar100", "png", *a),
    "embedded-ImageNet": lambda *a: _embedded("ImageNet", "imagenet", "jpg", *a),
    "CIFAR10": lambda *a: _torchvision_cifar("CIFAR10", *a),
    "CIFAR100": lambda *a: _torchvision_cifar("CIFAR100", *a),
}


def valid_dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset` (plus the ``image-folder:<path>`` form)."""
    return [*_SOURCES, f"{_FOLDER_PREFIX}<path>"]


def source_root(source: str, data_root: str | Path) -> str | Path | None:
    """The ``root=`` to pass :func:`load_dataset` for a configured source: image folders are given relative to the
    project (None); every other source downloads into or reads from ``data_root``."""
    return None if source.lower().startswith(_FOLDER_PREFIX) else data_root


def load_dataset(
    name: str,
    split: str = "val",
    root: str | Path | None = None,
    stats: str | DatasetInfo | None = None,
    train_augment: bool = False,
) -> LabelledDataset:
    """Single entry point for all sources (see module docstring); ``name`` is matched case-insensitively.

    ``root``: download folder for torchvision sources (default ``<project>/data/raw``); for image folders a base
    for relative paths. ``stats``: normalisation name, required for image folders, optional check otherwise.
    """
    if name.lower().startswith(_FOLDER_PREFIX):
        path = name[len(_FOLDER_PREFIX) :]
        if not path:
            raise ValueError(f"{_FOLDER_PREFIX}<path> needs a path")
        return _image_folder(path, split, stats, train_augment, root)
    for key, factory in _SOURCES.items():
        if key.lower() == name.lower():
            return factory(split, stats, train_augment, root)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(valid_dataset_names())}")


# --------------------------------------------------------------------------------------------------------------
# Training data: one resolution order
# --------------------------------------------------------------------------------------------------------------

NO_TRAINING_DATA = "not run: needs the {dataset} training split"
# How a user without network access supplies each training split (named in the 'not run' message).
_ARCHIVE_REMEDY = {
    "CIFAR10": "an archive with `make CIFAR10_ARCHIVE=<path>/cifar10-jpeg.tar.gz`",
    "CIFAR100": "an archive via data.archives.CIFAR100",
}


@dataclass(frozen=True)
class TrainingSource:
    """A resolved training split: ``source`` for :func:`load_dataset` (``None``: unavailable, see ``reason``)."""

    dataset: str
    source: str | None
    origin: str = ""  # where it came from, for the victim's metadata and the report
    reason: str = ""  # one line: why it is unavailable and how to supply it

    @property
    def available(self) -> bool:
        return self.source is not None


def _class_problem(folder: Path, info: DatasetInfo) -> str:
    """'' when every split folder holds one folder per class of ``info``; else what is wrong.

    A CIFAR-10 copy missing a class folder would otherwise train a 9-class victim without a word.
    """
    subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    splits = (
        [folder / d for d in subdirs] if subdirs and set(subdirs) <= {"train", "test", "val"} else [folder]
    )
    for split in splits:
        classes = {d.name for d in split.iterdir() if d.is_dir() and not d.name.startswith(".")}
        expected = set(info.class_names) if info.class_names else None
        missing = sorted(expected - classes) if expected and classes <= expected else []
        if missing:
            return (
                f"image folder {split} lacks {len(missing)} of the {info.num_classes} {info.name} class folders "
                f"({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}): refused, a partial copy would "
                "train a victim on fewer classes"
            )
        if len(classes) != info.num_classes:
            return (
                f"image folder {split} has {len(classes)} class folders, {info.name} has {info.num_classes}"
            )
    return ""


def resolve_training_source(
    dataset: str,
    configured: str | None,
    archive: str | Path | None = None,
    root: str | Path | None = None,
    download: bool = True,
    fetch: bool = True,
) -> TrainingSource:
    """The one resolution order for a training split (used by the DAG's decode_split and so by ``dvc repro``):

    1. the image folder that ``configured`` names (``image-folder:<path>``), unpacked from ``archive`` first when
       only the archive exists; a folder lacking a class is refused, not used as a smaller label space;
    2. otherwise torchvision's ``dataset`` downloaded into ``root`` (when ``download``, or when ``configured`` is
       the torchvision name itself);
    3. otherwise unavailable, ``reason`` naming both ways to supply it.

    ``fetch=False`` only says what would be used (no extraction, no network): the workflow's start-up note.
    """
    info = dataset_info(dataset)
    root = Path(root) if root is not None else default_root()
    remedy = (
        f"to supply it, give {_ARCHIVE_REMEDY[info.name]} or an image folder (data.train.{info.name}: "
        f"image-folder:<path>), or network access for torchvision's download into {root}"
    )

    def unavailable(detail: str) -> TrainingSource:
        return TrainingSource(
            info.name, None, reason=f"{NO_TRAINING_DATA.format(dataset=info.name)} ({detail}); {remedy}"
        )

    tried = []
    folder = (
        Path(configured[len(_FOLDER_PREFIX) :]).expanduser()
        if configured and configured.lower().startswith(_FOLDER_PREFIX)
        else None
    )
    has_archive = bool(archive) and Path(archive).is_file()
    if folder is not None:
        if not folder.is_dir() and has_archive:
            if not fetch:
                return TrainingSource(
                    info.name, configured, f"image folder {folder}, unpacked from {archive}"
                )
            try:
                extract_archive(archive, root)
            except DataUnavailableError as error:
                return unavailable(str(error))
            if not folder.is_dir():
                return unavailable(f"archive {archive} holds no folder {folder}")
        if folder.is_dir():
            if problem := _class_problem(folder, info):
                return unavailable(problem)
            origin = f"image folder {folder}" + (f" (from {archive})" if has_archive else "")
            return TrainingSource(info.name, configured, origin)
        tried.append(f"no image folder {folder}" + (f", no archive {archive}" if archive else ""))
    if configured is not None and folder is None and configured.lower() != info.name.lower():
        raise ValueError(f"training source {configured!r}: use {info.name}, {_FOLDER_PREFIX}<path> or null")
    if not (download or (configured or "").lower() == info.name.lower()):
        return unavailable("; ".join([*tried, "download off (data.download: false)"]))
    where = root / cifar_class(info.name).base_folder
    origin = f"torchvision {info.name}, downloaded into {root}"
    if not fetch:
        return TrainingSource(
            info.name, info.name, origin if where.is_dir() else f"{origin} on first use if online"
        )
    try:
        download_cifar(info.name, root)
    except DataUnavailableError as error:
        return unavailable("; ".join([*tried, f"torchvision: {error}"]))
    return TrainingSource(info.name, info.name, origin)


# --------------------------------------------------------------------------------------------------------------
# Demo image
# --------------------------------------------------------------------------------------------------------------

# Label of the jeep demo photo in each label space (CIFAR-100 has no car class; pickup_truck is the closest).
_DEMO_LABELS = {"CIFAR10": 1, "CIFAR100": 58, "ImageNet": 609}


def demo_image(stats: str | DatasetInfo = "CIFAR10") -> tuple[torch.Tensor, int]:
    """Image and label for the paper CLI's ``--target_id -1`` (a picture from outside the data set).

    The original demo reconstructs a user photo of a car that is in no training set. That photo is not
    redistributable here, so the offline stand-in is the embedded ImageNet photo ``imagenet_06_609.jpg``
    (class 609, jeep): resized bicubic to the data set's shape, labelled automobile (1) for CIFAR-10.
    """
    info = dataset_info(stats)
    path = embedded_data_dir() / "imagenet_06_609.jpg"
    return load_image(path, info), _DEMO_LABELS[info.name]


# --------------------------------------------------------------------------------------------------------------
# Target selection
# --------------------------------------------------------------------------------------------------------------


def _labels_of(dataset) -> tuple[list[int], int | None]:
    """Labels and class count of a dataset with ``.labels`` (or of a plain label sequence)."""
    if hasattr(dataset, "labels"):
        info = getattr(dataset, "info", None)
        return [int(y) for y in dataset.labels], (info.num_classes if info is not None else None)
    return [int(y) for y in dataset], None


def consecutive_indices(dataset, start: int, count: int) -> list[int]:
    """``start, start+1, ..., start+count-1``; the paper's batches of consecutive validation images."""
    n = len(dataset)
    if count < 1 or start < 0 or start + count > n:
        raise ValueError(
            f"cannot take count={count} consecutive images from start={start}: dataset has len={n}"
        )
    return list(range(start, start + count))


def unique_label_indices(dataset, start: int, count: int) -> list[int]:
    """Walk from ``start`` and keep an image only if its label is new, until ``count`` images.

    Multi-image experiments use distinct labels so that the labels can be recovered from the gradient.
    """
    labels, num_classes = _labels_of(dataset)
    if count < 1 or start < 0 or start >= len(labels):
        raise ValueError(f"invalid request count={count}, start={start} for a dataset of len={len(labels)}")
    if num_classes is not None and count > num_classes:
        raise ValueError(
            f"cannot take count={count} images with unique labels: only {num_classes} classes exist"
        )
    taken: set[int] = set()
    picked: list[int] = []
    for i in range(start, len(labels)):
        if labels[i] not in taken:
            taken.add(labels[i])
            picked.append(i)
            if len(picked) == count:
                return picked
    raise ValueError(
        f"cannot take count={count} images with unique labels from start={start}: "
        f"only {len(picked)} unique labels found before the end (len={len(labels)})"
    )


def load_targets(dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the chosen items: images ``[N,C,H,W]`` and labels ``[N]`` (long)."""
    if len(indices) == 0:
        raise ValueError("load_targets needs at least one index")
    n = len(dataset)
    bad = [i for i in indices if not 0 <= int(i) < n]
    if bad:
        raise ValueError(f"indices {bad} out of range for a dataset of len={n}")
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([img for img, _ in items])
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.long)
    return images, labels
