"""Training data: one resolution order (local folder or archive, else torchvision's download, else 'not run')."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .catalog import _FOLDER_PREFIX, NO_TRAINING_DATA, DatasetInfo, dataset_info, image_folder_path
from .download import DataUnavailableError, cifar_class, download_cifar, extract_archive
from .sources import default_root

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
        f"image-folder:<path>), or network access for torchvision's download into {root}; the next run tries "
        "again"
    )

    def unavailable(detail: str) -> TrainingSource:
        return TrainingSource(
            info.name, None, reason=f"{NO_TRAINING_DATA.format(dataset=info.name)} ({detail}); {remedy}"
        )

    tried = []
    folder = image_folder_path(configured)
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
