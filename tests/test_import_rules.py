"""The package's import graph keeps its shape.

- No cycle among curate's modules through module-level imports: a cycle makes what works depend on which module
  is imported first (a half-initialised module hands out missing names). Imports under `if TYPE_CHECKING:` never
  run, and imports inside functions run after every module is loaded, so neither counts.
- `curate.run` is the entry point and nothing else's dependency (its docstring says so): no module imports it, at
  any level, except the `curate` command's dispatcher (curate.cli), which names it as a string and imports it
  only when `curate run` runs.

The graph is read from the source with `ast`, never by importing: importing would hide a cycle that happens to
resolve in the order the test imports things.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from conftest import REPO

from curate import cli

PACKAGE = REPO / "curate"
ENTRY_POINT = "curate.run"
# Who may import the entry point: itself and the dispatcher of `curate <command>`.
MAY_IMPORT_ENTRY_POINT = frozenset({ENTRY_POINT, "curate.cli"})
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class Import:
    """One import of a curate module by another: where it is, and whether it runs when the importer is loaded."""

    source: str
    target: str
    line: int
    module_level: bool


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py under `root` (a package directory; `pkg/x/__init__.py` is `pkg.x`)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom | ast.Call, bool]]:
    """Every import statement (and call of importlib.import_module / __import__) with whether it is module-level:
    not inside a function or lambda, nor under `if TYPE_CHECKING:` (a class body or a try at module level runs at
    import, so it is module-level)."""

    def walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom | ast.Call, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            yield node, module_level
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for statement in node.body:
                yield from walk(statement, False)
            for statement in node.orelse:  # the else branch does run
                yield from walk(statement, module_level)
            return
        inner = module_level and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from walk(child, inner)

    yield from walk(tree, True)


def absolute(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name a (maybe relative) `from ... import` names."""
    if level == 0:
        return module or ""
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, known: Mapping[str, Path]) -> list[Import]:
    """The imports of curate modules in one module. `import a.b` also loads the packages above a.b: each one that
    is not a package of the importer (those are always loaded before it) counts too."""
    is_package = path.name == "__init__.py"
    own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    found: list[Import] = []

    def add(target: str, line: int, module_level: bool) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            above = ".".join(parts[:i])
            if above in known and (above == target or above not in own_packages):
                found.append(Import(name, above, line, module_level))

    for node, module_level in import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, module_level)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(name, is_package, node.level, node.module)
            for alias in node.names:
                # `from curate.x import y` where y is a submodule imports curate.x.y; else y is a name in curate.x
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node.lineno, module_level)
        else:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0] if node.args else None
            if called in DYNAMIC_IMPORTS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value, node.lineno, False)  # runs when called, like an import inside a function
    return found


def import_graph(root: Path) -> list[Import]:
    known = modules(root)
    return [found for name, path in known.items() for found in imports_of(name, path, known)]


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components that hold a cycle (Tarjan), each as one cycle through it, in order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [cycle_through(graph, component) for component in sorted(components)]


def cycle_through(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """One cycle from the component's first node back to it, staying inside the component (breadth first, so
    the shortest: the one to read when breaking it)."""
    start, inside = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, set()) & inside):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {component}")  # a component of cycles always has one


def module_level_graph(found: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in found:
        if imp.module_level:
            graph.setdefault(imp.source, set()).add(imp.target)
    return graph


def told(cycle: list[str], found: list[Import]) -> str:
    """`a -> b (a.py line 3) -> a (b.py line 7)`: each step with the import that makes it."""
    lines = {(i.source, i.target): i.line for i in found if i.module_level}
    steps = [cycle[0]]
    for source, target in pairwise(cycle):
        steps.append(f"{target} ({source} line {lines[source, target]})")
    return " -> ".join(steps)


# ------------------------------------------------------------------------------------------ curate itself


def test_no_import_cycle_among_curates_modules() -> None:
    found = import_graph(PACKAGE)
    assert len({i.source for i in found}) > 20  # it read the package (a wrong root would pass vacuously)
    loops = cycles(module_level_graph(found))
    assert not loops, "module-level import cycles (move one import into the function that needs it):\n" + "\n".join(
        told(cycle, found) for cycle in loops
    )


def test_no_module_imports_the_entry_point() -> None:
    found = import_graph(PACKAGE)
    assert ENTRY_POINT in modules(PACKAGE)
    offenders = [
        f"{i.source} line {i.line}" for i in found if i.target == ENTRY_POINT and i.source not in MAY_IMPORT_ENTRY_POINT
    ]
    assert not offenders, f"{ENTRY_POINT} is the entry point, not a library: imported by {', '.join(offenders)}"
    # the dispatcher's exemption is for naming it lazily, as a string
    assert cli.COMMANDS["run"].module == ENTRY_POINT


# ------------------------------------------------------------------------------ the checks catch what they say


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"a"}, "b": {"a"}}) == [["a", "a"]]  # a module importing itself
    # two separate cycles are both told; the shortest way round each
    assert cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"b"}, "x": {"y"}, "y": {"x"}}) == [
        ["a", "b", "a"],
        ["x", "y", "x"],
    ]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_cycle_in_source_is_found_and_told_with_its_lines(tmp_path: Path) -> None:
    package = write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom pkg.sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from ..c import thing\n",
        "pkg/c.py": "from . import a\nthing = 1\n",
    })  # fmt: skip
    found = import_graph(package)
    assert cycles(module_level_graph(found)) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert told(["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"], found) == (
        "pkg.a -> pkg.sub.b (pkg.a line 2) -> pkg.c (pkg.sub.b line 1) -> pkg.a (pkg.c line 1)"
    )


def test_imports_that_do_not_run_at_load_make_no_cycle(tmp_path: Path) -> None:
    package = write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "pkg/b.py": "import typing\nif typing.TYPE_CHECKING:\n    import pkg.a\ndef f():\n    from pkg import a\n",
    })  # fmt: skip
    found = import_graph(package)
    assert {(i.source, i.target, i.module_level) for i in found} == {("pkg.a", "pkg.b", False),
                                                                     ("pkg.b", "pkg.a", False)}  # fmt: skip
    assert cycles(module_level_graph(found)) == []


def test_a_package_import_is_its_init_and_loads_the_packages_above(tmp_path: Path) -> None:
    package = write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/x/__init__.py": "from pkg.y import z\n",  # a package re-exporting another's module
        "pkg/x/inner.py": "from pkg.x import other\nfrom . import sibling\n",
        "pkg/x/sibling.py": "",
        "pkg/y/__init__.py": "",
        "pkg/y/z.py": "import pkg.x.inner\n",
    })  # fmt: skip
    found = {(i.source, i.target) for i in import_graph(package)}
    # inner's own package is loaded before inner: `from pkg.x import other` (a name, not a module) is still an edge
    assert ("pkg.x.inner", "pkg.x") in found and ("pkg.x.inner", "pkg.x.sibling") in found
    # z's `import pkg.x.inner` runs pkg/x/__init__.py first, which imports z: a cycle
    assert ("pkg.y.z", "pkg.x") in found and ("pkg.y.z", "pkg.x.inner") in found
    graph = module_level_graph(import_graph(package))
    assert cycles(graph) == [["pkg.x", "pkg.y.z", "pkg.x"]]


def test_importing_the_entry_point_anywhere_is_caught(tmp_path: Path) -> None:
    package = write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/run.py": "",
        "pkg/a.py": "def main():\n    from pkg import run\n",  # inside a function
        "pkg/b.py": "import importlib\nimportlib.import_module('pkg.run')\n",  # by name
        "pkg/c.py": "from .run import main\n",  # relative
        "pkg/runner_like.py": "",
        "pkg/d.py": "import pkg.runner_like\n",  # a name that only starts like it
    })  # fmt: skip
    found = import_graph(package)
    assert sorted((i.source, i.line) for i in found if i.target == "pkg.run") == [
        ("pkg.a", 2),
        ("pkg.b", 2),
        ("pkg.c", 1),
    ]
