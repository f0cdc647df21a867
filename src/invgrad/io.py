"""Crash-safe file output and safe loading.

Outputs are written to a temporary name in the same folder and renamed, so a killed job never leaves a file
that looks finished. Tensors are loaded with ``weights_only=True``: a pickle is code, and a checkpoint or an
update file from someone else must not be able to run any.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())  # mkstemp's 0600 would survive the rename: others could not read results
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"cannot write {path}: no space left on its disk (nothing was written)"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DiskFullError(OSError):
    """A write that ran out of disk space (its temporary file is removed; the target is untouched)."""


def _umask_mode() -> int:
    """``0o666`` less this process's umask: the mode a plain ``open(path, "w")`` would have given."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def save_text(text: str, path: str | Path) -> Path:
    return _atomic_write(path, lambda tmp: tmp.write_text(text))


def save_json(data: Any, path: str | Path) -> Path:
    return save_text(json.dumps(data, indent=2, default=_jsonable, allow_nan=True) + "\n", path)


def save_csv(frame, path: str | Path) -> Path:
    """A pandas DataFrame as CSV (no index)."""
    return _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """A matplotlib figure; the format comes from ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".")
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def save_tensors(data: Any, path: str | Path) -> Path:
    return _atomic_write(path, lambda tmp: torch.save(data, tmp))


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """uint8 [H, W, 3] array → PNG."""
    return _atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def load_tensors(path: str | Path) -> Any:
    """Load a checkpoint/update file without executing pickled code; clear errors for each way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as error:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it contains pickled objects other than tensors (refused: loading them could run code)"
        raise ValueError(f"cannot load {path}: {reason}") from None


def image_grid(rows: list[list[np.ndarray]], scale: int = 4, gap: int = 2) -> np.ndarray:
    """Tile equally sized uint8 [H, W, 3] images into one picture, upscaled (nearest) for visibility."""
    height, width = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    h, w = height * scale, width * scale
    canvas = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            big = img.repeat(scale, axis=0).repeat(scale, axis=1)
            canvas[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = big
    return canvas


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """[N, C, H, W] in [0, 1] → list of uint8 [H, W, 3] (NaN shown as black)."""
    arrays = torch.nan_to_num(images.detach().cpu(), nan=0.0).clamp(0, 1).mul(255).round().byte()
    return [a.permute(1, 2, 0).numpy() for a in arrays]


class FolderBusyError(RuntimeError):
    """Another process holds the lock of an output folder."""


@contextmanager
def folder_lock(folder: str | Path):
    """Hold an exclusive ``fcntl.flock`` on ``<folder>/.lock`` for the block, so two runs never write into one
    folder at once (the last writer would win file by file). A held lock fails at once with one line; the lock
    goes with the process, so a killed run never leaves the folder locked."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderBusyError(
                f"output folder {folder} is in use by {holder}; wait for it to finish or choose another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
