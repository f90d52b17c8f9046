"""No import circles in `grounded`, lazy (function-level) imports included, and the layering
issue 20 asks for: the output vocabulary imports nothing from `io`, the pipeline framework nothing
from the nodes. Imports under `if TYPE_CHECKING:` never run and are left out. Importing a module
also runs its packages' `__init__`, so `a -> b.c` counts as `a -> b` too (unless `a` is inside `b`)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path = ROOT) -> dict:
    """Module name -> (path, is_package) for every file of the grounded package."""
    found = {}
    for path in sorted((root / "grounded").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _runtime_imports(tree: ast.AST):
    """Import statements anywhere (functions, methods, branches) except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(name: str, is_package: bool, node, known: dict):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from package import submodule` imports the submodule
    return [f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target for alias in node.names]


def import_graph(root: Path = ROOT) -> dict:
    known = modules(root)
    graph = {}
    for name, (path, is_package) in known.items():
        edges = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            for target in _targets(name, is_package, node, known):
                while target and target not in known:
                    target = target.rpartition(".")[0]  # `from m import function` -> m
                parts = target.split(".")
                for k in range(2, len(parts) + 1):  # the target and the packages it runs, not `grounded` itself
                    runs = ".".join(parts[:k])
                    if runs != name and not name.startswith(runs + "."):
                        edges.add(runs)
        graph[name] = edges
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_sees_lazy_imports_and_package_inits(tmp_path):
    pkg = tmp_path / "grounded"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from .x import f\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import h\n"
                              "def g():\n    from .a.y import k\n")
    (pkg / "a" / "y.py").write_text("k = 1\n")
    (pkg / "c.py").write_text("from .b import g\n")
    graph = import_graph(tmp_path)
    assert graph["grounded.b"] == {"grounded.a", "grounded.a.y"}  # the lazy import, and the package it runs
    assert "grounded.c" not in graph["grounded.b"]  # TYPE_CHECKING only
    assert cycles(graph) == [["grounded.a", "grounded.a.x", "grounded.b"]]


def test_grounded_has_no_import_cycles_lazy_imports_included():
    found = cycles(import_graph())
    assert found == [], "import circles (lazy imports included):\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("module, forbidden", [
    ("grounded.detections", "grounded.io"), ("grounded.types", "grounded.io"), ("grounded.rle", "grounded.io"),
    ("grounded.pipeline", "grounded.nodes"),
])
def test_layers_import_nothing_from_above(module, forbidden):
    graph = import_graph()
    reach, todo = set(), [m for m in graph if m == module or m.startswith(module + ".")]
    while todo:
        m = todo.pop()
        for n in graph[m]:
            if n not in reach:
                reach.add(n)
                todo.append(n)
    assert not [m for m in reach if m == forbidden or m.startswith(forbidden + ".")]


def test_the_pipeline_names_no_private_function_by_string():
    for path in (ROOT / "grounded" / "pipeline").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ":_" in node.value:
                raise AssertionError(f"{path.name} names {node.value!r}")
