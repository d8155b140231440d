"""The package's shape: imports go one way (no cycle among golf_core modules, no golf_core
import hidden inside a function), and no module grows past 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "golf_core"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (runs only as a script, where the module is __main__)."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _targets(node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The golf_core modules an import statement loads (`from pkg import mod` is the module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert node.level == 0, "relative imports are not used in golf_core"
        base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("golf_core"):
            out.add(name)
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the golf_core modules it imports at import time; and every golf_core import
    found inside a function (`module:line`)."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    local: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for top in tree.body:
            if _is_main_guard(top):
                continue
            for node in ast.walk(top):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    edges[name] |= _targets(node, modules) - {name}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and _targets(node, modules):
                        local.append(f"{name}:{node.lineno}")
    return edges, local


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_imports_it_must():
    """The checker itself: it finds the edges every training run depends on."""
    edges, _ = _graph()
    assert "golf_core.model.layers" in edges["golf_core.model.gpt"]
    assert "golf_core.settings" in edges["golf_core.train"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_golf_core_modules():
    edges, _ = _graph()
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_golf_core_import_inside_a_function():
    _, local = _graph()
    assert not local, f"function-local golf_core imports: {', '.join(local)}"


def test_no_module_is_longer_than_600_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
