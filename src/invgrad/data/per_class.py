"""The source ``first-per-class:<folder>``: the first k test images of every class of an image folder, with the
bit-exact embedded image substituted wherever one exists.

Why: offline, the only exact CIFAR test images are the 20 the foolbox wheel embeds (``embedded-CIFAR10``), too
few for the paper's comparisons. The CIFAR-10 image-folder archive holds the whole test split as lossy JPEGs, each
class folder numbering its files ``0000, 0001, ...`` in order of appearance in the original test split. So file j
of class c is the j-th test image of class c, and the embedded images (the first 20 test images, named
``cifar10_<index>_<label>.png``) are files ``0000…`` of their classes, in index order.

Order (fixed, documented): interleaved by number, ``(number 0: class 0, 1, …, 9), (number 1: class 0, …), …``,
so the first positions hold the lowest-numbered images of every class. With CIFAR-10 and k = 10 that gives 100
images; 16 of the first 20 positions are exact images (bird and deer have no image among the first 20 test
images), the other 4 exact ones are numbers 2 and 3 of frog and ship (positions 26, 28, 36, 38).

``dataset.exact[i]`` says whether item i is an exact image (True) or a JPEG (False); ``dataset.files[i]`` is the
file read. Substitution needs the folder's class folders to be the class names of ``stats`` (CIFAR-10 or
CIFAR-100, whose embedded images exist); otherwise every item is a JPEG and ``exact`` is all False.
"""

from __future__ import annotations

import re
from pathlib import Path

from .catalog import _EMBEDDED_PREFIX, _FIRST_PER_CLASS_PREFIX, DATASETS, FIRST_PER_CLASS_IMAGES, dataset_info
from .sources import (
    IMAGE_EXTENSIONS,
    EvalTransform,
    ImageFileDataset,
    check_split,
    embedded_data_dir,
    existing_folder,
)

PER_CLASS = FIRST_PER_CLASS_IMAGES
_SPLIT_DIRS = ("test", "val")
_EMBEDDED_FILES = {"CIFAR10": "cifar10", "CIFAR100": "cifar100"}


class FirstPerClassDataset(ImageFileDataset):
    """An :class:`ImageFileDataset` whose items also carry ``exact`` (True where the embedded exact image is used)
    and ``number`` (the file's number within its class)."""

    def __init__(self, *args, exact: list[bool], number: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        if not len(exact) == len(number) == len(self.files):
            raise ValueError("exact, number and files differ in length")
        self.exact = list(exact)
        self.number = list(number)


def embedded_exact_files(stats_name: str, folder: Path | None = None) -> dict[tuple[int, int], Path]:
    """``{(label, number within the class): file}`` of the embedded exact test images of ``stats_name``.

    The embedded images are the first test images, so the j-th one of label c (in test-index order) is number j of
    class c. Empty for a data set without embedded CIFAR images (ImageNet's are not a prefix of its split)."""
    key = _EMBEDDED_FILES.get(dataset_info(stats_name).name)
    if key is None:
        return {}
    folder = embedded_data_dir() if folder is None else Path(folder)
    pattern = re.compile(rf"^{key}_(\d+)_(\d+)\.png$")
    found = sorted(
        (int(m.group(1)), int(m.group(2)), f) for f in folder.iterdir() if (m := pattern.match(f.name))
    )
    indices = [index for index, _, _ in found]
    if indices != list(range(len(indices))):
        raise ValueError(f"the embedded {key} images in {folder} are not test images 0…{len(found) - 1}")
    out: dict[tuple[int, int], Path] = {}
    seen: dict[int, int] = {}
    for _, label, file in found:
        out[(label, seen.get(label, 0))] = file
        seen[label] = seen.get(label, 0) + 1
    return out


def _split_folder(folder: Path) -> Path:
    """``<folder>/test`` (or ``val``) when the folder holds split folders, else the folder itself."""
    for name in _SPLIT_DIRS:
        if (folder / name).is_dir():
            return folder / name
    return folder


def first_per_class(
    path: str | Path,
    stats: str = "CIFAR10",
    per_class: int = PER_CLASS,
    root: str | Path | None = None,
    embedded_folder: str | Path | None = None,
) -> FirstPerClassDataset:
    """The first ``per_class`` test images of every class of image folder ``path`` (see the module docstring),
    interleaved by number, with exact embedded images substituted; ``embedded_folder`` overrides where the
    embedded images are looked up (tests)."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    info = dataset_info(stats)
    folder = existing_folder(path, root)
    folder = _split_folder(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = info.class_names or ()
    if not classes or not set(classes) <= set(names):
        raise ValueError(
            f"{_FIRST_PER_CLASS_PREFIX}{path}: class folders {classes[:5]}… of {folder} are not "
            f"{info.name} class names (expected <folder>/test/<class>/NNNN.jpg)"
        )
    per_folder = {}
    for name in classes:
        files = sorted(
            f for f in (folder / name).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if len(files) < per_class:
            raise ValueError(
                f"class folder {folder / name} holds {len(files)} images, fewer than per_class={per_class}"
            )
        per_folder[names.index(name)] = files[:per_class]
    exact_files = embedded_exact_files(info.name, embedded_folder)
    files, labels, exact, number = [], [], [], []
    for j in range(per_class):
        for label in sorted(per_folder):
            substitute = exact_files.get((label, j))
            files.append(substitute if substitute is not None else per_folder[label][j])
            labels.append(label)
            exact.append(substitute is not None)
            number.append(j)
    return FirstPerClassDataset(
        f"{_FIRST_PER_CLASS_PREFIX}{folder}",
        info,
        files,
        labels,
        EvalTransform(info),
        exact=exact,
        number=number,
    )


def exact_count(dataset, positions) -> int | None:
    """How many of the images at ``positions`` are exact (not JPEG copies); None for a source that does not say
    (embedded and torchvision images are exact, an image folder's are what its files are)."""
    exact = getattr(dataset, "exact", None)
    return None if exact is None else sum(bool(exact[i]) for i in positions)


def load(path: str, split: str, stats, train_augment: bool, root) -> FirstPerClassDataset:
    """The :func:`invgrad.data.load_dataset` factory of ``first-per-class:<path>`` (test split only)."""
    if not path:
        raise ValueError(f"{_FIRST_PER_CLASS_PREFIX}<path> needs a path")
    if check_split(split, train_augment) != "val":
        raise ValueError(f"{_FIRST_PER_CLASS_PREFIX}{path} holds only test images; use split='val'")
    if stats is None:
        raise ValueError(
            f"{_FIRST_PER_CLASS_PREFIX}{path} needs stats= (one of {', '.join(DATASETS)}); "
            f"exact images are substituted for {', '.join(_EMBEDDED_PREFIX + k for k in _EMBEDDED_FILES)}"
        )
    return first_per_class(path, stats=stats, root=root)
