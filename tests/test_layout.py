"""The layout shows the architecture (docs/architecture.md): every import between the package's
parts points down the table below, no module imports another in a cycle (imports inside
functions and under ``TYPE_CHECKING`` included), the parts that must stay light never load
torch, Lightning or MPI, and every module says where its code runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lightning_online"

#: Which parts each part may import (a part: a subpackage, or a public module at the top).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_wire": set(),
    "_util": {"errors"},
    "sampling": {"_util"},
    "buffers": {"_util"},
    "solvers": {"_util"},
    "models": {"_util"},
    "client": {"_wire"},
    "_transport": {"_util", "_wire", "errors"},
    "external": {"_util", "_wire", "_transport", "errors"},
    "_study": {"_util", "_wire", "_transport", "buffers", "sampling", "errors"},
    "recording": {"_util", "_wire", "_transport", "sampling", "errors"},
    "data": {
        "_util",
        "_wire",
        "_transport",
        "external",
        "_study",
        "buffers",
        "sampling",
        "recording",
        "errors",
    },
    "callbacks": {"data", "sampling", "buffers", "_util", "errors"},
    "cli": {
        "data",
        "callbacks",
        "sampling",
        "buffers",
        "external",
        "models",
        "solvers",
        "recording",
        "_util",
    },
    "__init__": {"errors", "data", "callbacks", "sampling", "buffers", "external", "recording"},
}
#: Third-party packages a part must never load (not even lazily).
FORBIDDEN: dict[str, set[str]] = {
    "sampling": {"torch", "lightning", "mpi4py"},
    "buffers": {"torch", "lightning", "mpi4py"},
    "_wire": {"torch", "lightning", "mpi4py"},
    "_study": {"lightning", "mpi4py"},
    "_transport": {"lightning"},
    "external": {"torch", "lightning"},
    "client": {"torch", "lightning", "mpi4py"},
    "solvers": {"torch", "lightning", "mpi4py"},
    "callbacks": {"mpi4py"},
    "recording": {"lightning", "mpi4py"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["lightning_online", *parts])] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


def _imports(path: Path, module: str) -> set[str]:
    """Every module of the package and every top-level package that ``path`` imports, anywhere
    in the file (functions and ``TYPE_CHECKING`` blocks included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            for alias in node.names:  # "from lightning_online._wire import tcp"
                if f"{base}.{alias.name}" in MODULES:
                    found.add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # code handed to a child interpreter ("from lightning_online.x import main")
            found.update(re.findall(r"from (lightning_online[\w.]*) import", node.value))
    return found


GRAPH = {
    m: {i for i in _imports(p, m) if i in MODULES and i != m and not m.startswith(i + ".")}
    for m, p in MODULES.items()
}


def test_every_import_between_parts_points_down_the_table() -> None:
    upward = []
    for module, targets in GRAPH.items():
        part = _part(module)
        assert part in ALLOWED, f"{module}: a new part; add it to ALLOWED and docs/architecture.md"
        for target in targets:
            other = _part(target)
            if other != part and other not in ALLOWED[part]:
                upward.append(f"{module} -> {target}")
    assert not upward


def test_no_import_cycle_between_modules() -> None:
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles


def test_the_parts_table_has_no_cycle_itself() -> None:
    order: list[str] = []
    todo = dict(ALLOWED)
    while todo:
        ready = [p for p, deps in todo.items() if deps <= set(order)]
        assert ready, f"the table of parts has a cycle among {sorted(todo)}"
        order += sorted(ready)
        for p in ready:
            del todo[p]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_light_parts_never_load_heavy_packages(part: str) -> None:
    loaded = []
    for module, path in MODULES.items():
        if _part(module) != part:
            continue
        tops = {name.split(".")[0] for name in _imports(path, module)}
        loaded += [f"{module} imports {t}" for t in sorted(tops & FORBIDDEN[part])]
    assert not loaded


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_where_its_code_runs(module: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text())) or ""
    assert re.search(r"\b(thread|process|Where code runs)", doc, re.I), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_long_module_says_why_at_its_top(module: str) -> None:
    text = MODULES[module].read_text()
    if len(text.splitlines()) <= 450:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert "Over 400 lines" in doc, f"{module}: split it, or say why it stays whole"
