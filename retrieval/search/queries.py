"""Queries: text, example images and indexed images, each added or subtracted, combined on unit vectors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from retrieval.errors import QueryError
from retrieval.metadata.reader import MetadataReader
from retrieval.vectors.base import Store

if TYPE_CHECKING:
    from retrieval.metadata import Filter, MetadataStore

PartKind = Literal["text", "image", "id"]
MAX_K = 10_000


@dataclass(frozen=True)
class QueryPart:
    """One ingredient of a query; `sign` is +1 (more like this) or -1 (less like this)."""

    kind: PartKind
    value: str | int | Path | bytes
    sign: int = 1

    def describe(self) -> str:
        op = "+" if self.sign > 0 else "-"
        value = "<upload>" if isinstance(self.value, bytes) else self.value
        return f"{op}{self.kind}:{value}"


@dataclass(frozen=True)
class Query:
    parts: tuple[QueryPart, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, *parts: QueryPart) -> Query:
        return cls(tuple(parts))

    def describe(self) -> str:
        return " ".join(p.describe() for p in self.parts)

    @property
    def exclude_ids(self) -> set[int]:
        """Indexed images used as positive examples are not returned as their own results."""
        return {int(p.value) for p in self.parts if p.kind == "id" and p.sign > 0}  # type: ignore[arg-type]


@dataclass(frozen=True)
class SearchHit:
    """One result: `id` is the image's id in the index (stable across re-ingests while the file exists)."""

    rank: int
    id: int
    score: float
    path: str
    root: str
    width: int
    height: int
    format: str
    captured_at: datetime | None
    copies: int

    @property
    def relative_path(self) -> str:
        try:
            return str(Path(self.path).relative_to(self.root))
        except ValueError:
            return self.path


def combine(vectors: Sequence[np.ndarray], signs: Sequence[int]) -> np.ndarray:
    """Sum unit vectors with their signs and renormalise: the query direction."""
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32))
    for vec, sign in zip(vectors, signs, strict=True):
        v = np.asarray(vec, dtype=np.float32)
        total += sign * v / max(float(np.linalg.norm(v)), 1e-12)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise QueryError("the query parts cancel out (their sum is zero); drop a --minus part")
    return total / norm


def run_search(
    vector: np.ndarray,
    store: Store,
    meta: MetadataStore | MetadataReader,
    *,
    k: int,
    min_score: float | None = None,
    exclude: set[int] | None = None,
    ef: int | None = None,
    filter: Filter | None = None,
    allowed: np.ndarray | None = None,
) -> list[SearchHit]:
    """Nearest images to `vector`, best first, with metadata; ids unknown to the database are dropped.

    With a `filter`, results come only from the images it allows (`allowed`, when the caller has computed
    them already: `MetadataStore.allowed_ids(filter)`), and each hit reports its first file the filter
    allows; a filter that allows nothing gives no results."""
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    if filter is not None and filter.is_empty:
        filter = None
    filtering: MetadataStore | None = None
    if filter is not None:
        if isinstance(meta, MetadataReader):
            # A filter's SQL lives in MetadataStore; the sqlite3 reader serves unfiltered searches only.
            raise TypeError("a filtered search reads through MetadataStore, not MetadataReader")
        filtering = meta
        if allowed is None:
            allowed = filtering.allowed_ids(filter)
    pool = len(store) if allowed is None else min(len(store), len(allowed))
    if pool == 0:
        return []
    exclude = exclude or set()
    ask = min(pool, k + len(exclude))
    while True:
        ids, scores = store.search(np.asarray(vector, dtype=np.float32), ask, ef=ef, allowed=allowed)
        ids, scores = ids.reshape(-1), scores.reshape(-1)
        pairs = [
            (int(i), float(sc)) for i, sc in zip(ids, scores, strict=True) if i >= 0 and int(i) not in exclude
        ]
        weak = min_score is not None and any(sc < min_score for _, sc in pairs)
        if min_score is not None:
            pairs = [(i, sc) for i, sc in pairs if sc >= min_score]
        records = meta.records([i for i, _ in pairs])
        # Vectors without a row (left by an interrupted write until the next repair) are dropped;
        # ask the store for more so that k results still come back.
        if sum(i in records for i, _ in pairs) >= k or weak or ask >= pool:
            break
        ask = min(pool, ask * 2)
    shown: dict[int, tuple[str, str]] = {}
    if filtering is not None and filter is not None and filter.limits_files:
        shown = filtering.matching_paths([i for i, _ in pairs if i in records], filter)
    hits: list[SearchHit] = []
    for i, score in pairs:
        rec = records.get(i)
        if rec is None:
            continue
        path, root = shown.get(i, (rec.path, rec.root))
        hits.append(
            SearchHit(
                rank=len(hits) + 1,
                id=i,
                score=score,
                path=path,
                root=root,
                width=rec.width,
                height=rec.height,
                format=rec.format,
                captured_at=rec.captured_at,
                copies=rec.copies,
            )
        )
        if len(hits) == k:
            break
    return hits


def query_vector(
    query: Query,
    *,
    embed_texts: Callable[[list[str]], np.ndarray],
    embed_image: Callable[[Path | bytes], np.ndarray],
    stored_vector: Callable[[int], np.ndarray],
) -> np.ndarray:
    """Turn each part into a unit vector through the given functions, then combine them."""
    if not query.parts:
        raise QueryError("empty query: give TEXT, --image PATH or --like ID|PATH (an indexed image)")
    texts = [str(p.value) for p in query.parts if p.kind == "text"]
    for text in texts:
        if not text.strip():
            raise QueryError("empty text query")
    text_vecs = iter(embed_texts(texts)) if texts else iter(())
    vectors: list[np.ndarray] = []
    for part in query.parts:
        if part.kind == "text":
            vectors.append(next(text_vecs))
        elif part.kind == "image":
            vectors.append(embed_image(part.value))  # type: ignore[arg-type]
        else:
            vectors.append(stored_vector(int(part.value)))  # type: ignore[arg-type]
    return combine(vectors, [p.sign for p in query.parts])
