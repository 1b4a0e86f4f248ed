"""Near-duplicate groups in an index: resized, re-compressed, cropped, re-toned, mirrored copies of a photo.

Every image asks the vector store for its k nearest neighbours (the index's own search, not all pairs);
each neighbour at or above a cosine threshold is a link (either side finding the other is enough). Links
are grouped by complete linkage around representatives, not as connected components: union-find would put
A and C in one group because A~B and B~C even when A and C are nothing alike, and on a real library a few
ordinary photos (skies, lawns, dark wallpapers) bridge everything into one giant group. Here:

1. Images are taken in order of how many links they have (then summed similarity, then id), and an image
   becomes a representative unless it is linked to one already chosen. The best-connected copy of a
   picture, usually the original, comes first; the representatives are pairwise below the threshold.
2. Every other linked image asks to join the representatives it is linked to, the most similar first. A
   group takes its candidates in order of similarity to its representative, and takes one only if it is at
   or above the threshold with the representative *and with every member already in*, by exact cosines of
   the stored vectors (a member pair the neighbour lists never saw is scored too). A candidate turned away
   asks its next representative. So an image that looks like two groups joins the closer one that fits.
3. Images left over (turned away everywhere, or representatives whose images all went elsewhere) are
   grouped again the same way over the links among themselves, until a round forms no group.

So no two members of a group are below the threshold: a chain A~B~C with A and C unrelated is one group of
B and the closer of A and C, and the other is left alone. A group's `weakest` is its lowest cosine between
any two members (its weakest link); each member's `similarity` is its cosine to the representative. The
work is one small block of cosines per group (its members and candidates), so memory stays bounded by the
largest group, not the library. Byte-identical files are one image in the index (ingest links them to one
vector): such an image is a group by itself, its files listed as paths.

The default threshold depends on the embedder, because cosines mean different things in different spaces.
Only the classic values are measured (benchmarks/quality.py, BENCHMARKS.md "Duplicates on real
wallpapers"); the others are a cautious starting point until someone measures them with real weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from retrieval.errors import UsageError
from retrieval.metadata import MetadataStore
from retrieval.vectors.base import Store

#: classic:v2's is chosen on the tune split of the real-wallpaper benchmark (benchmarks/quality.py: the
#: highest worst F1 within ±0.02; complete linkage needs a lower cosine than stars did, 0.80) and measured on
#: the held-out split (BENCHMARKS.md "Duplicates on real wallpapers"); v1's is kept as it was for old indexes.
#: Other embedder ids get UNMEASURED_THRESHOLD.
DEFAULT_THRESHOLDS = {"classic:v2": 0.72, "classic:v1": 0.82}
UNMEASURED_THRESHOLD = 0.95
# Copy groups on the benchmark have 14-20 members: 10 neighbours each filled up and cost 0.01 F1.
DEFAULT_NEIGHBOURS = 20
_QUERY_BATCH = 256

Id = TypeVar("Id", int, str)  # orderable, so that ties are broken by id and input order never matters
#: The square matrix of cosines between the given ids, in their order.
Similarity = Callable[[list[Id]], np.ndarray]


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
    """Images that are copies of one representative (the first member), each pair of them at or above the
    threshold; `weakest` is the lowest cosine between any two members (1.0 for a group of byte-identical
    files)."""

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


def store_similarity(store: Store) -> Similarity[int]:
    """Exact cosines between stored vectors, for `star_groups` to check members the neighbour lists missed."""

    def block(ids: list[int]) -> np.ndarray:
        vectors = store.vectors(ids).astype(np.float64)
        return vectors @ vectors.T

    return block


@dataclass(frozen=True)
class StarGroup(Generic[Id]):
    """A representative and the ids grouped with it, the representative first, then by decreasing similarity
    to it; `similarities` are those of each member to the representative (1.0 for itself), `weakest` the
    lowest between any two members."""

    members: list[Id]
    similarities: list[float]
    weakest: float

    @property
    def representative(self) -> Id:
        return self.members[0]


def star_groups(
    pairs: Iterable[tuple[Id, Id, float]],
    *,
    threshold: float | None = None,
    similarity: Similarity[Id] | None = None,
) -> list[StarGroup[Id]]:
    """Complete-linkage groups around representatives (see the module docstring), largest first. An id is
    left out when it has no link, or when no group would take it.

    `pairs` are (id, id, similarity) links, each in either order, the higher score kept for a repeat; those
    below `threshold` are dropped. Without `similarity`, two ids are close only if they are a given pair
    (right for all pairs at or above a threshold, as `pairs_from_matrix` gives); with it, every pair inside
    a group is scored by it and must reach `threshold`.
    """
    if similarity is not None and threshold is None:
        raise ValueError("a similarity needs the threshold its scores are held to")
    links: dict[Id, dict[Id, float]] = {}
    for a, b, score in pairs:
        if a == b or (threshold is not None and score < threshold):
            continue
        best = max(float(score), links.get(a, {}).get(b, -np.inf))
        links.setdefault(a, {})[b] = links.setdefault(b, {})[a] = best
    if not links:
        return []
    floor = threshold if threshold is not None else min(s for row in links.values() for s in row.values())

    def block(ids: list[Id]) -> np.ndarray:
        if similarity is not None:
            scores = np.asarray(similarity(ids), dtype=np.float64)
        else:
            scores = np.array([[links[a].get(b, -np.inf) for b in ids] for a in ids], dtype=np.float64)
        np.fill_diagonal(scores, 1.0)
        return np.minimum(scores, scores.T)

    groups: list[StarGroup[Id]] = []
    free = set(links)
    while True:
        formed = _one_round(links, free, block, floor)
        if not formed:
            break
        groups += formed
        free.difference_update(i for g in formed for i in g.members)
    groups.sort(key=lambda g: (-len(g.members), g.representative))
    return groups


def _one_round(
    links: dict[Id, dict[Id, float]], free: set[Id], block: Callable[[list[Id]], np.ndarray], floor: float
) -> list[StarGroup[Id]]:
    """The groups formed among `free` ids over their links to one another (steps 1 and 2)."""
    sub = {i: {j: s for j, s in links[i].items() if j in free} for i in free}
    sub = {i: row for i, row in sub.items() if row}
    order = sorted(sub, key=lambda i: (-len(sub[i]), -math.fsum(sub[i].values()), i))
    representatives: set[Id] = set()
    chosen: list[Id] = []
    for i in order:
        if not any(other in representatives for other in sub[i]):
            representatives.add(i)
            chosen.append(i)
    members: dict[Id, list[Id]] = {r: [r] for r in chosen}
    to_rep: dict[Id, dict[Id, float]] = {r: {r: 1.0} for r in chosen}
    weakest = dict.fromkeys(chosen, 1.0)
    wishes: dict[Id, Iterator[Id]] = {}
    pending: dict[Id, list[Id]] = {}

    def ask_next(i: Id) -> None:
        nxt = next(wishes[i], None)
        if nxt is not None:
            pending.setdefault(nxt, []).append(i)

    for i in order:
        if i not in representatives:
            closest = sorted((r for r in sub[i] if r in representatives), key=lambda r: (-sub[i][r], r))
            wishes[i] = iter(closest)
            ask_next(i)
    while pending:
        asked, pending = pending, {}
        for r, candidates in asked.items():
            ids = members[r] + candidates
            scores = block(ids)
            inside = list(range(len(members[r])))
            for j in sorted(range(len(inside), len(ids)), key=lambda j: (-scores[0, j], ids[j])):
                lowest = float(scores[j, inside].min())
                if lowest >= floor:
                    inside.append(j)
                    to_rep[r][ids[j]] = float(scores[0, j])
                    weakest[r] = min(weakest[r], lowest)
                else:
                    ask_next(ids[j])
            members[r] = [ids[j] for j in inside]
    out: list[StarGroup[Id]] = []
    for r in chosen:
        if len(members[r]) > 1:
            near = to_rep[r]
            followers = sorted((-near[i], i) for i in members[r][1:])
            ranked: list[Id] = [r]
            ranked += [i for _, i in followers]
            out.append(StarGroup(ranked, [near[i] for i in ranked], weakest[r]))
    return out


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
    cosines = store_similarity(store)
    stars = star_groups(similar_pairs(store, threshold, k, allowed), threshold=threshold, similarity=cosines)
    grouped = {i for g in stars for i in g.members}
    keep = None if allowed is None else {int(i) for i in allowed}
    if exact_copies:
        stars += [
            StarGroup([i], [1.0], 1.0)
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
            weakest = star.weakest
            if len(members) < len(star.members):  # the weakest link may have gone with a dropped id
                weakest = float(cosines([m.id for m in members]).min()) if len(members) > 1 else 1.0
            groups.append(DuplicateGroup(members, weakest))
    groups.sort(key=lambda g: (-g.files, g.members[0].paths[0]))
    images = len(store) if allowed is None else len(np.intersect1d(store.ids(), allowed))
    return DuplicateReport(threshold, k, images, groups)
