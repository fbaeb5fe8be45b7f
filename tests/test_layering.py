"""Dependencies run one way, and the pure layers do no I/O (docs/design.md, "Layers").

Parses every module's imports with ``ast`` (ruff's banned-api is project-wide, so the
boundaries between packages are checked here).  Every module of ``lb``, ``monitors`` and
``steering`` belongs to exactly one layer; a module may import its own layer and the layers
below it, never one above; and the module graph has no cycle, package ``__init__`` files
included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lb", "monitors", "steering")
IO_MODULES = {"trio", "httpx", "httpcore", "h11", "yaml", "prometheus_client", "ssl", "socket"}

# Lowest first.  A module belongs to the first layer with a matching prefix (the exact name, or
# the name followed by a dot), so list a subpackage's exceptions before the subpackage.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("config", ("lb.__init__", "lb.config")),
    ("core", ("lb.core",)),
    (
        "policies",
        (
            "steering",
            "monitors.reasons",
            "monitors.judge",
            "monitors.spec",
            "lb.cluster.votes",
            "lb.cluster.members",
            "lb.cluster.tally",
            "lb.cluster.fingerprint",
            "lb.cluster.memory",
        ),
    ),
    ("engine", ("lb.engine",)),
    (
        "drivers",
        (
            "monitors",
            "lb.lifecycle",
            "lb.children",
            "lb.logs",
            "lb.metrics",
            "lb.proxy",
            "lb.admin",
            "lb.admin_guard",
            "lb.files",
            "lb.status_page",
            "lb.connector",
            "lb.access",
            "lb.cluster",
            "lb.sim",
            "lb.workers",
            "lb.statefile",
            "lb.streams",
        ),
    ),
    ("service", ("lb.service", "lb.demo", "lb.rehearse", "lb.rehearse.edge")),
    ("commands", ("lb.commands", "lb.cli", "lb.__main__")),
)
PURE = {"config", "core", "policies", "engine"}
PARSERS = {"config": {"yaml"}}  # reading a configuration file's text is the config layer's job


def module_files() -> dict[str, Path]:
    """Every project module by dotted name; a package's ``__init__`` is ``pkg.__init__``."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[".".join(path.with_suffix("").relative_to(ROOT).parts)] = path
    return out


MODULES = module_files()


def _resolve(name: str) -> str | None:
    """The project module that importing ``name`` runs last: ``a.b`` or ``a.b.__init__``."""
    if name in MODULES:
        return name
    if f"{name}.__init__" in MODULES:
        return f"{name}.__init__"
    return None


def project_imports(module: str) -> set[str]:
    """The project modules that ``module`` imports, each resolved to its file.

    ``from pkg import sub`` imports the submodule when ``sub`` is one, else ``pkg/__init__``.
    """
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module.split(".")[:-1]  # the package this module lives in
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here[: len(here) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            targets = [
                f"{base}.{alias.name}" if _resolve(f"{base}.{alias.name}") else base
                for alias in node.names
            ]
        else:
            continue
        found.update(m for t in targets if (m := _resolve(t)) is not None and m != module)
    return found


def layer_of(module: str) -> int:
    """The index of ``module``'s layer in :data:`LAYERS`; -1 when it is in none."""
    name = module.removesuffix(".__init__") if module != "lb.__init__" else module
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    return -1


def test_every_module_has_a_layer() -> None:
    lost = sorted(m for m in MODULES if layer_of(m) < 0)
    assert not lost, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {lost}"


def imported_roots(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports, project or not."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = layer_of(module)
    if mine < 0:
        pytest.skip(f"{module} is in no layer (test_every_module_has_a_layer fails for it)")
    upward = {m for m in project_imports(module) if layer_of(m) > mine}
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports higher layers: " + ", ".join(
        f"{m} ({LAYERS[layer_of(m)][0]})" for m in sorted(upward)
    )


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if LAYERS[layer_of(m)][0] in PURE), ids=str
)
def test_pure_layers_import_no_io(module: str) -> None:
    layer = LAYERS[layer_of(module)][0]
    bad = imported_roots(MODULES[module]) & (IO_MODULES - PARSERS.get(layer, set()))
    assert not bad, f"{module} imports I/O modules {sorted(bad)}"


def test_no_import_cycles() -> None:
    graph = {m: project_imports(m) for m in MODULES}
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in path:
            cycle = [*path[path.index(node) :], node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


def test_layer_rules_can_fail() -> None:
    """The checks above see real edges: a known upward import would be caught."""
    assert "lb.engine" in project_imports("lb.service")
    assert layer_of("lb.service") > layer_of("lb.engine")
    assert layer_of("monitors.judge") < layer_of("monitors.network")
