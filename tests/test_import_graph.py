"""The package's module import graph, read from the sources: no cycle among module-level imports.

The walk is generic: ``engine/`` is the package ``cogvideo_engine``, ``kernels/`` is ``cogvideo_engine.kernels``,
and every directory below them that holds an ``__init__.py`` is a sub-package (so the tests follow the tree as
it is reorganised). Imports are read with :mod:`ast` and resolved to modules of the package: relative imports
from the importing module's package, ``from pkg import name`` to the submodule ``pkg.name`` when there is one
(else to ``pkg`` itself), ``import a.b.c`` to ``a.b.c``. Imports outside the package are ignored, and so is an
edge to a parent package that only runs on the way to a submodule (Python allows a submodule to import its
siblings while the package's ``__init__`` is still running).

An import that runs when the module is imported (at module level, in a class body, or under a module-level
``if`` / ``try``; not under ``if TYPE_CHECKING:``) is an eager edge; one inside a function runs when called,
a lazy edge. Eager edges must not form a cycle anywhere. ``kernels/`` is held to more: no cycle even with its
lazy edges counted (its dependencies point one way), no import of ``engine/`` modules, and no import of an
underscore name from another kernels module. Run this file as a script to print the graph and the lazy edges.
"""

from __future__ import annotations

import ast
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"cogvideo_engine": REPO / "engine", "cogvideo_engine.kernels": REPO / "kernels"}
KERNELS = "cogvideo_engine.kernels"
EXTENSION_SUFFIXES = (".so", ".pyd")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    lazy: bool
    line: int
    names: tuple[str, ...] = ()  # the names of a ``from target import ...``


@dataclass
class ImportGraph:
    modules: dict[str, Path] = field(default_factory=dict)  # module name -> source file (packages: __init__.py)
    packages: set[str] = field(default_factory=set)
    edges: list[Edge] = field(default_factory=list)

    def eager(self) -> dict[str, set[str]]:
        return self.adjacency(lazy=False)

    def adjacency(self, *, lazy: bool, within: str | None = None) -> dict[str, set[str]]:
        """Module -> modules it imports (eager edges; lazy ones too when ``lazy``), optionally only inside the
        package ``within``."""
        inside = (lambda m: m == within or m.startswith(within + ".")) if within else (lambda m: True)
        adj: dict[str, set[str]] = {m: set() for m in self.modules if inside(m)}
        for e in self.edges:
            if (lazy or not e.lazy) and inside(e.source) and inside(e.target) and e.target in self.modules:
                adj[e.source].add(e.target)
        return adj


def discover(roots: dict[str, Path]) -> ImportGraph:
    """Every module under ``roots`` (package name -> directory); sub-packages are directories with __init__.py."""
    graph = ImportGraph()
    for package, directory in roots.items():
        _walk(graph, package, directory, set(roots) - {package})
    for name, path in list(graph.modules.items()):
        if path.suffix == ".py":
            graph.edges.extend(_imports(path, name, name in graph.packages, graph))
    return graph


def _walk(graph: ImportGraph, package: str, directory: Path, other_roots: set[str]):
    if not (directory / "__init__.py").is_file():
        return
    graph.packages.add(package)
    graph.modules[package] = directory / "__init__.py"
    for path in sorted(directory.iterdir()):
        if path.is_dir() and path.name.isidentifier():
            sub = f"{package}.{path.name}"
            if sub not in other_roots:  # a root mapped elsewhere (kernels/) is walked from its own directory
                _walk(graph, sub, path, other_roots)
        elif path.suffix == ".py" and path.stem != "__init__" and path.stem.isidentifier():
            graph.modules[f"{package}.{path.stem}"] = path
        elif path.suffix in EXTENSION_SUFFIXES:  # e.g. _C.cpython-311-x86_64-linux-gnu.so: a leaf module
            graph.modules.setdefault(f"{package}.{path.name.split('.')[0]}", path)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module):
    """``(node, lazy)`` for every import statement; ``if TYPE_CHECKING:`` bodies are skipped."""
    stack = [(node, False) for node in reversed(tree.body)]
    while stack:
        node, lazy = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = node.orelse
        else:
            children = list(ast.iter_child_nodes(node))
        inner_lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner_lazy) for child in reversed(children))


def _resolve_base(module: str, is_package: bool, level: int) -> str:
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    return ".".join(parts[:len(parts) - (level - 1)])


def _imports(path: Path, module: str, is_package: bool, graph: ImportGraph):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node, lazy in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known_prefix(alias.name, graph)
                if target:
                    yield Edge(module, target, lazy, node.lineno)
            continue
        base = _resolve_base(module, is_package, node.level) if node.level else (node.module or "")
        if node.level and node.module:
            base = f"{base}.{node.module}" if base else node.module
        names = tuple(alias.name for alias in node.names)
        submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in graph.modules]
        for sub in submodules:
            yield Edge(module, sub, lazy, node.lineno)
        rest = tuple(n for n in names if f"{base}.{n}" not in graph.modules)
        if rest and base in graph.modules:
            yield Edge(module, base, lazy, node.lineno, rest)


def _known_prefix(dotted: str, graph: ImportGraph) -> str | None:
    """``import a.b.c`` binds ``a`` but runs ``a.b.c``: the longest known module of the dotted name."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in graph.modules:
            return name
    return None


def find_cycles(adj: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str):
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(adj.get(v, ())):
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
            if len(component) > 1 or v in adj.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return cycles


def _describe(graph: ImportGraph, component: list[str], *, lazy: bool) -> str:
    members = set(component)
    lines = [f"{e.source} -> {e.target} ({'lazy, ' if e.lazy else ''}{graph.modules[e.source].name}:{e.line})"
             for e in graph.edges if e.source in members and e.target in members and (lazy or not e.lazy)]
    return "cycle among " + ", ".join(component) + ":\n  " + "\n  ".join(sorted(set(lines)))


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return discover(ROOTS)


def test_the_walk_finds_the_package(graph):
    for name in (KERNELS, f"{KERNELS}.ops", f"{KERNELS}.registry", f"{KERNELS}.rules", "cogvideo_engine"):
        assert name in graph.modules, f"{name} not found under {ROOTS}"
    assert any(e.source == f"{KERNELS}.registry" for e in graph.edges)


def test_no_cycle_among_module_level_imports(graph, capsys):
    cycles = find_cycles(graph.eager())
    lazy = sorted({f"{e.source} -> {e.target}" for e in graph.edges if e.lazy and e.target in graph.modules})
    with capsys.disabled():
        print(f"\n{len(lazy)} lazy (function-level) imports:\n  " + "\n  ".join(lazy))
    assert not cycles, "\n".join(_describe(graph, c, lazy=False) for c in cycles)


def test_kernels_dependencies_point_one_way(graph):
    """Inside kernels/, no cycle even counting the imports inside functions."""
    cycles = find_cycles(graph.adjacency(lazy=True, within=KERNELS))
    assert not cycles, "\n".join(_describe(graph, c, lazy=True) for c in cycles)


def test_kernels_never_import_the_engine(graph):
    extension = {m for m, p in graph.modules.items() if p.suffix in EXTENSION_SUFFIXES}
    bad = [f"{e.source} -> {e.target} (line {e.line})" for e in graph.edges
           if e.source.startswith(KERNELS) and not e.target.startswith(KERNELS) and e.target not in extension]
    assert not bad, "kernels/ imports engine/ modules:\n  " + "\n  ".join(bad)


def test_no_private_imports_across_kernel_modules(graph):
    bad = [f"{e.source} imports {', '.join(n for n in e.names if n.startswith('_'))} from {e.target} "
           f"(line {e.line})" for e in graph.edges
           if e.source.startswith(KERNELS) and e.target.startswith(KERNELS) and e.source != e.target
           and any(n.startswith("_") and not n.startswith("__") for n in e.names)]
    assert not bad, "\n".join(bad)


def test_every_kernels_module_imports(graph):
    for name, path in sorted(graph.modules.items()):
        if name.startswith(KERNELS) and path.suffix == ".py":
            importlib.import_module(name)


def test_the_resolver_on_a_small_tree(tmp_path):
    """Relative and absolute imports, sub-packages, lazy edges and a cycle, on a tree made for the purpose."""
    engine, kernels = tmp_path / "engine", tmp_path / "kernels"
    (engine / "models").mkdir(parents=True)
    (engine / "notapackage").mkdir()
    kernels.mkdir()
    files = {
        engine / "__init__.py": "",
        engine / "api.py": "from .models import cogvideo\nfrom cogvideo_engine.kernels.ops import op\n",
        engine / "models" / "__init__.py": "from .cogvideo import Model\n",
        engine / "models" / "cogvideo.py": "from ..api import x\nfrom . import config\n",
        engine / "models" / "config.py": "import cogvideo_engine.kernels.rules\n"
                                          "def f():\n    from cogvideo_engine import api\n",
        engine / "notapackage" / "loose.py": "import cogvideo_engine.api\n",
        kernels / "__init__.py": "from .rules import R\n",
        kernels / "rules.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .ops import op\n",
        kernels / "ops.py": "try:\n    from . import rules\nexcept ImportError:\n    pass\n"
                            "from .rules import _private\n",
    }
    for path, text in files.items():
        path.write_text(text)
    g = discover({"cogvideo_engine": engine, KERNELS: kernels})
    assert set(g.modules) == {"cogvideo_engine", "cogvideo_engine.api", "cogvideo_engine.models",
                              "cogvideo_engine.models.cogvideo", "cogvideo_engine.models.config", KERNELS,
                              f"{KERNELS}.rules", f"{KERNELS}.ops"}
    edges = {(e.source, e.target, e.lazy) for e in g.edges}
    assert ("cogvideo_engine.api", "cogvideo_engine.models.cogvideo", False) in edges
    assert ("cogvideo_engine.api", f"{KERNELS}.ops", False) in edges
    assert ("cogvideo_engine.models.cogvideo", "cogvideo_engine.api", False) in edges
    assert ("cogvideo_engine.models.cogvideo", "cogvideo_engine.models.config", False) in edges
    assert ("cogvideo_engine.models.config", f"{KERNELS}.rules", False) in edges
    assert ("cogvideo_engine.models.config", "cogvideo_engine.api", True) in edges
    assert (f"{KERNELS}.ops", f"{KERNELS}.rules", False) in edges
    assert not any(e.source == f"{KERNELS}.rules" for e in g.edges)  # TYPE_CHECKING only
    assert [e.names for e in g.edges if e.source == f"{KERNELS}.ops" and e.names] == [("_private",)]
    assert find_cycles(g.eager()) == [["cogvideo_engine.api", "cogvideo_engine.models.cogvideo"]]
    assert find_cycles(g.adjacency(lazy=True, within=KERNELS)) == []


def main() -> int:
    g = discover(ROOTS)
    for name in sorted(g.modules):
        eager = sorted({e.target for e in g.edges if e.source == name and not e.lazy})
        lazy = sorted({e.target for e in g.edges if e.source == name and e.lazy} - set(eager))
        short = lambda ms: ", ".join(m.removeprefix("cogvideo_engine.") for m in ms)  # noqa: E731
        print(f"{name.removeprefix('cogvideo_engine.')}: {short(eager)}" + (f"  [lazy: {short(lazy)}]" if lazy else ""))
    cycles = find_cycles(g.eager())
    for c in cycles:
        print(_describe(g, c, lazy=False))
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
