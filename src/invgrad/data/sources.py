"""Data sources and normalisation.

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
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms

from .catalog import _EMBEDDED_PREFIX, _EVAL_RESIZE, _FOLDER_PREFIX, DATASETS, DatasetInfo, dataset_info
from .catalog import _FIRST_PER_CLASS_PREFIX as _PER_CLASS
from .download import DataUnavailableError, download_cifar


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


DATA_ENV = "INVGRAD_DATA"


def default_root() -> Path:
    """Where torchvision data sets are downloaded to and read from when no ``root`` is given: ``$INVGRAD_DATA`` if
    set, else ``data/raw`` under the current working directory (the project's own layout when run from its root).
    Resolved at each call, never from where the package is installed, so the library works outside a checkout."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured).expanduser() if configured else Path.cwd() / "data" / "raw"


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
    except Image.DecompressionBombError as err:  # PIL's guard against images that decode to gigabytes
        raise ValueError(
            f"refusing image file {path}: {err} (a decompression bomb, or an image larger than "
            f"{Image.MAX_IMAGE_PIXELS} pixels)"
        ) from None
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


class EvalTransform:
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


def check_split(split: str, train_augment: bool) -> str:
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
    if check_split(split, train_augment) != "val":
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
        name, info, [f for _, _, f in found], [y for _, y, _ in found], EvalTransform(info)
    )


def _torchvision_cifar(key: str, split: str, stats, train_augment: bool, root) -> TorchvisionDataset:
    """torchvision CIFAR10/100, downloaded once (:func:`invgrad.download.download_cifar`: per-read timeout,
    checksums); offline it fails within seconds with the alternatives."""
    import torchvision.datasets as tvd

    s = check_split(split, train_augment)
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
    transform = _TrainTransform(info) if train_augment else EvalTransform(info)
    return TorchvisionDataset(key, info, base, transform)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SPLIT_DIRS = {"val": ("val", "test"), "train": ("train",)}


def existing_folder(path: str | Path, root: str | Path | None) -> Path:
    """An image folder source's folder (``~`` expanded, relative paths under ``root``); FileNotFoundError if absent."""
    folder = Path(path).expanduser()
    if root is not None and not folder.is_absolute():
        folder = Path(root) / folder
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return folder


def _image_folder(path: str, split: str, stats, train_augment: bool, root) -> ImageFileDataset:
    """An ImageFolder layout ``<path>/<class>/**/<image>``.

    If ``<path>`` only holds split folders (``train``/``test``/``val``), the one for ``split`` is used, so that
    ``cifar10-jpeg`` does not silently become a 2-class data set. When every class folder is a class name of
    ``stats`` (e.g. the CIFAR-10 folders), labels are those names' standard indices even for a subset of
    classes; otherwise labels are the alphabetical folder order (as in torchvision's ImageFolder).
    """
    s = check_split(split, train_augment)
    if stats is None:
        raise ValueError(
            f"{_FOLDER_PREFIX}{path} needs stats= (one of {', '.join(DATASETS)}) for normalisation"
        )
    stats_info = dataset_info(stats)
    folder = existing_folder(path, root)
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
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                files.append(f)
                labels.append(class_to_idx[c])
    if not files:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    transform = _TrainTransform(info) if train_augment else EvalTransform(info)
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
    """Names accepted by :func:`load_dataset` (plus the ``image-folder:<path>``, ``first-per-class:<path>`` forms)."""
    return [*_SOURCES, f"{_FOLDER_PREFIX}<path>", f"{_PER_CLASS}<path>"]


def source_root(source: str, data_root: str | Path) -> str | Path | None:
    """The ``root=`` to pass :func:`load_dataset` for a configured source: image folders are given relative to the
    working directory (None); every other source downloads into or reads from ``data_root``."""
    return None if source.lower().startswith((_FOLDER_PREFIX, _PER_CLASS)) else data_root


def load_dataset(
    name: str,
    split: str = "val",
    root: str | Path | None = None,
    stats: str | DatasetInfo | None = None,
    train_augment: bool = False,
) -> LabelledDataset:
    """Single entry point for all sources (see module docstring); ``name`` is matched case-insensitively.

    ``root``: download folder for torchvision sources (default :func:`default_root`: ``$INVGRAD_DATA``, else
    ``./data/raw``); for image folders a base for relative paths. ``stats``: normalisation name, required for image folders, optional check otherwise.
    """
    if name.lower().startswith(_FOLDER_PREFIX):
        path = name[len(_FOLDER_PREFIX) :]
        if not path:
            raise ValueError(f"{_FOLDER_PREFIX}<path> needs a path")
        return _image_folder(path, split, stats, train_augment, root)
    if name.lower().startswith(_PER_CLASS):
        per_class = importlib.import_module(".per_class", __package__)  # built on this module: imported late
        return per_class.load(name[len(_PER_CLASS) :], split, stats, train_augment, root)
    for key, factory in _SOURCES.items():
        if key.lower() == name.lower():
            return factory(split, stats, train_augment, root)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(valid_dataset_names())}")
