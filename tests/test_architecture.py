"""The package's import graph has no circles, between files or between folders.

Every import counts, function-local ones too (they hide a dependency, they do not remove it): each module is
parsed with ast, relative imports are resolved, and `from X import name` points at the module X.name when
there is one, else at X. In the folder graph a subpackage is one node (vici_utils/rerank/* -> rerank) and a
top-level module is its own node. Imports built at run time (importlib.import_module) are not seen.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

from vici_utils.paths import REPO_ROOT

PACKAGE = "vici_utils"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at `root` (a package's name is its folder's)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _owner(name: str, modules: dict) -> str | None:
    """The innermost known module a dotted name lies in (vici_utils.paper.VLMS -> vici_utils.paper)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: dict) -> set[str]:
    """The package's own modules that `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in (_owner(t, modules) for t in targets) if t}
    found.discard(name)
    return found


def module_graph(root: Path) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for src, targets in graph.items():
        out.setdefault(folder_of(src), set()).update(folder_of(t) for t in targets)
    return {node: targets - {node} for node, targets in out.items()}


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each in sorted order."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle per group of mutually importing nodes, as a path that ends where it starts."""
    found = []
    for component in _components(graph):
        if len(component) < 2:
            continue
        start, inside = component[0], set(component)
        came_from, todo = {start: None}, deque([start])
        while todo:  # breadth first, back to start: the shortest circle through it
            v = todo.popleft()
            if start in graph[v]:
                path = [v]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                found.append([*reversed(path), start])
                break
            for w in sorted(graph[v] & inside):
                if w not in came_from:
                    came_from[w] = v
                    todo.append(w)
    return found


def _describe(found: list[list[str]]) -> str:
    return "\n".join("  " + " -> ".join(c) for c in found)


def test_no_import_circle_between_modules():
    found = cycles(module_graph(REPO_ROOT / PACKAGE))
    assert not found, f"import circles between modules of {PACKAGE}:\n{_describe(found)}"


def test_no_import_circle_between_folders():
    found = cycles(folder_graph(module_graph(REPO_ROOT / PACKAGE)))
    assert not found, f"import circles between folders of {PACKAGE} (a subpackage is one node):\n{_describe(found)}"


def test_compute_code_does_not_import_figures():
    graph = module_graph(REPO_ROOT / PACKAGE)
    compute = [m for m in graph if folder_of(m) not in ("figures", "__main__")]
    offenders = sorted(m for m in compute if any(folder_of(t) == "figures" for t in graph[m]))
    assert not offenders, f"compute modules import figures/ (describe_* live in vici_utils.provenance): {offenders}"


def test_the_graph_sees_relative_function_local_and_folder_circles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from .sub.c import g  # function-local\n")
    (pkg / "b.py").write_text("from pkg import a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import b\nfrom ..a import f\n")
    (pkg / "sub" / "d.py").write_text("from . import c\n")
    graph = module_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a", "pkg.b"}
    assert graph["pkg.sub.d"] == {"pkg.sub.c"} and graph["pkg.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.c", "pkg.a"]]
    assert cycles(folder_graph(graph)) == [["a", "sub", "a"]]
    assert cycles({"x": {"y"}, "y": set()}) == []
