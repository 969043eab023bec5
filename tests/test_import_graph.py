"""The modules of robustagg.train and robustagg.data import each other without a cycle (issue 18, item 2: data/base <-> data/partition
and train/components <-> train/config were the two circles)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, name, modules):
    """Modules of robustagg that ``path`` imports anywhere, inside functions too (a cycle
    dodged by a local import is still a cycle); ``if TYPE_CHECKING:`` blocks are left out.
    ``from package import submodule`` counts as importing the submodule only."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            found |= subs if subs else {base}
    return {m for m in found if m in modules and m != name}


def graph():
    files = {module_name(p): p for p in (ROOT / "robustagg").rglob("*.py")}
    return {name: imports(path, name, set(files)) for name, path in files.items()}


def find_cycle(edges, within):
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if not nxt.startswith(within):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(n for n in edges if n.startswith(within)):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_named_circles_are_gone():
    edges = graph()
    assert "robustagg.data.base" not in edges["robustagg.data.partition"]
    assert "robustagg.train.config" not in edges["robustagg.train.components"]


def test_no_import_cycle_between_the_modules_of_train_and_data():
    edges = graph()
    for package in ("robustagg.train.", "robustagg.data."):
        assert find_cycle(edges, package) is None


def test_no_import_cycle_in_the_whole_package():
    """The code map of robustagg (every module, imports inside functions included) has no circle."""
    assert find_cycle(graph(), "robustagg") is None
