"""figures/report.html: the replication report and every figure, with its caption, as one self-contained file.

python scripts/html_report.py --figures figures --out figures/report.html [--module package.module ...]
Built from what is committed (figures/REPORT.md and figures/<stem>.png), so it works in a fresh clone without a run;
`snakemake --report` cannot, as it needs the job metadata of a run on this machine. Captions are the experiment
modules' (invgrad.replication.registry); a figure not yet drawn is listed as missing.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path

import mistune

from invgrad.io import save_text
from invgrad.replication import registry

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.2em .4em;vertical-align:top}"
    "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:.9em;color:#333}"
)


def figure_html(png: Path, caption: str) -> str:
    if not png.is_file():
        return f"<p><code>{png.name}</code>: missing (run <code>make</code>).</p>"
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{png.stem}" src="data:image/png;base64,{data}">'
        f"<figcaption><code>{png.name}</code>: {html.escape(caption)}</figcaption></figure>"
    )


def render(figures: Path) -> str:
    """The report's HTML: REPORT.md (tables rendered), then per experiment its figures and their caption."""
    body = [mistune.html((figures / "REPORT.md").read_text())]
    for experiment in registry.experiments():
        body.append(f"<h2>Figures: {experiment.name}</h2>")
        body += [figure_html(figures / f"{stem}.png", experiment.caption) for stem in experiment.figures]
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Replication report</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--figures", default="figures")
    p.add_argument("--out", default="figures/report.html")
    p.add_argument("--module", action="append", default=[], help="an extra experiment module")
    args = p.parse_args(argv)
    figures = Path(args.figures)
    if not (figures / "REPORT.md").is_file():
        print(f"error: no {figures}/REPORT.md yet: run `make` to write it", file=sys.stderr)
        return 1
    registry.load_modules(args.module)
    save_text(render(figures), args.out)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
