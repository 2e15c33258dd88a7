"""The package's layers, held against the code: every import points down (or stays inside its
own layer), so the README's Architecture picture cannot drift from what the modules do."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gspo_cli"

# Top to bottom, as the README's Architecture section draws them. A module may import from
# its own layer or any layer after it in this list, never one before it.
LAYERS = [
    "__main__",
    "cli",
    "commands",
    "update",
    "models",
    "rollout",
    "rundir",
    "data",
    "recipe",
    "losses",
    "advantages",
    "scoring",
    "rewards",
    "base",
]


def _layer(module: str) -> str | None:
    """`gspo_cli.scoring.routing` → `scoring`; the package itself (`gspo_cli`) → None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "gspo_cli" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported gspo_cli module) for every import in the file, nested ones included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gspo_cli":  # `from gspo_cli import rewards`
                found += [(node.lineno, f"gspo_cli.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("gspo_cli")]


def _upward_imports() -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        here = _layer("gspo_cli." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        if here is None:
            continue
        for line, module in _imports(path):
            there = _layer(module)
            if there is None or there not in LAYERS:  # `__version__` from the package face
                continue
            if LAYERS.index(there) < LAYERS.index(here):
                problems.append(f"{path.relative_to(SRC)}:{line} ({here}) imports {module}")
    return problems


def test_every_top_level_part_has_a_layer() -> None:
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert modules | packages == set(LAYERS)


def test_imports_point_down_only() -> None:
    assert _upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a base module that imports the CLI is reported with its line."""
    fake = tmp_path / "gspo_cli"
    (fake / "base").mkdir(parents=True)
    (fake / "base" / "bad.py").write_text("import os\n\nfrom gspo_cli.cli.base import app\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert _upward_imports() == ["base/bad.py:3 (base) imports gspo_cli.cli.base"]
