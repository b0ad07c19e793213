"""The package's shape: one data flow, imports that only go down (DESIGN.md §2).

The import graph is read from the source with ``ast``, counting imports inside functions (a lazy
import still ties two modules together); only ``if TYPE_CHECKING:`` blocks are left out, since
they never run. ``from package import name`` counts as an import of the module ``package.name``
when that is a module, else of ``package``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wsl_bench"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("interface", ("wsl_bench.cli", "wsl_bench.__main__", "wsl_bench.testing")),
    ("pipeline", ("wsl_bench.pipeline", "wsl_bench.sweep")),
    ("report", ("wsl_bench.report",)),
    ("methods", ("wsl_bench.methods",)),
    ("training", ("wsl_bench.training",)),
    ("evaluation", ("wsl_bench.evaluation",)),
    ("datasets", ("wsl_bench.datasets",)),
    ("base", ("wsl_bench",)),  # registry, saliency, data, presets, weights, atomic_io, paths, plotting
]
"""Top to bottom: a module imports only modules of its own layer or of layers below it."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module → the wsl_bench modules it imports (anywhere in its source)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer")


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        colour[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in colour and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions_and_resolves_relative_ones(tmp_path):
    """The reader itself: a lazy import, a relative one and a TYPE_CHECKING one."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from wsl_bench.evaluation import metrics\n"
        "if TYPE_CHECKING:\n    from wsl_bench.pipeline import run\n"
        "def f():\n    from wsl_bench.training.cache import train_stages\n"
    )
    nodes = _imports(ast.parse(source))
    assert [getattr(n, "module", None) for n in nodes] == ["typing", "wsl_bench.evaluation",
                                                           "wsl_bench.training.cache"]
    assert "wsl_bench.evaluation.metrics" in import_graph()["wsl_bench.training.trainer"]


def test_no_import_cycle_counting_imports_inside_functions():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_only_go_down_the_layers():
    wrong = [f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
             for module, targets in import_graph().items() for target in targets if _layer(target) < _layer(module)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["wsl_bench.training.distributed", "wsl_bench.evaluation.metrics"])
def test_distributed_and_metrics_import_nothing_of_the_project(module):
    assert import_graph()[module] == set()


def test_every_module_has_a_layer_and_the_top_level_card_folders_hold_no_code():
    for module in import_graph():
        _layer(module)
    root = PACKAGE.parent
    for folder in ("methods", "datasets"):
        assert not (root / folder / "__init__.py").exists(), f"{folder}/ would shadow a Python package"


def test_every_module_imports():
    """Every module loads (its imports resolve, its top level runs): the quick loop
    (``-m "not slow"``, README) leaves no module of the package untouched, whatever it deselects."""
    import importlib

    for module in sorted(import_graph()):
        if module != "wsl_bench.__main__":  # running it is the command line (tests/test_cli_front.py)
            assert importlib.import_module(module).__name__ == module
