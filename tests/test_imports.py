"""Imports point one way: a static scan of every import in the project's packages.

Every ``.py`` under the packages below is parsed with ``ast``; every ``import`` counts, at module
level, inside functions and under ``if TYPE_CHECKING:`` alike, because a lazy import only hides a
dependency, it does not remove it. Relative imports are resolved against the importing file.
``from pkg import name`` points at ``pkg/name.py`` (or ``pkg/name/__init__.py``) when ``name`` is a
submodule, else at ``pkg/__init__.py``; ``import a.b.c`` points at the module ``a.b.c``. In a
folder of scripts (no ``__init__.py``: ``benchmarks/``), ``import name`` finds ``name.py`` beside
the script first, as Python does. A string constant handed to ``importlib.import_module`` counts
as an import too.

The checks: (1) a file imports only its own package or the packages below it in ``LAYERS``
(docs/imports.md says why this order); (2) no circle of any length among the files.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Top first: a package may import itself and anything after it in this list, nothing before it.
LAYERS = ["benchmarks", "harness", "reports", "gsf"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _files() -> dict[str, Path]:
    """Module name -> file, for every .py of the scanned packages."""
    files = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[_module_name(path)] = path
    return files


def _resolve(name: str, files: dict[str, Path]) -> str | None:
    """The scanned module ``name`` denotes, or its nearest scanned parent package; None outside them."""
    while name:
        if name in files:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, files: dict[str, Path]) -> set[str]:
    """The scanned modules that ``module`` (in ``path``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    # A script's own folder comes first on sys.path: its sibling files shadow any other module.
    scripts = not (path.parent / "__init__.py").exists()

    def absolute(name: str) -> str:
        beside = f"{package}.{name}"
        return beside if scripts and f"{package}.{name.split('.')[0]}" in files else name

    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [absolute(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = absolute(node.module or "")
            names = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.append(submodule if alias.name != "*" and submodule in files else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names = [absolute(node.args[0].value)]
        else:
            continue
        for name in names:
            target = _resolve(name, files)
            if target is not None and target != module:
                targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    """File-level import graph of the scanned packages: module -> the modules it imports."""
    files = _files()
    return {module: _imports(module, path, files) for module, path in files.items()}


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def _file(module: str) -> str:
    return str(_files()[module].relative_to(ROOT))


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{_file(src)} imports {_file(dst)}"
                  for src, dsts in graph.items() for dst in dsts if _layer(dst) < _layer(src))


def knots(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one file (Tarjan): each is one or more circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components, key=min)


def shortest_circle(graph: dict[str, set[str]], knot: set[str]) -> list[str]:
    """A shortest circle through the knot's first file, by breadth-first search inside the knot."""
    start = min(knot)
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & knot):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return list(reversed(path))
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise ValueError(f"{sorted(knot)} is not a knot of the graph")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete circle per knot."""
    return [shortest_circle(graph, knot) for knot in knots(graph)]


def test_scan_sees_the_packages():
    """The scan is not vacuous: it finds files and real edges of every kind it claims to read."""
    graph = import_graph()
    assert {module.split(".")[0] for module in graph} == set(LAYERS)
    assert "gsf.registry" in graph["gsf.model"]  # from .registry import name
    assert "gsf.registry" in graph["gsf.modules.gsf"]  # from ..registry import name
    assert "gsf.modules.gsf" in graph["gsf.modules"]  # from .gsf import name, in a package __init__
    assert "gsf.backbones" in graph["gsf.backbones.resnet"]  # from . import name (not a submodule)
    assert "gsf.backbones.weights" in graph["gsf.backbones.resnet"]  # from .weights import name
    assert "gsf" in graph["harness.trial"]  # from gsf import build_model: the package's __init__
    assert "reports.report" in graph["harness.sweep"]  # an import inside a function
    assert "benchmarks.gsf_speed" in graph["benchmarks.gpu_check"]  # import gsf_speed, beside the script


def test_cycle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]


def test_imports_follow_the_layers():
    violations = layer_violations(import_graph())
    assert not violations, (f"imports must point down {' -> '.join(LAYERS)} (docs/imports.md):\n  "
                            + "\n  ".join(violations))


def test_no_import_circles():
    graph = import_graph()
    found = []
    for knot in knots(graph):
        circle = shortest_circle(graph, knot)
        line = " -> ".join(_file(m) for m in circle + circle[:1])
        if len(knot) > len(circle):
            line += f"\n    (files caught in the same knot: {', '.join(sorted(_file(m) for m in knot))})"
        found.append(line)
    assert not found, ("import circles (each file imports the next, the last imports the first):\n  "
                       + "\n  ".join(found))
