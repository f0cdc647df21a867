"""Every ```python and ```bash example of README.md and docs/PERFORMANCE.md runs (whatever blocks they hold; none is
skipped), and the Table-1 numbers the README quotes are the committed report's.

What runs, and the only changes made to a block (documented in docs/DESIGN.md too):
- Iterations are cut: ``max_iterations=<n>`` (Python) and ``--max_iterations <n>`` (bash) become
  ``INVGRAD_README_ITERATIONS`` (default 4), so the whole README runs in well under a minute. Nothing else changes.
- A block preceded by ``<!-- readme-test: dry-run -->`` (a long pipeline command) runs in its reduced form: the
  commands in DRY_RUN below are replaced by their dry runs through shims first on PATH. Any other command in such a block
  runs as written. ``conda``: where conda is not installed (as in CI), the environment file is checked to parse and
  to install through the lock file instead.
- Any other marker, or a block of another language tagged ``python``/``bash``, fails the test.
- A block that calls one of SLOW_COMMANDS (a dry run of the whole DAG, DVC, an install) is in the slow tier.
Python blocks run in a temporary folder with the project's ``src`` first on PYTHONPATH; bash blocks run in a
temporary copy of the project's tracked files, so nothing they write lands in the checkout.
"""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/PERFORMANCE.md")
# Blocks calling these take tens of seconds even as dry runs (the whole DAG, a new venv's resolver, DVC): slow tier.
SLOW_COMMANDS = ("snakemake", "dvc", "pip", "conda")
ITERATIONS = int(os.environ.get("INVGRAD_README_ITERATIONS", "4"))
FENCE = re.compile(
    r"(?:^<!--\s*readme-test:\s*(?P<mode>[\w-]+)\s*-->\s*\n(?:\s*\n)*)?^```(?P<lang>python|bash)\s*\n"
    r"(?P<code>.*?)^```\s*$",
    re.M | re.S,
)
CUTS = {
    "python": (re.compile(r"max_iterations=\d+"), f"max_iterations={ITERATIONS}"),
    "bash": (re.compile(r"--max_iterations[ =]\d+"), f"--max_iterations {ITERATIONS}"),
}
# Shims of a dry-run block: command -> its reduced form ("$REAL" is the real program, "$@" the README's arguments).
DRY_RUN = {
    "make": '"$REAL" -n "$@"',
    # The first snakemake call of a block is a full dry run of the DAG (--report needs finished results, so its
    # reduced form is the dry run of the DAG it reports on); later calls in the block, to keep the test fast
    # (~9 s each), are checked by Snakemake's own argument parser only.
    "snakemake": 'args=(); while [ $# -gt 0 ]; do if [ "$1" = --report ]; then shift 2; else args+=("$1"); shift; fi; '
    'done; if [ -e "$SHIMS/.dag-checked" ]; then exec "$PYTHON" -c "import sys; from snakemake.cli import '
    'get_argument_parser as p; p().parse_args(sys.argv[1:])" "${args[@]}"; fi; touch "$SHIMS/.dag-checked"; '
    'exec "$REAL" --dry-run --quiet "${args[@]}"',
    "dvc": 'case "$1" in repro) shift; "$REAL" repro --dry "$@";; *) "$REAL" "$@" --help >/dev/null;; esac',
    "pytest": '"$REAL" --collect-only -q "$@" >/dev/null',
    "conda": 'if [ -n "$REAL" ]; then "$REAL" "$@" --dry-run; else "$PYTHON" "$CHECK_ENV" "$@"; fi',
    # a new venv is a folder whose python is the test's (pytest: --collect-only) and whose pip dry-runs
    "python3": 'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; ln -sf "$SHIMS/venv-python" "$3/bin/python"; '
    'ln -sf "$SHIMS/venv-pip" "$3/bin/pip"; else exec "$REAL" "$@"; fi',
    "venv-python": 'if [ "$1 $2" = "-m pytest" ]; then shift 2; exec "$PYTHON" -m pytest --collect-only -p no:cacheprovider "$@" >/dev/null; else exec "$PYTHON" "$@"; fi',
    "venv-pip": 'exec "$PYTHON" -m pip "$@" --dry-run --quiet',
    "jupyter": 'if [ "$1" = lab ]; then test -d "$2"; exec "$REAL" lab --version >/dev/null; else exec "$REAL" "$@"; fi',
    # a script of the project: its command line parses (--help), no attack runs
    "python": 'if [ -f "$1" ]; then exec "$PYTHON" "$1" --help >/dev/null; else exec "$PYTHON" "$@"; fi',
}
CHECK_ENV = """import sys, yaml
from pathlib import Path
args = sys.argv[1:]
path = Path(args[args.index("-f") + 1])
pip = next(d["pip"] for d in yaml.safe_load(path.read_text())["dependencies"] if isinstance(d, dict))
lock = next(line[3:] for line in pip if line.startswith("-c "))
assert (path.parent / lock).is_file(), lock
print("conda not installed: checked", path, "installs through", lock)
"""


def _blocks(document: str) -> list:
    text = (ROOT / document).read_text()
    blocks = [
        (document, m["lang"], m["mode"] or "run", m["code"], text[: m.start("code")].count("\n") + 1)
        for m in FENCE.finditer(text)
    ]
    fences = len(re.findall(r"^```(?:python|bash)\s*$", text, re.M))
    assert len(blocks) == fences, f"{document}: every python/bash fence must be found"
    return blocks


def _param(block) -> pytest.param:
    document, lang, _, code, line = block
    slow = re.search(rf"(?<![\w/.-])({'|'.join(SLOW_COMMANDS)})(?![\w.-])", code)
    return pytest.param(*block, id=f"{document}:{lang}@line{line}", marks=[pytest.mark.slow] if slow else [])


BLOCKS = [block for document in DOCUMENTS for block in _blocks(document)]
assert any(block[0] == "README.md" for block in BLOCKS), "README.md has no python/bash block"


def _project_copy(tmp_path: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    copy = tmp_path / "project"
    for name in filter(None, files.stdout.split("\0")):
        if name.startswith(("figures/", "benchmarks/out/")) or not (ROOT / name).is_file():
            continue
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    return copy


def _shims(tmp_path: Path, bin_dir: Path) -> Path:
    shims = tmp_path / "shims"
    shims.mkdir()
    (tmp_path / "check_env.py").write_text(CHECK_ENV)
    for name, body in DRY_RUN.items():
        real = shutil.which(name, path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}") or ""
        script = shims / name
        script.write_text(
            f'#!/usr/bin/env bash\nset -e\nREAL="{real}"\nPYTHON="{sys.executable}"\n'
            f'CHECK_ENV="{tmp_path / "check_env.py"}"\nSHIMS="{shims}"\n{body}\n'
        )
        script.chmod(0o755)
    return shims


@pytest.mark.parametrize("document, lang, mode, code, line", [_param(b) for b in BLOCKS])
def test_readme_block_runs(document, lang, mode, code, line, tmp_path):
    assert mode in ("run", "dry-run"), f"{document} line {line}: unknown readme-test marker {mode!r}"
    pattern, replacement = CUTS[lang]
    code = pattern.sub(replacement, code)
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
    }
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "src"), str(ROOT / "scripts"), env.get("PYTHONPATH")])
    )
    if lang == "python":
        assert mode == "run", f"{document} line {line}: a python block has no dry run"
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    else:
        cwd = _project_copy(tmp_path)
        if mode == "dry-run":
            shims = _shims(tmp_path, bin_dir)
            env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
            if not (
                cwd / ".venv"
            ).exists():  # `. .venv/bin/activate`: the test's environment is the active one
                (cwd / ".venv" / "bin").mkdir(parents=True)
                (cwd / ".venv" / "bin" / "activate").write_text("# the README test's environment is active\n")
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", code],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, (
        f"{document} line {line} ({mode}):\n{code}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr\n{done.stderr[-3000:]}"
    )


CLAIMS, REPORT = ROOT / "figures" / "claims.csv", ROOT / "figures" / "REPORT.md"
NUMBER = r"\d+\.\d+"


def _results_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Results\b.*?(?=^## )", text, re.M | re.S)
    assert match, "README.md has no '## Results' section"
    return match.group(0).replace("−", "-")


def _claimed_cells() -> dict[str, dict[str, str]]:
    """What figures/claims.csv states per cell: its mean PSNR ('mean'), its spread where stated ('std'), and the
    paper's number where a claim compares with it ('paper'); a cell stated twice must be stated alike."""
    cells: dict[str, dict[str, str]] = {}

    def state(cell: str, key: str, value: str) -> None:
        assert cells.setdefault(cell, {}).setdefault(key, value) == value, (cell, key, value)

    with CLAIMS.open(newline="") as handle:
        for row in csv.DictReader(handle):
            names, ours = row["cells"].split(" vs "), row["ours"]
            # "; DLG ... below 18 dB" may follow the pair
            pair = re.match(rf"({NUMBER}) vs ({NUMBER}) dB(?:;|$)", ours)
            alone = re.match(rf"({NUMBER})(?: ± ({NUMBER}))? dB", ours)
            if len(names) == 2 and pair:
                state(names[0], "mean", pair[1])
                state(names[1], "mean", pair[2])
            elif len(names) == 1 and alone:
                state(names[0], "mean", alone[1])
                if alone[2]:
                    state(names[0], "std", alone[2])
                if paper := re.match(rf"({NUMBER}) ± ({NUMBER}) dB", row["paper"]):
                    state(names[0], "paper", paper[1])
                    state(names[0], "paper_std", paper[2])
    return cells


def _readme_table() -> list[tuple[str, str, str]]:
    """(row label, column header, cell text) of the README's Table-1 table."""
    rows = [line for line in _results_section().splitlines() if line.startswith("|")]
    assert len(rows) >= 4, "README.md's results table is missing"
    split = [[part.strip() for part in line.strip("|").split("|")] for line in rows]
    header, body = split[0], [r for r in split[2:] if r]
    return [
        (row[0], column, value) for row in body for column, value in zip(header[1:], row[1:], strict=True)
    ]


def test_readme_table1_numbers_are_those_of_claims_csv():
    claimed, checked = _claimed_cells(), 0
    for label, column, value in _readme_table():
        state = "untrained" if column.startswith("untrained") else "trained"
        assert column.startswith(("untrained", "trained")), column
        if value == "not published":
            continue
        number = re.fullmatch(rf"({NUMBER})(?: ± ({NUMBER}))? dB", value)
        assert number, f"README Table 1, {label} / {column}: {value!r} is not 'mean [± std] dB'"
        if "paper" in label:  # the paper's number, as claims.csv quotes it for the proposed untrained cell
            stated = claimed[f"LeNetZhu_{state}_ours"]
            keys = ("paper", "paper_std")
        else:
            method = re.search(r"`(\w+)`", label)
            assert method, f"README Table 1 row {label!r} names no method in backticks"
            stated = claimed.get(f"LeNetZhu_{state}_{method[1]}", {})
            keys = ("mean", "std")
        assert number[1] == stated.get(keys[0]), (label, column, value, stated)
        if number[2]:
            assert number[2] == stated.get(keys[1]), (label, column, value, stated)
        checked += 1
    # 2 methods × 2 victims + the paper's number
    assert checked >= 5, f"only {checked} numbers of README's Table 1 checked"


def test_readme_results_quote_only_the_report():
    """Every two-decimal number of the README's results (table and text, with its sign) is written in
    figures/REPORT.md or claims.csv, and the trained victim's accuracy is the report's."""
    section = _results_section()
    source = REPORT.read_text() + CLAIMS.read_text()
    stated = set(re.findall(r"(?<![\d.])[+-]?\d+\.\d\d(?!\d)", source))
    stated |= {number.lstrip("+") for number in stated}
    quoted = re.findall(r"(?<![\d.])[+-]?\d+\.\d\d(?!\d)", section)
    assert quoted, "README's results quote no number"
    assert not [q for q in quoted if q not in stated], "README quotes numbers that the report does not state"
    # the trained victims' held-out accuracy: one number, or the range over the victim seeds ("61.5–64.6 %")
    accuracy = re.search(r"trained \((\d+\.\d)(?:–(\d+\.\d))? %\)", section)
    victims = re.findall(r"CIFAR10/LeNetZhu_e\d+(?:_s\d+)? .*\| (0\.\d+) on \d+ \|", REPORT.read_text())
    assert accuracy and victims, "the trained victims' accuracy is missing from README.md or REPORT.md"
    shown = [f"{100 * float(v):.1f}" for v in sorted(victims, key=float)]
    assert (accuracy[1], accuracy[2] or accuracy[1]) == (shown[0], shown[-1]), (accuracy.groups(), shown)


def test_readme_stays_a_users_page():
    """At most 200 lines and no commit hashes: measurements and history live in docs/PERFORMANCE.md and
    CHANGELOG.md, where they can be dated."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200, f"README.md has {len(text.splitlines())} lines (at most 200)"
    hashes = [
        h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"\d", h) and re.search(r"[a-f]", h)
    ]
    assert not hashes, f"README.md names commits {hashes}: move that history to CHANGELOG.md"
