"""Near-duplicate groups in an index: resized, re-compressed, cropped, re-toned, mirrored copies of a photo.

Every image asks the vector store for its k nearest neighbours (the index's own search, not all pairs);
each neighbour at or above a cosine threshold is a link (either side finding the other is enough). Links
are grouped as stars, not as connected components: union-find would put A and C in one group because
A~B and B~C even when A and C are nothing alike, and on a real library a few ordinary photos (skies,
lawns, dark wallpapers) bridge everything into one giant group. Here:

1. Images are taken in order of how many links they have (then summed similarity, then id), and an image
   becomes a representative unless it is linked to one already chosen. The best-connected copy of a
   picture, usually the original, comes first; the representatives are pairwise below the threshold.
2. Every other linked image joins the representative it is most similar to (it has one, or step 1 would
   have made it a representative), so an image that looks like two groups joins the closer one.

So every member is within the threshold of its representative; a group's `weakest` is its lowest
member-to-representative cosine. Byte-identical files are one image in the index (ingest links them to one
vector): such an image is a group by itself, its files listed as paths.

The default threshold depends on the embedder, because cosines mean different things in different spaces.
Only the classic values are measured (benchmarks/quality.py, BENCHMARKS.md "Duplicates"); the others are a
cautious starting point until someone measures them with real weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from retrieval.errors import UsageError
from retrieval.metadata import MetadataStore
from retrieval.vectors.base import Store

#: Measured on real wallpapers (BENCHMARKS.md "Duplicates"); other embedder ids get UNMEASURED_THRESHOLD.
DEFAULT_THRESHOLDS = {"classic:v2": 0.80, "classic:v1": 0.82}
UNMEASURED_THRESHOLD = 0.95
# Copy groups on the benchmark have 14-20 members: 10 neighbours each filled up and cost 0.01 F1.
DEFAULT_NEIGHBOURS = 20
_QUERY_BATCH = 256

Id = TypeVar("Id", int, str)  # orderable, so that ties are broken by id and input order never matters


def default_threshold(embedder_id: str | None) -> float:
    """The cosine above which two images of an index built by `embedder_id` count as copies."""
    return DEFAULT_THRESHOLDS.get(embedder_id or "", UNMEASURED_THRESHOLD)


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group: its id in the index, every file holding exactly these bytes, and its cosine to
    the group's representative (1.0 for the representative itself)."""

    id: int
    paths: list[str]
    similarity: float = 1.0


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are copies of one representative (the first member); `weakest` is the lowest cosine of a
    member to it (1.0 for a group of byte-identical files)."""

    members: list[DuplicateMember]
    weakest: float

    @property
    def representative(self) -> int:
        return self.members[0].id

    @property
    def files(self) -> int:
        return sum(len(m.paths) for m in self.members)

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "images": len(self.members),
            "weakest": round(self.weakest, 6),
            "representative": self.representative,
            "members": [
                {"id": m.id, "paths": m.paths, "similarity": round(m.similarity, 6)} for m in self.members
            ],
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
    store: Store, threshold: float, k: int = DEFAULT_NEIGHBOURS, allowed: np.ndarray | None = None
) -> list[tuple[int, int, float]]:
    """(id a, id b, cosine) with a < b for every k-nearest-neighbour link at or above `threshold`; with
    `allowed` (sorted ids, a filter's), among those images only."""
    if k < 1:
        raise UsageError(f"neighbours must be at least 1, got {k}")
    ids = store.ids() if allowed is None else np.intersect1d(store.ids(), allowed)
    best: dict[tuple[int, int], float] = {}
    for start in range(0, len(ids), _QUERY_BATCH):
        batch = ids[start : start + _QUERY_BATCH]
        found, scores = store.search(store.vectors(batch.tolist()), min(k + 1, len(ids)), allowed=allowed)
        for own, row_ids, row_scores in zip(batch, found, scores, strict=True):
            for other, score in zip(row_ids, row_scores, strict=True):
                if other < 0 or other == own or score < threshold:
                    continue
                key = (int(min(own, other)), int(max(own, other)))
                best[key] = max(best.get(key, -1.0), float(score))
    return [(a, b, s) for (a, b), s in best.items()]


@dataclass(frozen=True)
class StarGroup(Generic[Id]):
    """A representative and the ids linked to it, the representative first, then by decreasing similarity
    to it; `similarities` are those of each member to the representative (1.0 for itself)."""

    members: list[Id]
    similarities: list[float]

    @property
    def representative(self) -> Id:
        return self.members[0]

    @property
    def weakest(self) -> float:
        return min(self.similarities)


def star_groups(pairs: Iterable[tuple[Id, Id, float]]) -> list[StarGroup[Id]]:
    """Star groups of linked ids (see the module docstring), largest first. An id is left out when it has no
    link, or when it would be a representative but each image linked to it joined a closer one.
    `pairs` are (id, id, similarity) links, each in either order, the higher score kept for a repeat."""
    links: dict[Id, dict[Id, float]] = {}
    for a, b, score in pairs:
        if a == b:
            continue
        best = max(float(score), links.get(a, {}).get(b, -np.inf))
        links.setdefault(a, {})[b] = links.setdefault(b, {})[a] = best
    order = sorted(links, key=lambda i: (-len(links[i]), -sum(links[i].values()), i))
    representatives: set[Id] = set()
    chosen: list[Id] = []
    for i in order:
        if not any(other in representatives for other in links[i]):
            representatives.add(i)
            chosen.append(i)
    joined: dict[Id, list[tuple[float, Id]]] = {r: [] for r in chosen}
    for i in order:
        if i not in representatives:
            score, representative = max(
                (s, other) for other, s in links[i].items() if other in representatives
            )
            joined[representative].append((score, i))
    groups = []
    for r in chosen:
        followers = sorted(joined[r], key=lambda pair: (-pair[0], pair[1]))
        if not followers:  # its links all went to closer representatives
            continue
        groups.append(StarGroup([r] + [i for _, i in followers], [1.0] + [s for s, _ in followers]))
    groups.sort(key=lambda g: (-len(g.members), g.representative))
    return groups


def pairs_from_matrix(
    ids: Sequence[Id], similarity: np.ndarray, threshold: float
) -> list[tuple[Id, Id, float]]:
    """Every link at or above `threshold` of a full (symmetric) similarity matrix over `ids`."""
    if similarity.shape != (len(ids), len(ids)):
        raise ValueError(f"similarity is {similarity.shape}, expected {(len(ids), len(ids))}")
    rows, cols = np.nonzero(np.triu(similarity >= threshold, k=1))
    return [
        (ids[r], ids[c], float(max(similarity[r, c], similarity[c, r])))
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
    ]


def find_duplicates(
    store: Store,
    meta: MetadataStore,
    *,
    threshold: float,
    k: int = DEFAULT_NEIGHBOURS,
    exact_copies: bool = True,
    allowed: np.ndarray | None = None,
) -> DuplicateReport:
    """Groups of near-duplicate images, most files first; with `exact_copies`, also single images held in
    several identical files. Ids the database no longer knows are dropped. With `allowed` (a filter's ids),
    only those images are grouped."""
    if not -1.0 <= threshold <= 1.0:
        raise UsageError(f"threshold is a cosine between -1 and 1, got {threshold}")
    stars = star_groups(similar_pairs(store, threshold, k, allowed))
    grouped = {i for g in stars for i in g.members}
    keep = None if allowed is None else {int(i) for i in allowed}
    if exact_copies:
        stars += [
            StarGroup([i], [1.0])
            for i in meta.copied_ids()
            if i not in grouped and i in store and (keep is None or i in keep)
        ]
    paths = meta.paths_of(sorted({i for g in stars for i in g.members}))
    groups = []
    for star in stars:
        members = [
            DuplicateMember(i, paths[i], s)
            for i, s in zip(star.members, star.similarities, strict=True)
            if i in paths
        ]
        if sum(len(m.paths) for m in members) > 1:
            groups.append(DuplicateGroup(members, min(m.similarity for m in members)))
    groups.sort(key=lambda g: (-g.files, g.members[0].paths[0]))
    images = len(store) if allowed is None else len(np.intersect1d(store.ids(), allowed))
    return DuplicateReport(threshold, k, images, groups)
