"""Extract a training-data archive (tar.gz of an image folder) into the data root, crash-safe.

python scripts/extract_data.py --archive data/cifar10-jpeg.tar.gz --root data/raw --flag data/raw/cifar10-jpeg.extracted
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from _common import log

from invgrad.io import save_text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archive", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--flag", required=True, help="file written when extraction finished")
    args = p.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp, tarfile.open(args.archive) as tar:
        tar.extractall(tmp, filter="data")
        for item in Path(tmp).iterdir():
            target = root / item.name
            if target.exists():
                shutil.rmtree(target)
            item.rename(target)
            log(f"extracted {args.archive} -> {target}")
    # The flag names the archive and its content hash, so a new archive changes the flag (a DVC dependency).
    digest = hashlib.sha256()
    with open(args.archive, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    save_text(f"{args.archive}\tsha256:{digest.hexdigest()}\n", args.flag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
