"""The shape of the code (docs/architecture.md): no import cycle, and arrows that only point
down — faces → operations → core → broker; daemon → handlers → common.

Every import counts: at the top of a module, inside a function, under TYPE_CHECKING. A
package's `__init__` counts as a module, so `from daemon.faces.http import outcomes` is an
arrow to `daemon.faces.http` too (Python runs the package first).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "handlers", "common")
# The layers of daemon/, top down; a module may import its own layer and the ones below.
LAYERS = ("daemon.faces", "daemon.operations", "daemon.core", "daemon.broker")
TOP = {"daemon.main", "daemon.__main__", "daemon.supervisor", "daemon.workers"}  # wiring
# Used by every layer, and importing nothing above the broker layer.
BROKER = LAYERS.index("daemon.broker")
FOUNDATION = {"daemon", "daemon.settings", "daemon.logs", "daemon.systemd", "daemon.tasks"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(module: str, path: Path) -> Iterator[str]:
    """Every module of ours that `module` imports, anywhere in its text."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


GRAPH = {module: set(_imported(module, path)) for module, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


def _layer(module: str) -> int | None:
    """0 for faces … 3 for the broker; None outside the layers."""
    for rank, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return rank
    return None


def test_the_graph_is_read():
    """The test reads what it checks: the modules the layers name, and their imports."""
    assert {"daemon.faces.cli", "daemon.operations.actions", "daemon.core.parking",
            "daemon.broker.channels", "handlers.base", "common.clients"} <= set(MODULES)
    assert "daemon.core.parking" in GRAPH["daemon.core.blocking"]
    assert set(MODULES) >= TOP | FOUNDATION


def test_no_import_cycle():
    assert _cycles() == []


def test_handlers_import_nothing_of_the_daemon_and_common_imports_neither():
    """Handlers use the handler API (handlers.base, .context, .errors, .connectors) and common."""
    wrong = sorted((m, d) for m, deps in GRAPH.items() for d in deps
                   if (m.startswith("handlers") and d.startswith("daemon"))
                   or (m.startswith("common") and not d.startswith("common")))
    assert wrong == []


def _points_up(module: str, dep: str) -> bool:
    if dep in TOP:  # the wiring imports everything; nothing imports it
        return module not in TOP
    if module in FOUNDATION:
        return dep.startswith("daemon") and dep not in FOUNDATION and _layer(dep) != BROKER
    below, above = _layer(dep), _layer(module)
    return below is not None and above is not None and below < above


def test_arrows_between_layers_point_down():
    """A face never imports the supervisor; operations never a face; the broker layer nothing
    above it; the foundation nothing above the broker layer."""
    wrong = [f"{module} -> {dep}" for module, deps in sorted(GRAPH.items())
             for dep in sorted(deps) if _points_up(module, dep)]
    assert wrong == []


def test_nothing_reaches_into_the_supervisor():
    """No `_sup.` in daemon/: nothing holds the supervisor to read its parts."""
    found = [f"{path.relative_to(ROOT)}:{n}" for module, path in MODULES.items()
             if module.startswith("daemon")
             for n, line in enumerate(path.read_text().splitlines(), 1) if "_sup." in line]
    assert found == []
