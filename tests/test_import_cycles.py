"""No module of rscompress imports (directly or through others) one that imports it back:
module-level and function-level imports alike, ``if TYPE_CHECKING:`` blocks aside."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rscompress"


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rscompress"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # a submodule imported by name
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("rscompress"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ("rscompress." + ".".join(path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = _imports(ast.parse(path.read_text()))
    return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycles():
    graph = _graph()
    cycles = [cycle for module in sorted(graph) if (cycle := _cycle_from(graph, module))]
    assert not cycles, " | ".join(" -> ".join(c) for c in cycles[:3])


def test_the_checker_sees_a_cycle():
    assert _cycle_from({"a": {"b"}, "b": {"a"}}, "a") == ["a", "b", "a"]
    assert _cycle_from({"a": {"b"}, "b": set()}, "a") is None
