"""qbench's modules import each other one way: no import circle, counting imports inside functions
(they run too, only later) and leaving out imports under `if TYPE_CHECKING:` (type hints only). The
executors share planning and progress, not each other. Every module of the package is walked,
whoever added it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "qbench"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST):
    """Every import statement of the tree, at any depth, but those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if _type_checking(node):
            for other in node.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def imported(path: Path) -> set[str]:
    """The qbench modules a file imports: `from qbench.x import y` counts as qbench.x, or as
    qbench.x.y where y is a module; relative imports are resolved against the file's package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "qbench"}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        if base.split(".")[0] != "qbench":
            continue
        for alias in node.names:
            found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imported(p) for p in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    graph = import_graph()
    assert len(graph) > 40 and "qbench.records" in graph
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_qbench_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize(("one", "other"), [("local", "ray"), ("ray", "local")])
def test_the_executors_do_not_import_each_other(one, other):
    graph = import_graph()
    module = f"qbench.execute.{one}"
    assert module in graph
    assert f"qbench.execute.{other}" not in graph[module]
    assert {"qbench.plan", "qbench.execute.progress"} <= graph[module]


CLI = PACKAGE / "cli"
CLI_MAX_LINES = 400  # a command module is read in one sitting (issue 22: `cli/`, option parsing only)
CLI_SHARED = {"__init__", "__main__", "common"}  # the group, `python -m qbench.cli`, the option helpers


def test_the_cli_is_one_short_module_per_command_group():
    """Issue 22: `qbench/cli/` holds one module per command group, none over CLI_MAX_LINES lines; a
    command module imports the shared helpers (`common`), never another command module, and `common`
    imports none of them."""
    assert (CLI / "__init__.py").is_file(), "the command line is the package qbench/cli/"
    files = sorted(CLI.glob("*.py"))
    long = {p.name: n for p in files if (n := len(p.read_text().splitlines())) > CLI_MAX_LINES}
    assert not long, f"over {CLI_MAX_LINES} lines: {long}"
    graph = import_graph()
    commands = {module_name(p) for p in files if p.stem not in CLI_SHARED}
    assert len(commands) >= 3, commands
    for name in sorted(commands | {"qbench.cli.common"}):
        others = graph[name] & (commands - {name})
        assert not others, f"{name} imports the command module(s) {sorted(others)}"
