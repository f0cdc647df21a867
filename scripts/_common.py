"""Shared bits of the workflow's command lines: config loading, threads, logging, project-local caches."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
os.environ.setdefault("TORCH_HOME", str(ROOT / ".cache" / "torch"))


def load_config(paths: list[str]) -> dict:
    """Deep-merge YAML config files left to right (as ``snakemake --configfile a b`` does)."""
    import yaml

    def merge(base, extra):
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    config: dict = {}
    for path in paths:
        with open(path) as handle:
            merge(config, yaml.safe_load(handle) or {})
    return config


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spec_arg(text: str) -> dict:
    return json.loads(text)


def stage_args(description: str | None, argv=None):
    """The arguments every workflow stage takes (its spec as JSON, an output path, torch threads), parsed, with
    the thread count applied."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--spec", type=spec_arg, required=True, help="the stage's spec as JSON (from the workflow)"
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    return args
