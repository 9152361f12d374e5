"""The operator families of verifier/bounds import each other one way, at module top."""

from __future__ import annotations

import ast
from pathlib import Path

BOUNDS = Path(__file__).resolve().parent.parent / "verifier" / "bounds"


def _imports(tree: ast.AST) -> set[str]:
    """Modules of verifier.bounds that `tree` imports (`from verifier.bounds import x` names x)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("verifier.bounds"):
            if node.module == "verifier.bounds":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[2])
    return found


def test_bounds_modules_import_at_top_and_without_cycles():
    graph = {}
    for path in sorted(BOUNDS.glob("*.py")):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            assert not _imports(function), f"{path.name}: {function.name} imports {sorted(_imports(function))}"
        if path.stem != "__init__":  # the package imports every family to register its rules
            graph[path.stem] = _imports(tree)
    visiting, done = [], set()

    def visit(module: str) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(module):] + [module])}"
        if module in done or module not in graph:
            return
        visiting.append(module)
        for imported in graph[module]:
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
