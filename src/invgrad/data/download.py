"""Fetch training data onto disk: torchvision's CIFAR archives and local image-folder archives, all or nothing.

torchvision's own ``download=True`` has no timeout (a silent network hangs it) and leaves a half-written archive
behind when interrupted. Here the archive streams into a temporary file with a timeout per socket operation (no
process-wide socket default is touched), must match torchvision's MD5 (``tgz_md5``) before it is kept, is extracted
into a temporary folder and moved into place only once every file matches torchvision's per-file MD5 list. Any
failure removes what was written and raises :class:`DataUnavailableError` with one line naming the source.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

__all__ = ["DOWNLOAD_TIMEOUT_S", "DataUnavailableError", "cifar_class", "download_cifar", "extract_archive"]

DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation (connect, each read): a silent server fails within this
_CHUNK = 1 << 20
# Every way a download or an archive can fail: network errors (URLError, timeouts are OSError), a connection cut
# mid-body (IncompleteRead), a truncated or corrupt gzip/tar.
_FETCH_ERRORS = (OSError, ValueError, http.client.HTTPException)
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class DataUnavailableError(RuntimeError):
    """A data set is neither on disk nor downloadable (typically: no network)."""


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def cifar_class(key: str):
    """torchvision's class for ``CIFAR10`` / ``CIFAR100`` (its ``url``, ``tgz_md5`` and per-file MD5 lists)."""
    import torchvision.datasets as tvd

    return {"CIFAR10": tvd.CIFAR10, "CIFAR100": tvd.CIFAR100}[key]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cifar_intact(key: str, root: str | Path) -> bool:
    """Every file of torchvision's list is under ``root`` and matches its MD5 (torchvision's own check)."""
    cls = cifar_class(key)
    folder = Path(root) / cls.base_folder
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return folder.is_dir() and all((folder / n).is_file() and _md5(folder / n) == m for n, m in files)


@contextlib.contextmanager
def _lock(root: Path, name: str):
    """One download at a time per archive (the train and test decode jobs may start together)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, each job downloads into its own temporary file
        yield
        return
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        while chunk := response.read(_CHUNK):
            out.write(chunk)


def download_cifar(key: str, root: str | Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Ensure torchvision's ``key`` files are under ``root`` (downloading once); returns their folder.

    The archive is deleted after a verified extraction: the extracted files are what torchvision reads.
    """
    cls = cifar_class(key)
    root = Path(root)
    folder = root / cls.base_folder
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, cls.filename):
        if cifar_intact(key, root):
            return folder
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{cls.filename}-") as tmp:
            archive = Path(tmp) / cls.filename
            try:
                _fetch(cls.url, archive, timeout)
            except _FETCH_ERRORS as error:
                raise DataUnavailableError(
                    f"download of {cls.url} failed ({_one_line(error)}; timeout {timeout:g} s per read)"
                ) from error
            got = _md5(archive)
            if got != cls.tgz_md5:
                raise DataUnavailableError(
                    f"{cls.url} failed torchvision's checksum (md5 {got}, expected {cls.tgz_md5}): a damaged or "
                    "different file, not kept"
                )
            extract_archive(archive, Path(tmp) / "x", source=cls.url)
            if not cifar_intact(key, Path(tmp) / "x"):
                raise DataUnavailableError(
                    f"{cls.url} matched its checksum but its files fail torchvision's per-file MD5s: not kept"
                )
            if folder.exists():
                shutil.rmtree(folder)
            (Path(tmp) / "x" / cls.base_folder).rename(folder)
    return folder


def _marker(target: Path) -> Path:
    """The file beside ``target`` that says an extraction created it (and so may replace it)."""
    return target.parent / f".{target.name}.extracted"


def extract_archive(archive: str | Path, root: str | Path, source: str | None = None) -> list[Path]:
    """Unpack a ``.tar.gz`` into ``root``, all or nothing: top-level entries replace those of the same name that an
    earlier extraction created (marked by ``.<name>.extracted``); any other existing file or folder of that name
    is never touched: the extraction is refused before anything moves.

    A truncated or corrupt archive raises :class:`DataUnavailableError` and leaves ``root`` as it was.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    moved = []
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except _ARCHIVE_ERRORS as error:
            raise DataUnavailableError(
                f"archive {source or archive} is damaged or truncated ({_one_line(error)}): nothing was extracted"
            ) from error
        items = sorted(Path(tmp).iterdir())
        foreign = [
            root / i.name for i in items if (root / i.name).exists() and not _marker(root / i.name).exists()
        ]
        if foreign:
            raise DataUnavailableError(
                f"archive {source or archive} would replace {', '.join(map(str, foreign))}, which no extraction "
                "created: move it away or extract into another root (nothing was extracted)"
            )
        for item in items:
            target = root / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            item.rename(target)
            _marker(target).write_text(f"{source or archive}\n")
            moved.append(target)
    return moved
