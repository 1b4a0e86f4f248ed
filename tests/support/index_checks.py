"""Independent checks of an index on disk, for the reliability tests and benchmarks/stress.py.

They read the database and the vector store directly (read-only, no repair), so they do not trust
the code under test to judge itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from retrieval.metadata import DB_NAME, Content, File, MetadataStore
from retrieval.vectors.hnsw.store import VectorStore


@dataclass(frozen=True)
class IndexState:
    files: int
    contents: int
    embedded: set[int]
    vectors: list[int]

    @property
    def consistent(self) -> bool:
        return sorted(self.embedded) == self.vectors


def read_state(index_dir: Path) -> IndexState:
    """What the database and the current vector-store generation hold, without changing either."""
    with MetadataStore(index_dir / DB_NAME, migrate=False) as meta, Session(meta.engine) as s:
        files = s.scalar(select(func.count(File.id))) or 0
        contents = s.scalar(select(func.count(Content.id))) or 0
        embedded = set(s.scalars(select(Content.id).where(Content.embedded)))
    with VectorStore.open(index_dir / "vectors") as store:
        vectors = store.ids().tolist()
    return IndexState(files, contents, embedded, vectors)


def assert_consistent(index_dir: Path, *, files: int | None = None) -> IndexState:
    """Every embedded row has exactly one vector and every vector a row; optionally `files` files indexed."""
    state = read_state(index_dir)
    assert len(set(state.vectors)) == len(state.vectors), "a vector id is stored twice"
    extra = set(state.vectors) - state.embedded
    missing = state.embedded - set(state.vectors)
    assert not extra and not missing, f"{len(extra)} vectors without row, {len(missing)} rows without vector"
    if files is not None:
        assert state.files == files, f"{state.files} files indexed, expected {files}"
    return state


def assert_repairable(index_dir: Path) -> IndexState:
    """The state any crash may leave: no row claims a vector the store lacks (vectors are saved first)."""
    state = read_state(index_dir)
    assert len(set(state.vectors)) == len(state.vectors), "a vector id is stored twice"
    missing = state.embedded - set(state.vectors)
    assert not missing, f"{len(missing)} rows marked embedded have no vector"
    return state
