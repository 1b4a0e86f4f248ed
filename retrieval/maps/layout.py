"""Neighbourhood maps of a result set: a 2-D t-SNE layout of the stored vectors, its faithfulness, clusters.

A map holds the query (its vector is known, so it is placed like any other point), the top results and,
when asked, each result's own nearest neighbours ("context"). The layout is scikit-learn's Barnes-Hut t-SNE
on the unit vectors, reduced by PCA to at most 50 dimensions first, started from PCA and seeded, so one seed
gives one map. Its `trustworthiness` (sklearn.manifold.trustworthiness; 1.0 = every 2-D neighbourhood is a
true one) says how far the picture can be believed. Clusters are k-means on the same reduced vectors; their
number is given or chosen by silhouette.

Everything here returns typed results; drawing them is `retrieval.maps.render`'s job."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

import numpy as np

from retrieval.errors import QueryError, UsageError
from retrieval.metadata import MetadataStore
from retrieval.search.queries import Query, SearchHit
from retrieval.vectors.base import Store

PointRole = Literal["query", "result", "context"]
P = ParamSpec("P")
R = TypeVar("R")

#: t-SNE needs a handful of points to mean anything; below this a map is refused.
MIN_POINTS = 5
#: Above this many points a map still works but is slow to lay out and crowded to read: warn.
WARN_POINTS = 1000
#: Above this many points a map is slow to lay out and shows nothing legible: refuse.
MAX_POINTS = 5000
PCA_DIMS = 50
#: 250 early-exaggeration iterations (fixed by scikit-learn) + 250 of refinement. On the benchmark vectors
#: this is within 0.006 trustworthiness of 1000 iterations at half the time (BENCHMARKS.md, "Maps").
DEFAULT_MAX_ITER = 500
#: Maps of up to this many points get SMALL_MAP_ITER iterations instead: there 500 can leave groups
#: unseparated. 3 groups of 12 photos made in the test suite came out with mean distances within a group
#: 0.57 of those between groups under scikit-learn 1.9 (0.17-0.62 by seed under 1.6); at 1000 iterations
#: 0.04-0.06 under both. Small layouts are cheap: 0.1-0.6 s at 1000 iterations up to 200 points.
SMALL_MAP, SMALL_MAP_ITER = 250, 1000
MAX_AUTO_CLUSTERS = 8
#: Trustworthiness is O(n^2) in memory and time; above this many points it is estimated on a seeded sample.
TRUST_SAMPLE = 2000


@dataclass(frozen=True)
class MapProgress:
    """Which stage a map is at, for a caller to show: "layout" (search and t-SNE), "thumbnails" (`done` of
    `total` made from photos; none once cached), "drawing". `total` is None where there is nothing to
    count."""

    stage: str
    done: int = 0
    total: int | None = None


MapProgressFn = Callable[[MapProgress], None]


class LargeMapWarning(UserWarning):
    """A map with more points than WARN_POINTS: it works but takes seconds and is crowded."""


@dataclass(frozen=True)
class LayoutParams:
    """What the layout was computed with; enough to reproduce it."""

    perplexity: float
    max_iter: int
    pca_dims: int
    seed: int
    trust_neighbors: int
    trust_points: int
    init: str = "pca"
    learning_rate: str = "auto"
    method: str = "barnes_hut"


@dataclass(frozen=True)
class Layout:
    """2-D coordinates (n, 2) of the input rows, the PCA-reduced rows they came from, and how trustworthy."""

    coords: np.ndarray
    reduced: np.ndarray
    trustworthiness: float
    params: LayoutParams


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray
    k: int
    silhouette: float | None
    chosen: bool  # True when k was picked by silhouette rather than given


@dataclass(frozen=True)
class MapPoint:
    """One point of a map. `id` is the image's id in the index (None for a text or file query); `rank` is the
    search rank of a result; `score` is the cosine with the query; `cluster` is 0-based (-1 for the query)."""

    role: PointRole
    id: int | None
    path: str | None
    x: float
    y: float
    score: float
    rank: int | None
    cluster: int


@dataclass(frozen=True)
class NeighbourhoodMap:
    """A laid-out result set, ready to render."""

    title: str
    points: tuple[MapPoint, ...]
    params: LayoutParams
    trustworthiness: float
    clusters: int
    clusters_chosen: bool
    seconds: dict[str, float]

    @property
    def n_results(self) -> int:
        return sum(p.role == "result" for p in self.points)

    @property
    def n_context(self) -> int:
        return sum(p.role == "context" for p in self.points)

    def to_dict(self) -> dict[str, object]:
        return {
            "title": self.title,
            # None for an empty map, which has no layout to trust (NaN is not JSON).
            "trustworthiness": round(self.trustworthiness, 6) if self.points else None,
            "clusters": self.clusters,
            "clusters_chosen": self.clusters_chosen,
            "params": asdict(self.params),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "points": [asdict(p) for p in self.points],
        }


def choose_iterations(n: int) -> int:
    """t-SNE iterations for a map of n points: more for a small map (SMALL_MAP), where they are cheap and
    500 can leave its groups run together."""
    return SMALL_MAP_ITER if n <= SMALL_MAP else DEFAULT_MAX_ITER


def choose_perplexity(n: int) -> float:
    """n/10 up to 30 (scikit-learn's default), n/100 beyond 3,000 points, within 5..50, and always below
    (n-1)/3 so that every point has enough neighbours to weigh. On the benchmark vectors 30 did best at 500
    points and tied at 1,000, while at 200 points 15-20 beat it (BENCHMARKS.md, "Maps")."""
    return float(round(min(50.0, max(5.0, min(30.0, n / 10), n / 100), (n - 1) / 3), 1))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_size(n: int) -> None:
    if n < MIN_POINTS:
        raise QueryError(
            f"a map needs at least {MIN_POINTS} points, got {n}; ask for more results (-n) or add --expand"
        )
    if n > MAX_POINTS:
        raise UsageError(
            f"a map of {n} points would be slow to lay out and unreadable; keep it under {MAX_POINTS} "
            "(lower -n or drop --expand)"
        )
    if n > WARN_POINTS:
        warnings.warn(
            f"a map of {n} points takes several seconds and is crowded; {WARN_POINTS} or fewer reads better",
            LargeMapWarning,
            stacklevel=3,
        )


def _single_threaded(fn: Callable[P, R]) -> Callable[P, R]:
    """Run `fn` with BLAS and OpenMP held to one thread.

    The matrices are small (n x 50): threads gain nothing, and t-SNE's and k-means' OpenMP threads next to
    BLAS's oversubscribe the cores. On this project's busy 2-core machine a 500-point layout ran up to 6x,
    and k-means on 1,000 points up to 40x, slower with them (BENCHMARKS.md, "Maps").
    """

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return run


@_single_threaded
def compute_layout(
    vectors: np.ndarray,
    *,
    seed: int = 0,
    perplexity: float | None = None,
    max_iter: int | None = None,
) -> Layout:
    """Lay out the rows of `vectors` in 2-D with t-SNE and measure the layout's trustworthiness.

    Rows are L2-normalised first (the cosine geometry the search scores in). Deterministic for a given seed.
    perplexity and max_iter default to `choose_perplexity` and `choose_iterations` of the row count.

    Raises:
        QueryError: fewer than MIN_POINTS rows.
        UsageError: more than MAX_POINTS rows, or a perplexity not below the number of rows.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE, trustworthiness

    x = _unit_rows(vectors)
    n = len(x)
    _check_size(n)
    if perplexity is None:
        perplexity = choose_perplexity(n)
    elif not 0 < perplexity < n:
        raise UsageError(f"perplexity must be above 0 and below the number of points ({n}), got {perplexity}")
    if max_iter is None:
        max_iter = choose_iterations(n)
    dims = min(PCA_DIMS, x.shape[1], n)
    reduced = PCA(n_components=dims, svd_solver="full", random_state=seed).fit_transform(x)
    reduced = np.ascontiguousarray(reduced, dtype=np.float32)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        max_iter=max_iter,
        method="barnes_hut",
        random_state=seed,
    )
    coords = tsne.fit_transform(reduced).astype(np.float64)

    sample = np.arange(n)
    if n > TRUST_SAMPLE:
        sample = np.sort(np.random.default_rng(seed).choice(n, TRUST_SAMPLE, replace=False))
    # sklearn wants n_neighbors < n_samples / 2.
    k = max(1, min(10, (len(sample) - 1) // 2))
    trust = float(trustworthiness(x[sample], coords[sample], n_neighbors=k))
    params = LayoutParams(
        perplexity=float(perplexity),
        max_iter=max_iter,
        pca_dims=dims,
        seed=seed,
        trust_neighbors=k,
        trust_points=len(sample),
    )
    return Layout(coords=coords, reduced=reduced, trustworthiness=trust, params=params)


@_single_threaded
def cluster_points(vectors: np.ndarray, *, k: int | None = None, seed: int = 0) -> Clustering:
    """k-means on the rows; with k None, the k in 2..MAX_AUTO_CLUSTERS with the best silhouette.

    Labels are renumbered by decreasing cluster size, so cluster 0 is the largest.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    silhouette: float | None = None
    chosen = k is None
    if k is None:
        k, found, silhouette = _best_k(x, seed)
    elif not 1 <= k <= n:
        raise UsageError(f"the number of clusters must be between 1 and the number of points ({n}), got {k}")
    elif k == 1:
        found = np.zeros(n, dtype=np.int64)
    else:
        found = KMeans(k, n_init=3, random_state=seed).fit_predict(x)
    sizes = np.bincount(found, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    return Clustering(labels=relabel[found], k=k, silhouette=silhouette, chosen=chosen)


def _best_k(x: np.ndarray, seed: int) -> tuple[int, np.ndarray, float | None]:
    """The k in 2..MAX_AUTO_CLUSTERS (at least 4 points per cluster) whose k-means has the best silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances, silhouette_score

    top = min(MAX_AUTO_CLUSTERS, len(x) // 4)
    best: tuple[int, np.ndarray, float | None] = (1, np.zeros(len(x), dtype=np.int64), None)
    if top < 2:
        return best
    distances = pairwise_distances(x)
    for k in range(2, top + 1):
        labels = KMeans(k, n_init=3, random_state=seed).fit_predict(x)
        if len(np.unique(labels)) < 2:  # duplicate points can leave clusters empty
            continue
        score = float(silhouette_score(distances, labels, metric="precomputed"))
        if best[2] is None or score > best[2]:
            best = (k, labels, score)
    return best


def query_picture(query: Query, meta: MetadataStore) -> tuple[int | None, str | None]:
    """(id, path) of the picture a query is when it is one indexed image or one file, else (None, None)."""
    if len(query.parts) != 1 or query.parts[0].sign < 0:
        return None, None
    part = query.parts[0]
    if part.kind == "id":
        record = meta.records([int(part.value)]).get(int(part.value))  # type: ignore[arg-type]
        return int(part.value), record.path if record else None  # type: ignore[arg-type]
    if part.kind == "image" and isinstance(part.value, Path):
        return None, str(part.value)
    return None, None


def map_title(query: Query, picture: str | None = None) -> str:
    """A short name for the query: the text in quotes, 'image NAME', 'more like NAME'."""
    if len(query.parts) == 1 and query.parts[0].sign > 0:
        part = query.parts[0]
        value = "<upload>" if isinstance(part.value, bytes) else part.value
        if part.kind == "text":
            return f'"{value}"'
        name = Path(picture).name if picture else None
        if part.kind == "image":
            return f"image {name}" if name else "an uploaded image"
        return f"more like {name or f'#{value}'}"
    return query.describe()


def empty_map(title: str, *, seed: int = 0, max_iter: int | None = None) -> NeighbourhoodMap:
    """The map of a filter that allows no image: no points (an empty result, as a filtered search's is)."""
    params = LayoutParams(
        perplexity=0.0,
        max_iter=DEFAULT_MAX_ITER if max_iter is None else max_iter,
        pca_dims=0,
        seed=seed,
        trust_neighbors=0,
        trust_points=0,
    )
    return NeighbourhoodMap(title, (), params, float("nan"), 0, False, {"layout": 0.0})


def build_map(
    query: Query,
    query_vector: np.ndarray,
    hits: Sequence[SearchHit],
    store: Store,
    meta: MetadataStore,
    *,
    expand: int = 0,
    seed: int = 0,
    perplexity: float | None = None,
    clusters: int | None = None,
    max_iter: int | None = None,
    allowed: np.ndarray | None = None,
) -> NeighbourhoodMap:
    """Lay out the query and its results (plus, with expand > 0, each result's `expand` nearest neighbours;
    with `allowed`, a filter's ids, neighbours among those only). A filter that allows nothing gives an
    empty map (`empty_map`), not an error.

    Args:
        query: what was searched; a query that is one indexed image or one file is shown as that picture.
        query_vector: the query's direction (the search's own vector).
        hits: the search results, best first.

    Raises:
        QueryError: no results, or fewer than MIN_POINTS points in all.
        UsageError: more than MAX_POINTS points, or a perplexity / number of clusters that does not fit.
    """
    query_id, query_path = query_picture(query, meta)
    title = map_title(query, query_path)
    if not hits and allowed is not None and len(allowed) == 0:
        return empty_map(title, seed=seed, max_iter=max_iter)
    if not hits:
        raise QueryError(f"no results for {title}, nothing to map")
    imports = time.perf_counter()
    # Loaded here rather than on first use inside the layout, so that `seconds` tells the one-off import
    # (seconds, in a fresh process) apart from the layout itself.
    import sklearn.cluster
    import sklearn.manifold  # noqa: F401

    started = time.perf_counter()
    q = _unit_rows(np.asarray(query_vector, dtype=np.float32)[None, :])[0]
    result_ids = [h.id for h in hits]
    result_vecs = store.vectors(result_ids)

    context_ids: list[int] = []
    context_vecs = np.zeros((0, result_vecs.shape[1]), dtype=np.float32)
    if expand < 0:
        raise UsageError(f"expand must be 0 or more neighbours per result, got {expand}")
    if expand > 0:
        taken = set(result_ids) | ({query_id} if query_id is not None else set())
        ids, _ = store.search(result_vecs, min(len(store), expand + 1), allowed=allowed)
        for row in ids:
            for i in row:  # each row starts with the result itself, already taken
                i = int(i)
                if i >= 0 and i not in taken:
                    taken.add(i)
                    context_ids.append(i)
        records = meta.records(context_ids)
        context_ids = [i for i in context_ids if i in records]
        if context_ids:
            context_vecs = store.vectors(context_ids)
    else:
        records = {}

    vectors = np.concatenate([q[None, :], result_vecs, context_vecs])
    gathered = time.perf_counter()
    layout = compute_layout(vectors, seed=seed, perplexity=perplexity, max_iter=max_iter)
    laid_out = time.perf_counter()
    grouping = cluster_points(layout.reduced[1:], k=clusters, seed=seed)
    clustered = time.perf_counter()

    context_scores = _unit_rows(context_vecs) @ q if len(context_ids) else np.zeros(0)
    xy = layout.coords
    points = [MapPoint("query", query_id, query_path, float(xy[0, 0]), float(xy[0, 1]), 1.0, None, -1)]
    for j, h in enumerate(hits, start=1):
        points.append(
            MapPoint(
                "result",
                h.id,
                h.path,
                float(xy[j, 0]),
                float(xy[j, 1]),
                h.score,
                h.rank,
                int(grouping.labels[j - 1]),
            )
        )
    base = 1 + len(hits)
    for j, cid in enumerate(context_ids):
        points.append(
            MapPoint(
                "context",
                cid,
                records[cid].path,
                float(xy[base + j, 0]),
                float(xy[base + j, 1]),
                float(context_scores[j]),
                None,
                int(grouping.labels[base - 1 + j]),
            )
        )
    return NeighbourhoodMap(
        title=title,
        points=tuple(points),
        params=layout.params,
        trustworthiness=layout.trustworthiness,
        clusters=grouping.k,
        clusters_chosen=grouping.chosen,
        seconds={
            "imports": started - imports,
            "gather": gathered - started,
            "layout": laid_out - gathered,
            "clusters": clustered - laid_out,
        },
    )
