"""Layers point one way: `node/` wires `scp/`, `inference/` and `sr/`, which never import it; `core/`
imports no other package of the project."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "scp", "inference", "sr", "node")
MAY_IMPORT = {"core": set(), "scp": {"core"}, "inference": {"core"}, "sr": {"core", "inference"},
              "node": {"core", "scp", "inference", "sr"}}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = {str(path.relative_to(ROOT)): sorted(others)
             for path in (ROOT / package).rglob("*.py")
             if (others := _imported_packages(path) - MAY_IMPORT[package] - {package})}
    assert wrong == {}
