#!/usr/bin/env python
"""The paper's command line: reconstruct a user's image from its gradient. See `--help`."""

import sys

from invgrad.cli import main

if __name__ == "__main__":
    sys.exit(main())
