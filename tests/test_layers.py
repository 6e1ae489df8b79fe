"""The package's layers point one way (issue 12), read from the source's own imports.

Every import counts: at module level, inside functions (lazy) and under TYPE_CHECKING.
``make lint`` checks the same with import-linter's contracts in pyproject.toml; this test
needs nothing but the standard library and says which import broke the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agentflux

# Bottom to top; a module may import its own layer and the layers below it.
LAYERS = ["_core", "sources", "semaphores", "flux", "benchmarks", "exporters", "workshop", "worker", "web", "cli"]
SIBLINGS = [{"benchmarks", "exporters", "workshop"}, {"worker", "web"}]  # one level: none imports another
ENTRY_POINTS = {"agentflux", "agentflux.__main__", "agentflux.prometheus"}  # above every layer

SRC = Path(agentflux.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[str, int]]:
    """Every agentflux module ``path`` imports, absolute, with the line of the import."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            found.append((target, node.lineno))
            # ``from . import x`` imports the module x when there is one
            for alias in node.names:
                if (root.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").exists() or (
                    root.parent / (target + "." + alias.name).replace(".", "/") / "__init__.py"
                ).exists():
                    found.append((f"{target}.{alias.name}", node.lineno))
    return found


def graph(root: Path) -> dict[str, list[tuple[str, int]]]:
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if module in ENTRY_POINTS or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def upward_imports(modules: dict[str, list[tuple[str, int]]]) -> list[str]:
    broken = []
    for importer, targets in modules.items():
        for target, line in targets:
            if target in ENTRY_POINTS and importer not in ENTRY_POINTS:
                broken.append(f"{importer} (line {line}) imports the entry point {target}")
                continue
            low, high = layer_of(target), layer_of(importer)
            if low is None or high is None:
                continue
            a, b = LAYERS[high], LAYERS[low]
            if low > high or any(a != b and {a, b} <= group for group in SIBLINGS):
                broken.append(f"{importer} (line {line}) imports {target}: {a} may not import {b}")
    return broken


def cycles(modules: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Circles between modules (a package counts as its __init__), found by depth-first search."""
    edges = {m: sorted({t for t, _ in targets if t in modules and t != m}) for m, targets in modules.items()}
    # A package's __init__ may import its own submodules (re-exports): not a circle by itself.
    for module, targets in edges.items():
        edges[module] = [t for t in targets if not t.startswith(module + ".")]
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in edges[module]:
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return found


def test_every_import_points_down_the_layers() -> None:
    modules = graph(SRC)
    assert {m.split(".")[1] for m in modules if m.count(".") >= 1} - {"__main__", "prometheus"} == set(LAYERS)
    assert upward_imports(modules) == []


def test_no_module_is_part_of_an_import_circle() -> None:
    assert cycles(graph(SRC)) == []


@pytest.mark.parametrize(
    ("where", "line", "complaint"),
    [
        ("semaphores/_token.py", "from ..flux import _config", "semaphores may not import flux"),
        ("sources/_bus.py", "import agentflux.cli", "sources may not import cli"),
        ("exporters/prometheus.py", "from ..workshop import _model", "exporters may not import workshop"),
        ("flux/_stage.py", "from .. import prometheus", "imports the entry point agentflux.prometheus"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, where: str, line: str, complaint: str) -> None:
    root = copy_tree(tmp_path)
    target = root / where
    target.write_text(target.read_text() + f"\n\ndef _late() -> None:\n    {line}\n")  # even a lazy one
    assert any(complaint in problem for problem in upward_imports(graph(root)))


def test_a_circle_is_caught(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    stage = root / "flux" / "_stage.py"
    stage.write_text(stage.read_text() + "\nif TYPE_CHECKING:\n    from ._flux import FluxAgent\n")
    (circle,) = cycles(graph(root))
    assert circle[0] == circle[-1] == "agentflux.flux._flux"
    assert "agentflux.flux._stage" in circle


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "agentflux"
    for path in SRC.rglob("*.py"):
        copy = root / path.relative_to(SRC)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    return root
