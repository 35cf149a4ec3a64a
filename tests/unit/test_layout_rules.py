"""The layout's rules (DESIGN.md §1, §7), checked statically: no process, no import executed.

Imports are read with ``ast``. Two kinds count differently:

- module-level imports (anywhere outside a function body, ``try`` blocks included, ``if
  TYPE_CHECKING:`` blocks excluded) run when the module is imported. They decide import cycles
  and what a module drags in: a cycle among them breaks or half-initialises a module depending
  on which side is imported first, and a heavy dependency among them is paid by every importer.
- imports inside functions run only when called. They are how a module defers a heavy or
  optional dependency (torch, NIXL) to the code path that needs it, so they form no cycle and
  do not make an importer heavy. They still count for ``common/``, which must not depend on
  the rest of pdserve at all.

Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``: what a module drags in
follows those edges too. Cycles do not: a package's ``__init__`` re-exporting its own submodules
is the ordinary pattern, not a cycle.
"""

from __future__ import annotations

import ast
from collections import deque
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "engine", "kv_transfer", "worker", "router", "prefill_worker",
            "decode_worker", "proto", "deploy", "benchmarks")
MAX_LINES = 400
# Reaching any of these means torch (or NIXL, loaded with __import__ by name, or Triton) at
# import time.
HEAVY_EXTERNAL = ("torch", "triton", "nixl", "nixl_cu12", "nixl_cu13")
HEAVY_MODULES = ("kv_transfer.nixl_connector",)
# The engine modules the router uses: the tokenizer and chat templates, and a token's bytes for
# logprobs (plus the package __init__ files importing them runs, which are lazy by design).
ROUTER_ENGINE_ALLOWED = ("engine", "engine.text", "engine.text.tokenizer", "engine.text.token_bytes")


def _is_generated(path: Path) -> bool:
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py"))


@cache
def _modules() -> dict[str, Path]:
    """Every module of the repository's packages, by dotted name (packages as their
    ``__init__``); generated proto stubs excluded."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if _is_generated(path) or "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module, module_level: bool):
    """Import statements, outside function bodies only when ``module_level``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            elif module_level and isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            elif module_level and isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Dotted names an import statement loads (repo modules resolved, others as written)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        is_package = _modules()[module].name == "__init__.py"
        package = module.split(".")[: None if is_package else -1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    # ``from pkg import name`` loads pkg, and pkg.name when that is a submodule.
    out = [base]
    out += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in _modules()]
    return out


@cache
def _imports(module: str, module_level: bool = True) -> frozenset[str]:
    tree = ast.parse(_modules()[module].read_text(), filename=str(_modules()[module]))
    return frozenset(t for node in _import_nodes(tree, module_level)
                     for t in _targets(module, node))


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` and the packages importing it runs: ``a``, ``a.b``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _reached(start: str) -> dict[str, str | None]:
    """Everything importing ``start`` loads at module level, each with the module that
    imported it first (to print the chain); externals by their top-level name."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        if module not in _modules():
            continue  # an external: its own imports are not ours to follow
        for target in _imports(module):
            top = target.split(".")[0]
            names = [n for n in _with_parents(target) if n in _modules()] if top in PACKAGES \
                else [top]
            for name in names:
                if name not in parent:
                    parent[name] = module
                    queue.append(name)
    return parent


def _chain(parent: dict[str, str | None], end: str) -> str:
    chain = [end]
    while parent[chain[-1]] is not None:
        chain.append(parent[chain[-1]])
    return " <- ".join(chain)


def test_no_file_passes_the_length_limit():
    """One concept per file; a file that outgrows 400 lines holds two (DESIGN.md §7). Tests
    count too; generated proto stubs do not."""
    paths = list(_modules().values()) + [p for p in (ROOT / "tests").rglob("*.py")
                                         if "__pycache__" not in p.parts]
    long = {str(path.relative_to(ROOT)): n for path in paths
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concept): {long}"


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_check_sees_cycles():
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"]}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    """Module-level imports among the repository's modules form no cycle (see the module
    docstring for why function-level imports do not count)."""
    graph = {m: sorted(t for t in _imports(m) if t in _modules() and t != m) for m in _modules()}
    cycles = _cycles(graph)
    assert not cycles, f"module-level import cycles: {cycles}"


def test_router_reaches_no_torch_nixl_or_engine_internals():
    """The router runs in a slim image without torch or NIXL (docker/router.Dockerfile): no
    router module may reach, through module-level imports, torch, Triton, NIXL, or any engine
    module but the tokenizer. (test_router_is_torch_free.py checks the same by building the app
    with torch hidden; this one names the offending chain without starting anything.)"""
    bad = []
    for module in sorted(m for m in _modules() if m.split(".")[0] == "router"):
        parent = _reached(module)
        for name in parent:
            top = name.split(".")[0]
            heavy = top in HEAVY_EXTERNAL or name in HEAVY_MODULES
            engine_internal = top == "engine" and name not in ROUTER_ENGINE_ALLOWED
            if heavy or engine_internal:
                bad.append(_chain(parent, name))
    assert not bad, "the router reaches:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("module_level", [True, False], ids=["module-level", "in-functions"])
def test_common_is_the_bottom(module_level):
    """``common/`` is the torch-free bottom every process shares: it imports nothing of pdserve
    but itself, and no torch, not even inside a function."""
    repo_tops = set(PACKAGES) - {"common"}
    bad = {m: sorted(t for t in _imports(m, module_level)
                     if t.split(".")[0] in repo_tops or t.split(".")[0] in HEAVY_EXTERNAL)
           for m in _modules() if m.split(".")[0] == "common"}
    bad = {m: targets for m, targets in bad.items() if targets}
    assert not bad, f"common/ must import only itself and light libraries: {bad}"
