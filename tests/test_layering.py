"""Dependencies point inward: the core and steering do no I/O (DESIGN.md §2).

Parses every module's imports with ``ast`` (ruff's banned-api is project-wide, so
per-package boundaries are checked here).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {"trio", "httpx", "httpcore", "h11", "yaml", "prometheus_client", "ssl", "socket"}


def imported_roots(path: Path) -> set[str]:
    """Top-level module names that ``path`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


CLUSTER_PURE = [
    p
    for p in modules("lb", "cluster")
    if p.stem in {"votes", "members", "tally", "fingerprint", "memory"}
]


@pytest.mark.parametrize(
    "path", modules("lb", "core") + modules("steering") + CLUSTER_PURE, ids=str
)
def test_core_and_steering_import_no_io(path: Path) -> None:
    bad = {n for n in imported_roots(path) if n.split(".")[0] in IO_MODULES}
    assert not bad, f"{path.relative_to(ROOT)} imports I/O modules {sorted(bad)}"


@pytest.mark.parametrize("path", modules("lb", "core"), ids=str)
def test_core_imports_only_stdlib_and_config(path: Path) -> None:
    project = {n for n in imported_roots(path) if n.split(".")[0] in {"lb", "steering", "monitors"}}
    allowed = {n for n in project if n.startswith(("lb.core", "lb.config"))}
    assert project == allowed, f"{path.relative_to(ROOT)} imports {sorted(project - allowed)}"


@pytest.mark.parametrize("path", modules("lb", "config"), ids=str)
def test_config_does_not_import_drivers(path: Path) -> None:
    bad = {
        n
        for n in imported_roots(path)
        if n.split(".")[0] in {"trio", "httpx", "h11", "prometheus_client", "steering", "monitors"}
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
