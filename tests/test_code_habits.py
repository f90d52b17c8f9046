"""Habits ruff cannot check (ruff 0.17 has no unreachable-code rule): no function over 80 lines and no
statement after a return, raise, break or continue in the same block, over every Python file of the
project. Each check is also run on a snippet that breaks it, so neither can pass by finding nothing."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("grounded", "demos", "bench", "bin", "tests", "configs")
MAX_FUNCTION_LINES = 80


def project_files():
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "node_modules" not in p.parts)


def long_functions(tree: ast.AST):
    return [f"{node.name} at line {node.lineno} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def unreachable_statements(tree: ast.AST):
    found = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for before, after in zip(block, block[1:]):
                if isinstance(before, (ast.Return, ast.Raise, ast.Break, ast.Continue)):
                    found.append(f"line {after.lineno}, after the {type(before).__name__.lower()} at line {before.lineno}")
    return found


def test_the_project_has_python_files_to_check():
    files = project_files()
    assert len(files) > 100 and any(p.name == "predictor.py" for p in files)


@pytest.mark.parametrize("check", [long_functions, unreachable_statements], ids=["long_functions", "unreachable"])
def test_no_file_breaks_the_habit(check):
    problems = [f"{path.relative_to(ROOT)}: {problem}" for path in project_files()
                for problem in check(ast.parse(path.read_text(encoding="utf-8")))]
    assert problems == []


def test_the_checks_find_what_they_look_for():
    long_body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(ast.parse(f"def f():\n{long_body}\n")) == [f"f at line 1 ({MAX_FUNCTION_LINES + 1} lines)"]
    assert long_functions(ast.parse("def f():\n" + "\n".join(long_body.splitlines()[1:]) + "\n")) == []
    snippet = ("def f(x):\n    if x:\n        return 1\n        print('never')\n    for y in x:\n        continue\n"
               "        y += 1\n    raise ValueError\n    return 2\n")
    assert sorted(unreachable_statements(ast.parse(snippet))) == [
        "line 4, after the return at line 3", "line 7, after the continue at line 6", "line 9, after the raise at line 8"]
    assert unreachable_statements(ast.parse("def f(x):\n    if x:\n        return 1\n    return 2\n")) == []
