"""The layout's promises, checked on the source: arrows point one way, the server is HTTP over the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import retrieval

PACKAGE = Path(retrieval.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of this package imported when `path` is imported (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _top_level_imports(p, modules) - {_module_name(p)} for p in files}


def test_no_module_of_the_library_imports_itself_back_through_others():
    graph = _graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, cycles[:3]


def test_the_server_imports_only_the_engine_and_the_error_types_from_the_library():
    source = (PACKAGE / "serve" / "app.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("retrieval"):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("retrieval"))
    assert imported <= {"retrieval.engine", "retrieval.errors"}, imported


def test_the_engine_opens_stores_through_the_factory_only():
    source = (PACKAGE / "engine.py").read_text()
    assert "retrieval.vectors.hnsw" not in source and "retrieval.vectors.milvus" not in source


def test_every_sql_query_lives_in_the_metadata_package():
    """Outside retrieval/metadata only SQLAlchemy's error types may be imported: no query is built there."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "metadata" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [
                f"{path.relative_to(PACKAGE)}: {name}"
                for name in names
                if name.split(".")[0] == "sqlalchemy" and name != "sqlalchemy.exc"
            ]
    assert not offenders, offenders
