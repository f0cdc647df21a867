"""The package layout keeps its promises: the attacker reads only the training loss from the user's side, and the
torch-free parts (data catalog, config) import without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "invgrad"
SHARED_WITH_USER = {"invgrad.user.loss", "invgrad.user.loss.training_loss"}


def _imports(path: Path, package_root: Path = SRC) -> set[str]:
    """Absolute module names a file under ``package_root`` (the ``invgrad`` folder) imports, relative imports
    resolved against the file's package; ``from a import b`` yields both ``a`` and ``a.b``."""
    package = ".".join(path.relative_to(package_root.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def forbidden_user_imports(package_root: Path = SRC) -> dict[str, set[str]]:
    """Per file of ``<package_root>/attack`` (the server side), what it imports from ``invgrad.user`` beyond the
    training loss; empty when the layout keeps its promise."""
    found = {}
    for path in sorted((package_root / "attack").rglob("*.py")):
        from_user = {
            m for m in _imports(path, package_root) if m == "invgrad.user" or m.startswith("invgrad.user.")
        }
        if from_user - SHARED_WITH_USER:
            found[path.relative_to(package_root).as_posix()] = from_user - SHARED_WITH_USER
    return found


def test_the_attacker_imports_only_the_training_loss_from_the_user():
    assert (SRC / "attack" / "fedavg.py").is_file()  # the scan has files to read
    assert "invgrad.user.loss.training_loss" in _imports(
        SRC / "attack" / "fedavg.py"
    )  # and sees the allowed one
    assert forbidden_user_imports() == {}


def test_the_import_scan_sees_a_forbidden_import(tmp_path):
    """A package tree whose attacker imports the user's defenses and update, in each form Python allows, is
    flagged file by file; the training loss alone is not."""
    root = tmp_path / "invgrad"
    files = {
        "attack/__init__.py": "",
        "attack/allowed.py": "from ..user.loss import training_loss\nimport invgrad.user.loss\n",
        "attack/relative.py": "from ..user import defenses\n",
        "attack/absolute.py": "import invgrad.user.fedavg as update\n",
        "attack/deep/__init__.py": "",
        "attack/deep/nested.py": "from ...user.gradient import shared_gradient\n",
        "attack/function_local.py": "def f():\n    from invgrad.user import defenses\n    return defenses\n",
        "user/__init__.py": "",
        "user/loss.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert forbidden_user_imports(root) == {
        "attack/relative.py": {"invgrad.user", "invgrad.user.defenses"},
        "attack/absolute.py": {"invgrad.user.fedavg"},
        "attack/deep/nested.py": {"invgrad.user.gradient", "invgrad.user.gradient.shared_gradient"},
        "attack/function_local.py": {"invgrad.user", "invgrad.user.defenses"},
    }
    assert "invgrad.attack.engine" in _imports(
        SRC / "attack" / "reconstructor.py"
    )  # relative imports resolve


def test_catalog_and_config_import_without_torch():
    code = (
        "import sys; import invgrad; from invgrad.data import catalog; from invgrad import config; "
        "assert catalog.dataset_info('cifar10').num_classes == 10; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_seed_api_is_still_at_the_top_level():
    import invgrad

    for name in (
        "GradientReconstructor",
        "FedAvgReconstructor",
        "Defense",
        "shared_gradient",
        "local_update",
    ):
        assert callable(getattr(invgrad, name))
    assert set(invgrad.__all__) >= {"metrics", "make_config", "PRESETS", "invert_linear"}
