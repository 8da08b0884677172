"""What the package imports at module level is what pyproject.toml declares."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def packaged_dirs() -> list[Path]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({REPO / p.rstrip("*") for p in patterns})


def module_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # lazy imports inside functions excluded
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def requirement_names(deps: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", dep)[0].lower().replace("_", "-") for dep in deps}


def module_level_imports_full(path: Path) -> set[str]:
    """Full dotted names of the modules ``path`` imports at module level."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_every_module_level_third_party_import_of_the_package_is_a_declared_dependency():
    """Core modules import core dependencies only; a module that imports an optional
    extra's package at module level (the pgvector store) is itself imported lazily."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"])
    extras = requirement_names([dep for name, deps in project["optional-dependencies"].items()
                                if name != "dev" for dep in deps])
    ours = {d.name for d in packaged_dirs()}
    dists = packages_distributions()
    undeclared, extra_modules = {}, set()
    for folder in packaged_dirs():
        for path in folder.rglob("*.py"):
            for name in module_level_imports(path) - ours - set(sys.stdlib_module_names):
                owners = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
                if owners & extras and not owners & declared:
                    extra_modules.add(".".join(path.relative_to(REPO).with_suffix("").parts))
                elif not owners & declared:
                    undeclared[f"{path.relative_to(REPO)}: {name}"] = owners
    assert undeclared == {}
    eager = {f"{path.relative_to(REPO)}: {module}"
             for folder in packaged_dirs() for path in folder.rglob("*.py")
             for module in extra_modules if module in module_level_imports_full(path)}
    assert eager == set()  # an extra's module is never imported at module level
    assert "bench" not in ours  # bench/ imports dev-only psutil; it runs from the checkout
