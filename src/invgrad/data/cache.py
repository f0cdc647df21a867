"""The decoded-split cache (``data/cache/<dataset>-<split>.pt``) seen without torch: each split file has a status
sidecar (``<dataset>-<split>.json``: status, source, origin, sha256 or the reason it is missing), written with the
split by :func:`invgrad.data.trainset.save_split`.

A split recorded 'not run' (no local copy and no network at the time) is not a result to keep: the workflow
retries it on its next run (:func:`retry_unavailable`), so a user who comes back online, or who supplies a folder or
an archive, gets trained victims from a plain ``make`` / ``snakemake`` / ``dvc repro``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .catalog import NOT_RUN


def status_path(split_file: str | Path) -> Path:
    return Path(split_file).with_suffix(".json")


def read_status(split_file: str | Path) -> dict[str, Any] | None:
    path = status_path(split_file)
    return json.loads(path.read_text()) if path.is_file() else None


def unavailable_splits(cache_dir: str | Path) -> list[Path]:
    """Split files whose sidecar says 'not run'."""
    found = []
    for sidecar in sorted(Path(cache_dir).glob("*.json")):
        split_file = sidecar.with_suffix(".pt")
        status = read_status(split_file) or {}
        if split_file.is_file() and status.get("status") == NOT_RUN:
            found.append(split_file)
    return found


def retry_unavailable(cache_dir: str | Path, dry_run: bool = False) -> list[Path]:
    """Remove every 'not run' split (file and sidecar) so that the workflow resolves its source again; returns
    them. ``dry_run`` only lists them."""
    found = unavailable_splits(cache_dir)
    if not dry_run:
        for split_file in found:
            split_file.unlink(missing_ok=True)
            status_path(split_file).unlink(missing_ok=True)
    return found
