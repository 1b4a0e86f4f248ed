"""Measuring retrieval quality on a labelled folder: one sub-folder per class (the Animals-10 layout).

Everything is measured on unit vectors compared by cosine, as the index compares them:

- leave-one-out retrieval: every image queries all the others; precision@k, recall@k and mAP@k, averaged over
  the queries whose class has at least one other image;
- nearest centroid: each class's centre is the mean of its training vectors, every measured image goes to the
  nearest centre; per-class precision and recall, their (macro) means, accuracy and the confusion matrix;
- with a split, centres and projections are fitted on the training part and everything is measured on the
  held-out part. Figures measured on the data they were fitted on are optimistic: they carry `held_out=False`
  and the CLI says so next to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embedders import Embedder
from retrieval.embedders.projections import HeadParams, Projection, fit_projection
from retrieval.errors import DecodeError, UsageError
from retrieval.files.decoding import decode_image
from retrieval.files.discovery import FoundFile, discover

METHODS = ("raw", "pca", "lda", "head")
DEFAULT_KS = (1, 5, 10)

ProgressFn = Callable[[int, int], None]
"""Called with (images embedded so far, total) while a folder is embedded."""


# -- the labelled folder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledSet:
    """Image paths and their class index into `classes` (sorted sub-folder names)."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_labelled_folder(root: Path | str) -> LabelledSet:
    """List the images of `root`, one class per sub-folder (searched recursively); loose files are skipped.

    Raises:
        UsageError: `root` is not a folder or holds fewer than two non-empty class folders.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; pass a folder with one sub-folder of images per class")
    paths: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    skipped: list[tuple[str, str]] = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            skipped.append((str(entry), "not inside a class folder"))
            continue
        found = []
        for item in discover(entry):
            if isinstance(item, FoundFile):
                found.append(item.path)
            elif not item.unsupported:
                skipped.append((str(item.path), item.reason))
        if not found:
            skipped.append((str(entry), "class folder without images"))
            continue
        paths += found
        labels += [len(classes)] * len(found)
        classes.append(entry.name)
    if len(classes) < 2:
        raise UsageError(
            f"{root} holds {len(classes)} class folder(s) with images; evaluation needs at least two "
            "(one sub-folder of images per class)"
        )
    return LabelledSet(paths, np.asarray(labels, dtype=np.int64), classes, skipped)


@dataclass(frozen=True)
class EmbeddedSet:
    """The vectors of a labelled folder (failed files left out, listed in `failed`)."""

    vectors: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]
    embedder_id: str
    failed: list[tuple[str, str]] = field(default_factory=list)


def embed_labelled(
    labelled: LabelledSet,
    embedder: Embedder,
    *,
    batch_size: int = 32,
    workers: int = 4,
    progress: ProgressFn | None = None,
) -> EmbeddedSet:
    """Embed every image through the same decoding and preprocessing as ingest; unreadable files are data."""

    def prepare(path: Path) -> Any:
        try:
            decoded = decode_image(path, min_side=embedder.input_size, keep_alpha=embedder.keeps_alpha)
            return embedder.preprocess(decoded.image)
        except DecodeError as exc:
            return exc

    report = progress or (lambda _done, _total: None)
    total = len(labelled.paths)
    vectors: list[np.ndarray] = []
    kept: list[int] = []
    failed: list[tuple[str, str]] = []
    report(0, total)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="retrieval-eval") as pool:
        for start in range(0, total, batch_size):
            batch = labelled.paths[start : start + batch_size]
            tensors, rows = [], []
            for offset, prepared in enumerate(pool.map(prepare, batch)):
                if isinstance(prepared, DecodeError):
                    failed.append((str(batch[offset]), prepared.reason))
                else:
                    tensors.append(prepared)
                    rows.append(start + offset)
            if tensors:
                vectors.append(np.asarray(embedder.embed_preprocessed(tensors), dtype=np.float32))
                kept += rows
            report(min(start + batch_size, total), total)
    dim = int(embedder.dim)
    return EmbeddedSet(
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
        labels=labelled.labels[kept],
        classes=labelled.classes,
        paths=[str(labelled.paths[i]) for i in kept],
        embedder_id=embedder.id,
        failed=failed,
    )


# -- measurements -----------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class RetrievalScores:
    """Leave-one-out retrieval, each figure a mean over `queries` images.

    precision@k: share of the top k that are of the query's class. recall@k: share of the query's class
    (itself excluded) found in the top k. AP@k: sum over relevant ranks r <= k of precision@r, divided by
    min(k, relevant images); mAP@k is its mean.
    """

    precision: dict[int, float]
    recall: dict[int, float]
    map: dict[int, float]
    queries: int
    held_out: bool


def leave_one_out(
    vectors: np.ndarray, labels: np.ndarray, ks: Sequence[int] = DEFAULT_KS, *, held_out: bool = True
) -> RetrievalScores:
    """Each image queries all the others by cosine; queries alone in their class are not counted."""
    if not ks or min(ks) < 1:
        raise UsageError(f"k must be positive, got {list(ks)}")
    x = _unit(vectors)
    labels = np.asarray(labels)
    n = len(x)
    counts = np.bincount(labels) if n else np.zeros(0, np.int64)
    kmax = min(max(ks), n - 1)
    sums = {k: np.zeros(3) for k in ks}
    queries = 0
    if kmax >= 1:
        for start in range(0, n, 512):
            stop = min(n, start + 512)
            sims = x[start:stop] @ x.T
            sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
            top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
            order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            own = labels[start:stop]
            relevant_total = counts[own] - 1
            keep = relevant_total > 0
            rel = (labels[top] == own[:, None])[keep]
            relevant_total = relevant_total[keep]
            queries += int(keep.sum())
            hits = np.cumsum(rel, axis=1)
            precision_at = hits / np.arange(1, kmax + 1)
            for k in ks:
                kk = min(k, kmax)
                found = hits[:, kk - 1]
                ap = (precision_at[:, :kk] * rel[:, :kk]).sum(axis=1) / np.minimum(kk, relevant_total)
                sums[k] += [(found / k).sum(), (found / relevant_total).sum(), ap.sum()]
    per = {k: sums[k] / max(queries, 1) for k in ks}
    return RetrievalScores(
        precision={k: float(per[k][0]) for k in ks},
        recall={k: float(per[k][1]) for k in ks},
        map={k: float(per[k][2]) for k in ks},
        queries=queries,
        held_out=held_out,
    )


@dataclass(frozen=True)
class CentroidReport:
    """Nearest-centroid classification. `confusion[i][j]`: images of class i assigned to class j.

    A class nobody was assigned to has precision 0; a class with no measured image has recall 0 and is left
    out of the means (`support` 0).
    """

    classes: list[str]
    precision: list[float]
    recall: list[float]
    support: list[int]
    confusion: list[list[int]]
    mean_precision: float
    mean_recall: float
    accuracy: float
    held_out: bool


def class_centres(vectors: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit mean direction of each class's unit vectors; a row of zeros for a class without vectors."""
    x = _unit(vectors)
    centres = np.zeros((n_classes, x.shape[1]), np.float32)
    np.add.at(centres, np.asarray(labels), x)
    return _unit(centres) * (np.linalg.norm(centres, axis=1, keepdims=True) > 0)


def nearest_centroid(
    train_vectors: np.ndarray,
    train_labels: np.ndarray,
    test_vectors: np.ndarray,
    test_labels: np.ndarray,
    classes: Sequence[str],
    *,
    held_out: bool,
) -> CentroidReport:
    """Centres from the training vectors; each test vector goes to the centre of highest cosine."""
    n_classes = len(classes)
    centres = class_centres(train_vectors, train_labels, n_classes)
    present = np.bincount(np.asarray(train_labels), minlength=n_classes) > 0
    sims = _unit(test_vectors) @ centres.T
    sims[:, ~present] = -np.inf
    predicted = np.argmax(sims, axis=1)
    truth = np.asarray(test_labels)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    correct = np.diag(confusion).astype(np.float64)
    assigned = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(correct, assigned, out=np.zeros(n_classes), where=assigned > 0)
    recall = np.divide(correct, support, out=np.zeros(n_classes), where=support > 0)
    measured = support > 0
    return CentroidReport(
        classes=list(classes),
        precision=precision.tolist(),
        recall=recall.tolist(),
        support=support.tolist(),
        confusion=confusion.tolist(),
        mean_precision=float(precision[measured].mean()) if measured.any() else 0.0,
        mean_recall=float(recall[measured].mean()) if measured.any() else 0.0,
        accuracy=float(correct.sum() / max(len(truth), 1)),
        held_out=held_out,
    )


def stratified_split(
    labels: np.ndarray, test_fraction: float, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): `test_fraction` of each class held out, at least one image on each side of a
    class that has two or more; a class of one image stays in training."""
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"the held-out fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = min(max(round(len(members) * test_fraction), 1), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# -- the whole evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodResult:
    """One way of turning embeddings into the vectors that are compared: raw, or through a projection."""

    name: str
    dim: int
    retrieval: RetrievalScores
    centroid: CentroidReport
    fit_seconds: float


@dataclass(frozen=True)
class EvalReport:
    embedder_id: str
    classes: list[str]
    class_sizes: list[int]
    ks: list[int]
    test_fraction: float | None
    seed: int
    n_fit: int
    n_measured: int
    methods: list[MethodResult]
    failed: list[tuple[str, str]]
    projections: dict[str, Projection] = field(default_factory=dict, repr=False)

    @property
    def held_out(self) -> bool:
        return self.test_fraction is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the fitted projections' arrays are left out)."""
        return {
            "embedder": self.embedder_id,
            "classes": self.classes,
            "class_sizes": self.class_sizes,
            "ks": self.ks,
            "held_out": self.held_out,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "fitted_on": self.n_fit,
            "measured_on": self.n_measured,
            "methods": [
                {
                    "name": m.name,
                    "dim": m.dim,
                    "fit_seconds": round(m.fit_seconds, 3),
                    "retrieval": {
                        "held_out": m.retrieval.held_out,
                        "queries": m.retrieval.queries,
                        **{f"precision@{k}": m.retrieval.precision[k] for k in self.ks},
                        **{f"recall@{k}": m.retrieval.recall[k] for k in self.ks},
                        **{f"map@{k}": m.retrieval.map[k] for k in self.ks},
                    },
                    "centroid": {
                        "held_out": m.centroid.held_out,
                        "accuracy": m.centroid.accuracy,
                        "mean_precision": m.centroid.mean_precision,
                        "mean_recall": m.centroid.mean_recall,
                        "per_class": [
                            {"class": c, "precision": p, "recall": r, "support": s}
                            for c, p, r, s in zip(
                                m.centroid.classes,
                                m.centroid.precision,
                                m.centroid.recall,
                                m.centroid.support,
                                strict=True,
                            )
                        ],
                        "confusion": m.centroid.confusion,
                    },
                }
                for m in self.methods
            ],
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
        }


def evaluate(
    embedded: EmbeddedSet,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    test_fraction: float | None = None,
    seed: int = 0,
    methods: Sequence[str] = ("raw",),
    dims: dict[str, int] | None = None,
    head: HeadParams | None = None,
) -> EvalReport:
    """Measure `methods` (raw and/or projections fitted here) on the same vectors and the same split.

    Without `test_fraction` every projection and centre is fitted on all images and measured on them too:
    those figures are marked `held_out=False`. Raw leave-one-out retrieval fits nothing, so it is always
    honest.

    Raises:
        UsageError: an unknown method, a bad k or fraction, too few images to fit a projection.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown method(s) {unknown or list(methods)}; choose from {', '.join(METHODS)}")
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise UsageError(f"k must be positive integers, got {ks}")
    x, y = embedded.vectors, embedded.labels
    n_classes = len(embedded.classes)
    if len(x) < 2:
        raise UsageError(f"only {len(x)} image(s) could be embedded; evaluation needs more")
    if test_fraction is None:
        fit_idx = test_idx = np.arange(len(x))
    else:
        fit_idx, test_idx = stratified_split(y, test_fraction, seed=seed)
    held_out = test_fraction is not None
    results: list[MethodResult] = []
    projections: dict[str, Projection] = {}
    for name in dict.fromkeys(methods):
        started = time.monotonic()
        if name == "raw":
            fit_x, test_x = x[fit_idx], x[test_idx]
        else:
            projection = fit_projection(
                name,
                x[fit_idx],
                y[fit_idx],
                dims=(dims or {}).get(name),
                seed=seed,
                head=head,
                embedder_id=embedded.embedder_id,
                classes=embedded.classes,
            )
            projections[name] = projection
            fit_x, test_x = projection.apply(x[fit_idx]), projection.apply(x[test_idx])
        fit_seconds = time.monotonic() - started
        results.append(
            MethodResult(
                name=name,
                dim=int(test_x.shape[1]),
                retrieval=leave_one_out(test_x, y[test_idx], ks, held_out=held_out or name == "raw"),
                centroid=nearest_centroid(
                    fit_x, y[fit_idx], test_x, y[test_idx], embedded.classes, held_out=held_out
                ),
                fit_seconds=fit_seconds,
            )
        )
    return EvalReport(
        embedder_id=embedded.embedder_id,
        classes=embedded.classes,
        class_sizes=np.bincount(y, minlength=n_classes).tolist(),
        ks=ks,
        test_fraction=test_fraction,
        seed=seed,
        n_fit=len(fit_idx),
        n_measured=len(test_idx),
        methods=results,
        failed=embedded.failed,
        projections=projections,
    )


def evaluate_folder(
    root: Path | str,
    embedder: Embedder,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    test_fraction: float | None = None,
    seed: int = 0,
    methods: Sequence[str] = ("raw",),
    dims: dict[str, int] | None = None,
    head: HeadParams | None = None,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Load a labelled folder, embed it with `embedder` and `evaluate` it: what `retrieval eval` runs."""
    embedded = embed_labelled(load_labelled_folder(root), embedder, batch_size=batch_size, progress=progress)
    return evaluate(
        embedded, ks=ks, test_fraction=test_fraction, seed=seed, methods=methods, dims=dims, head=head
    )
