"""Near-duplicate groups in an index: resized, re-compressed, slightly cropped or re-toned copies of a photo.

Every image asks the vector store for its k nearest neighbours (the index's own search, not all pairs);
each neighbour at or above a cosine threshold is a link, and linked images are joined by union-find, so a
group is a connected component (A~B and B~C put A, B and C together). Byte-identical files are one image in
the index (ingest links them to one vector): such an image is a group by itself, its files listed as paths.

The default threshold depends on the embedder, because cosines mean different things in different spaces.
Only the `classic` value is measured (benchmarks/quality.py, BENCHMARKS.md "Quality"); the others are a
cautious starting point until someone measures them with real weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.errors import UsageError
from retrieval.metadata import MetadataStore
from retrieval.vectors.base import Store

DEFAULT_THRESHOLDS = {"classic": 0.82}
UNMEASURED_THRESHOLD = 0.95
DEFAULT_NEIGHBOURS = 10
_QUERY_BATCH = 256


def default_threshold(embedder_id: str | None) -> float:
    """The cosine above which two images of an index built by `embedder_id` count as copies."""
    family = (embedder_id or "").split(":", 1)[0]
    return DEFAULT_THRESHOLDS.get(family, UNMEASURED_THRESHOLD)


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group: its id in the index and every file holding exactly these bytes."""

    id: int
    paths: list[str]


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are copies of one another; `weakest` is the lowest cosine among the links that joined
    them (1.0 for a group of byte-identical files)."""

    members: list[DuplicateMember]
    weakest: float

    @property
    def files(self) -> int:
        return sum(len(m.paths) for m in self.members)

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "images": len(self.members),
            "weakest": round(self.weakest, 6),
            "members": [{"id": m.id, "paths": m.paths} for m in self.members],
        }


@dataclass(frozen=True)
class DuplicateReport:
    """The groups found among `images` images at cosine `threshold`, each image asking for `neighbours`."""

    threshold: float
    neighbours: int
    images: int
    groups: list[DuplicateGroup]

    def to_dict(self) -> dict[str, object]:
        return {
            "threshold": self.threshold,
            "neighbours": self.neighbours,
            "images": self.images,
            "groups": [g.to_dict() for g in self.groups],
        }


def similar_pairs(
    store: Store, threshold: float, k: int = DEFAULT_NEIGHBOURS
) -> list[tuple[int, int, float]]:
    """(id a, id b, cosine) with a < b for every k-nearest-neighbour link at or above `threshold`."""
    if k < 1:
        raise UsageError(f"neighbours must be at least 1, got {k}")
    ids = store.ids()
    best: dict[tuple[int, int], float] = {}
    for start in range(0, len(ids), _QUERY_BATCH):
        batch = ids[start : start + _QUERY_BATCH]
        found, scores = store.search(store.vectors(batch.tolist()), min(k + 1, len(ids)))
        for own, row_ids, row_scores in zip(batch, found, scores, strict=True):
            for other, score in zip(row_ids, row_scores, strict=True):
                if other < 0 or other == own or score < threshold:
                    continue
                key = (int(min(own, other)), int(max(own, other)))
                best[key] = max(best.get(key, -1.0), float(score))
    return [(a, b, s) for (a, b), s in best.items()]


def union_groups(pairs: Sequence[tuple[int, int, float]]) -> list[tuple[list[int], float]]:
    """Connected components of the linked ids (union-find): each as (sorted ids, weakest link used)."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for x in parent:
        members.setdefault(root(x), []).append(x)
    weakest: dict[int, float] = {}
    for a, _, score in pairs:
        r = root(a)
        weakest[r] = min(weakest.get(r, 1.0), score)
    return [(sorted(ids), weakest[r]) for r, ids in members.items()]


def find_duplicates(
    store: Store,
    meta: MetadataStore,
    *,
    threshold: float,
    k: int = DEFAULT_NEIGHBOURS,
    exact_copies: bool = True,
) -> DuplicateReport:
    """Groups of near-duplicate images, most files first; with `exact_copies`, also single images held in
    several identical files. Ids the database no longer knows are dropped."""
    if not -1.0 <= threshold <= 1.0:
        raise UsageError(f"threshold is a cosine between -1 and 1, got {threshold}")
    components = union_groups(similar_pairs(store, threshold, k))
    grouped = {i for ids, _ in components for i in ids}
    if exact_copies:
        components += [([i], 1.0) for i in meta.copied_ids() if i not in grouped and i in store]
    paths = meta.paths_of(sorted({i for ids, _ in components for i in ids}))
    groups = []
    for ids, weakest in components:
        members = [DuplicateMember(i, paths[i]) for i in ids if i in paths]
        if sum(len(m.paths) for m in members) > 1:
            groups.append(DuplicateGroup(members, weakest))
    groups.sort(key=lambda g: (-g.files, g.members[0].paths[0]))
    return DuplicateReport(threshold, k, len(store), groups)
