"""The import rule of docs/ARCHITECTURE.md, checked on every module's source.

Packages form one line, and a module imports only its own package and those to its left::

    proxy <- lab <- pmip <- topologies <- experiments <- analysis <- benchmarks

``analysis`` reads runs through ``experiments.layout`` alone. ``proxy`` is standard library
only (operators install it alone). No project module is imported inside a function: such a
delayed import is how a cycle hides. Inside each package the module imports form no cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORDER = ("proxy", "lab", "pmip", "topologies", "experiments", "analysis", "benchmarks")
RANK = {name: i for i, name in enumerate(ORDER)}
#: What a package may import of ``experiments`` although it ranks above it: only the layout.
NARROW = {"analysis": {"experiments": {"experiments.layout"}}}


def modules() -> list[tuple[str, Path]]:
    out = []
    for package in ORDER:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out.append((name, path))
    return out


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for every import statement."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # "from pkg import mod" imports the module pkg.mod where there is one, and
                # pkg itself only for the names that are not modules.
                base, names = child.module, [alias.name for alias in child.names]
                subs = [f"{base}.{n}" for n in names if base in _PROJECT and _exists(f"{base}.{n}")]
                found.extend((sub, in_function, child.lineno) for sub in subs)
                if len(subs) < len(names):
                    found.append((base, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


class _Project:
    def __contains__(self, module: str) -> bool:
        return module.split(".")[0] in RANK


_PROJECT = _Project()


def _exists(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


ALL = modules()


def test_every_package_is_found():
    assert {name.split(".")[0] for name, _ in ALL} == set(ORDER)
    assert len(ALL) > 50


@pytest.mark.parametrize("name,path", ALL, ids=[n for n, _ in ALL])
def test_imports_follow_the_package_order(name: str, path: Path) -> None:
    own = name.split(".")[0]
    bad = []
    for target, in_function, line in imports(path):
        top = target.split(".")[0]
        if top not in RANK:
            continue
        where = f"{path.relative_to(REPO)}:{line} imports {target}"
        if in_function:
            bad.append(f"{where} inside a function")
        if RANK[top] > RANK[own]:
            allowed = NARROW.get(own, {}).get(top)
            if allowed is None or (target != top and target not in allowed):
                bad.append(f"{where}, which is above {own}")
        elif (
            top != own
            and top in NARROW.get(own, {})
            and target != top
            and target not in NARROW[own][top]
        ):
            bad.append(f"{where}: {own} may use only {sorted(NARROW[own][top])} of {top}")
    assert not bad, "\n".join(bad)


def test_analysis_reads_experiments_only_through_the_layout():
    for name, path in ALL:
        if name.startswith("analysis"):
            for target, _, line in imports(path):
                if target.split(".")[0] in ("experiments", "topologies", "lab", "pmip"):
                    assert target == "experiments.layout", f"{path}:{line} imports {target}"


def test_the_proxy_needs_only_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    for name, path in ALL:
        if name.startswith("proxy"):
            for target, _, line in imports(path):
                top = target.split(".")[0]
                assert top in stdlib or top == "proxy" or top == "__future__", (
                    f"{path}:{line} imports {target}"
                )


def test_no_package_has_an_import_cycle():
    graph: dict[str, set[str]] = {}
    names = {n for n, _ in ALL}
    for name, path in ALL:
        graph[name] = {t for t, _, _ in imports(path) if t in names and t != name}

    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)


def test_no_module_is_oversized():
    big = [
        f"{path.relative_to(REPO)}: {n} lines"
        for _, path in ALL
        if (n := len(path.read_text().splitlines())) > 650
    ]
    assert not big, big
