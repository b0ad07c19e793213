"""The package's shape: one data flow, imports that only go down (docs/architecture.md#layers).

The import graph is read from the source with ``ast``, counting imports inside functions (a lazy
import still ties two modules together) and imports under ``if TYPE_CHECKING:`` (a type-only import
still ties them for a reader and a type checker, and keeping it in a cycle only hides the cycle).
``from package import name`` counts as an import of the module ``package.name`` when that is a
module, else of ``package``.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wsl_bench"

BASE_MODULES = (
    "wsl_bench",  # the package's own __init__: the lazy front doors
    "wsl_bench._version",
    "wsl_bench.atomic_io",
    "wsl_bench.data",
    "wsl_bench.devices",
    "wsl_bench.estimates",
    "wsl_bench.limits",
    "wsl_bench.paths",
    "wsl_bench.plotting",
    "wsl_bench.presets",
    "wsl_bench.registry",
    "wsl_bench.regular_files",
    "wsl_bench.run_progress",
    "wsl_bench.saliency",
    "wsl_bench.weights",
)
"""The base layer, module by module: a new top-level module belongs to no layer until it is placed."""

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("interface", ("wsl_bench.cli", "wsl_bench.__main__", "wsl_bench.testing")),
    ("pipeline", ("wsl_bench.pipeline", "wsl_bench.sweep")),
    ("report", ("wsl_bench.report",)),
    ("methods", ("wsl_bench.methods",)),
    ("training", ("wsl_bench.training",)),
    ("evaluation", ("wsl_bench.evaluation",)),
    ("datasets", ("wsl_bench.datasets",)),
    ("base", BASE_MODULES),
]
"""Top to bottom: a module imports only modules of its own layer or of layers below it. A name stands
for that module and, when it is a subpackage, for every module in it; ``wsl_bench`` itself stands for
its ``__init__`` alone."""


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {_module_name(p, package): p for p in package.rglob("*.py")}


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree``: at the top, inside functions and under ``if TYPE_CHECKING:``."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module → the modules of ``package`` it imports (anywhere in its source)."""
    modules = _modules(package)
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


def _in(module: str, name: str) -> bool:
    return module == name or (name != "wsl_bench" and module.startswith(name + "."))


def _layer(module: str) -> int:
    for index, (_, names) in enumerate(LAYERS):
        if any(_in(module, name) for name in names):
            return index
    raise AssertionError(f"{module} belongs to no layer: place it in LAYERS (tests/test_architecture.py) and in "
                         "docs/architecture.md#layers")


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


def test_the_graph_sees_imports_inside_functions_and_type_only_ones_and_resolves_relative_ones(tmp_path):
    """The reader itself: a lazy import, a relative one and a TYPE_CHECKING one."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from wsl_bench.evaluation import metrics\n"
        "if TYPE_CHECKING:\n    from wsl_bench.pipeline import run\n"
        "def f():\n    from wsl_bench.training.cache import train_stages\n"
    )
    nodes = _imports(ast.parse(source))
    assert sorted(getattr(n, "module", None) for n in nodes) == ["typing", "wsl_bench.evaluation",
                                                                 "wsl_bench.pipeline", "wsl_bench.training.cache"]
    assert "wsl_bench.evaluation.metrics" in import_graph()["wsl_bench.training.trainer"]


def _package(root: Path, files: dict[str, str]) -> Path:
    """A stand-in ``wsl_bench`` package under ``root`` with ``files`` (name → source)."""
    package = root / "wsl_bench"
    package.mkdir()
    for name, source in {"__init__.py": "", **files}.items():
        (package / name).write_text(source)
    return package


def test_a_cycle_through_a_type_only_import_is_found(tmp_path):
    package = _package(tmp_path, {
        "data.py": "from wsl_bench.registry import METHODS\n",
        "registry.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from wsl_bench.data import Sample\n",
    })
    assert _find_cycle(import_graph(package)) == ["wsl_bench.data", "wsl_bench.registry", "wsl_bench.data"]


def test_no_import_cycle_counting_imports_inside_functions_and_type_only_ones():
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
    root = ROOT
    for folder in ("methods", "datasets"):
        assert not (root / folder / "__init__.py").exists(), f"{folder}/ would shadow a Python package"


def test_a_new_top_level_module_belongs_to_no_layer_until_placed(tmp_path):
    """The base layer names its modules: the package's name as a prefix would match every module, so
    a new one would count as base without anyone deciding it."""
    package = _package(tmp_path, {"data.py": "", "new_module.py": "from wsl_bench import data\n"})
    graph = import_graph(package)
    assert graph["wsl_bench.new_module"] == {"wsl_bench.data"}
    assert LAYERS[_layer("wsl_bench.data")][0] == "base" and LAYERS[_layer("wsl_bench")][0] == "base"
    with pytest.raises(AssertionError, match=r"wsl_bench\.new_module belongs to no layer: place it in LAYERS"):
        _layer("wsl_bench.new_module")
    assert LAYERS[_layer("wsl_bench.report.new_module")][0] == "report"  # a subpackage's modules are its layer's


def test_every_name_in_the_layers_is_a_module_of_the_package():
    modules = set(import_graph())
    stale = [name for _, names in LAYERS for name in names if name not in modules]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_every_module_imports():
    """Every module loads (its imports resolve, its top level runs): the quick loop
    (``-m "not slow"``, README) leaves no module of the package untouched, whatever it deselects."""
    import importlib

    for module in sorted(import_graph()):
        if module != "wsl_bench.__main__":  # running it is the command line (tests/test_cli_front.py)
            assert importlib.import_module(module).__name__ == module


# -- the design document: in the repository, and every link to it resolves ---------------------------------------------

ARCHITECTURE = ROOT / "docs" / "architecture.md"
GENERATED = ("reports/*/report/*",)
"""Committed run reports: written by the report code, not by hand."""


def _written_files(suffixes: tuple[str, ...] = (".md", ".py")) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [ROOT / name for name in listed if Path(name).suffix in suffixes and (ROOT / name).is_file()
            and not any(fnmatch.fnmatch(name, pattern) for pattern in GENERATED)]


def _outside_fences(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _anchors(markdown: Path) -> set[str]:
    """GitHub's anchors of the headings of ``markdown``: lower case, punctuation dropped, spaces to hyphens."""
    headings = [line.lstrip("#").strip() for line in _outside_fences(markdown.read_text(encoding="utf-8"))
                if re.match(r"#{1,6} ", line)]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_no_file_cites_the_design_document_that_is_not_in_the_repository():
    old = "DESIGN" + ".md"  # spelled apart, so that this file does not cite it either
    citing = [str(path.relative_to(ROOT)) for path in _written_files() if old in path.read_text(encoding="utf-8")]
    assert not citing, f"{old} is not in the repository; cite docs/architecture.md instead: {citing}"


def test_every_reference_to_the_architecture_page_names_a_section_it_has():
    anchors = _anchors(ARCHITECTURE)
    assert {"data-flow", "layers", "the-method-contract", "the-dataset-contract", "caches"} <= anchors
    cited = [(path.relative_to(ROOT), anchor) for path in _written_files()
             for anchor in re.findall(r"docs/architecture\.md#([\w-]+)", path.read_text(encoding="utf-8"))]
    assert cited, "nothing cites a section of docs/architecture.md"
    missing = [f"{path}: #{anchor}" for path, anchor in cited if anchor not in anchors]
    assert not missing, "sections docs/architecture.md does not have:\n" + "\n".join(missing)


def test_every_relative_link_of_the_documentation_resolves():
    """Every Markdown link to a file of the repository points at one, and at a heading it has."""
    broken = []
    for page in _written_files((".md",)):
        for target in re.findall(r"\]\(([^)\s]+)\)", "\n".join(_outside_fences(page.read_text(encoding="utf-8")))):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists() or ROOT not in (linked, *linked.parents):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file in the repository)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
