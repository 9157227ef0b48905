"""The shape of the code: imports flow one way (no cycles), files and functions stay short.

Read from the source with ``ast`` (nothing is imported), so a cycle is found even where it
would only bite at run time: imports inside functions and under ``TYPE_CHECKING`` count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tinyvision"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
# The CLI's argument table: one flat list of add_argument calls, read as a table, not a path.
LONG_FUNCTIONS_ALLOWED = {("cli.py", "build_parser")}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path) -> dict[str, Path]:
    return {module_name(path, package.parent): path for path in sorted(package.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..data import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from tinyvision import distributed` imports a module, not a name.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package`` and the package's modules it imports."""
    found = modules(package)
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_function_local_imports_are_read_too(tmp_path):
    package = tmp_path / "tinyvision"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from tinyvision.b import g\n")
    (package / "b.py").write_text("from tinyvision import a\n")
    graph = import_graph(package)
    assert graph["tinyvision.a"] == {"tinyvision.b"} and graph["tinyvision.b"] == {"tinyvision.a"}
    assert find_cycle(graph) == ["tinyvision.a", "tinyvision.b", "tinyvision.a"]


def test_the_data_flows_one_way():
    # data -> models -> engine -> evaluation and report -> cli: nothing lower imports higher.
    graph = import_graph()
    lower_than = {
        "tinyvision.engine": {"tinyvision.report", "tinyvision.evaluate", "tinyvision.cli"},
        "tinyvision.loop": {"tinyvision.report", "tinyvision.evaluate", "tinyvision.engine"},
        "tinyvision.plots": {"tinyvision.engine", "tinyvision.loop", "tinyvision.report"},
        "tinyvision.models": {"tinyvision.config", "tinyvision.summary", "tinyvision.engine"},
        "tinyvision.summary": {"tinyvision.report", "tinyvision.engine"},
    }
    for name, higher in lower_than.items():
        below = {m for m in graph if m == name or m.startswith(name + ".")}
        for module in below:
            assert not graph[module] & higher, f"{module} imports {graph[module] & higher}"


def function_lengths() -> list[tuple[str, str, int]]:
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                rows.append((path.name, node.name, node.end_lineno - start + 1))
    return rows


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_source_file_is_over_600_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(SRC)} has {lines} lines"


def test_no_function_is_over_80_lines():
    long = [
        f"{file}:{name} ({lines} lines)"
        for file, name, lines in function_lengths()
        if lines > MAX_FUNCTION_LINES and (file, name) not in LONG_FUNCTIONS_ALLOWED
    ]
    assert not long, "functions over 80 lines: " + ", ".join(long)
