"""The package layout keeps its promises: the attacker reads only the training loss from the user's side, and the
torch-free parts (data catalog, config) import without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "invgrad"
SHARED_WITH_USER = {"invgrad.user.loss"}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
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


def test_the_attacker_imports_only_the_training_loss_from_the_user():
    for path in sorted((SRC / "attack").glob("*.py")):
        from_user = {m for m in _imports(path) if m == "invgrad.user" or m.startswith("invgrad.user.")}
        assert from_user <= SHARED_WITH_USER | {"invgrad.user.loss.training_loss"}, (path.name, from_user)


def test_the_import_scan_sees_a_forbidden_import(tmp_path):
    fake = SRC / "attack" / "reconstructor.py"
    assert "invgrad.attack.engine" in _imports(fake)  # relative imports resolve
    assert "invgrad.user.loss.training_loss" in _imports(SRC / "attack" / "fedavg.py")


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
