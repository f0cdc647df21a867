"""Extract a training-data archive (tar.gz of an image folder) into the data root, crash-safe.

python scripts/extract_data.py --archive data/cifar10-jpeg.tar.gz --root data/raw --flag data/raw/cifar10-jpeg.extracted
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from _common import log

from invgrad.data import DataUnavailableError, extract_archive
from invgrad.io import save_text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archive", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--flag", required=True, help="file written when extraction finished")
    args = p.parse_args(argv)
    try:
        for target in extract_archive(args.archive, Path(args.root)):
            log(f"extracted {args.archive} -> {target}")
    except DataUnavailableError as error:  # one line, no traceback: replace the archive or delete it
        log(
            f"error: {error}; replace it (make CIFAR10_ARCHIVE=<path>) or delete it to use torchvision's download"
        )
        return 1
    # The flag names the archive and its content hash, so a new archive changes the flag (a DVC dependency).
    digest = hashlib.sha256()
    with open(args.archive, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    save_text(f"{args.archive}\tsha256:{digest.hexdigest()}\n", args.flag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
