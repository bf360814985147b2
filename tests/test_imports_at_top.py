"""Imports sit at the top of each module. A function-level import is allowed only for a heavy optional dependency
or a genuine import cycle, and says so: a comment containing "optional" or "cycle" on its line or the line above."""

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REASON = re.compile(r"#.*\b(optional|cycle)", re.IGNORECASE)


def pipeline_modules() -> list[str]:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [f for f in files if not f.startswith("tests/") and (ROOT / f).is_file()]


def function_level_imports(source: str) -> list[ast.stmt]:
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def unexplained(path: str) -> list[str]:
    source = (ROOT / path).read_text()
    lines = source.splitlines()
    out = []
    for node in function_level_imports(source):
        here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
        if not (REASON.search(here) or REASON.search(above)):
            out.append(f"{path}:{node.lineno}: {here.strip()}")
    return out


def test_the_check_sees_function_level_imports():
    source = "import os\n\ndef f():\n    import json\n    # optional: x\n    import yaml\n    import re  # cycle\n"
    assert [n.lineno for n in function_level_imports(source)] == [4, 6, 7]


def test_no_unexplained_function_level_imports():
    modules = pipeline_modules()
    assert len(modules) > 50
    bad = [line for module in modules for line in unexplained(module)]
    assert not bad, ("imports inside functions without an 'optional' or 'cycle' comment (move them to the module top, "
                     "or say why they stay lazy):\n" + "\n".join(bad))
