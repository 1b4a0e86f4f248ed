"""Learned projections of embeddings, fitted on labelled vectors and stored with an index.

Three kinds, each a map from the embedder's vectors to new ones that are then re-normalised:

- `pca`: the top principal directions of the centred vectors (no labels used);
- `lda`: linear discriminant directions (at most classes-1), within-class scatter shrunk (Ledoit-Wolf) so
  that a few hundred images in hundreds of dimensions are enough;
- `head`: a small MLP (with a linear skip) trained in torch on the frozen vectors with a triplet loss and
  batch-hard mining: for each anchor of a P-classes-by-K-images batch, its farthest positive and nearest
  negative.

A fitted projection is plain arrays plus JSON (`projection.npz`, `projection.json` in the index folder) and is
applied with numpy alone, so queries need no torch. `ProjectedEmbedder` puts one behind an embedder: an index
with a projection embeds its images and its queries through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from retrieval.embedders.base import Embedder
from retrieval.errors import IndexCorruptError, IndexMismatchError, UsageError

KINDS = ("pca", "lda", "head")
JSON_NAME = "projection.json"
ARRAYS_NAME = "projection.npz"
FORMAT = 1
DEFAULT_PCA_DIMS = 64
DEFAULT_HEAD_DIMS = 64

_ARRAYS = {"pca": ("mean", "w"), "lda": ("mean", "w"), "head": ("mean", "w0", "w1", "b1", "w2", "b2")}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Projection:
    """A fitted projection: `arrays` hold the weights, `info` what it was fitted on (JSON-ready)."""

    kind: str
    arrays: dict[str, np.ndarray]
    info: dict[str, Any]

    @property
    def input_dim(self) -> int:
        return int(self.arrays["mean"].shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.arrays["w" if self.kind != "head" else "w2"].shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project rows of embedder vectors; the result has unit rows (float32)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise IndexMismatchError(
                f"{self.kind} projection takes {self.input_dim}-dim vectors, got shape {x.shape}"
            )
        a = self.arrays
        h = x - a["mean"]
        if self.kind == "head":
            y = h @ a["w0"] + np.maximum(h @ a["w1"] + a["b1"], 0.0) @ a["w2"] + a["b2"]
        else:
            y = h @ a["w"]
        return _unit(y).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """What an index manifest records about its projection."""
        return {"kind": self.kind, "input_dim": self.input_dim, "output_dim": self.output_dim, **self.info}

    def save(self, folder: Path) -> None:
        """Write `projection.npz` then `projection.json` into `folder`, each atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (ARRAYS_NAME + ".tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, **self.arrays)  # type: ignore[arg-type]  # numpy's stub reads **kw as allow_pickle
        os.replace(tmp, folder / ARRAYS_NAME)
        tmp = folder / (JSON_NAME + ".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, **self.describe()}, indent=2))
        os.replace(tmp, folder / JSON_NAME)

    @classmethod
    def load(cls, folder: Path) -> Projection:
        """Read a projection saved by `save`.

        Raises:
            IndexCorruptError: a file is missing, garbled, or its arrays do not fit together.
        """
        try:
            meta = json.loads((folder / JSON_NAME).read_text())
            with np.load(folder / ARRAYS_NAME) as data:
                arrays = {name: np.asarray(data[name], dtype=np.float32) for name in data.files}
        except (OSError, ValueError, KeyError) as exc:
            raise IndexCorruptError(f"projection in {folder} cannot be read: {exc}") from exc
        kind = meta.get("kind")
        if meta.get("format") != FORMAT or kind not in _ARRAYS or set(arrays) != set(_ARRAYS[kind]):
            raise IndexCorruptError(f"projection in {folder} is not one this version of retrieval writes")
        info = {k: v for k, v in meta.items() if k not in ("format", "kind", "input_dim", "output_dim")}
        projection = cls(kind, arrays, info)
        try:
            projection.apply(np.zeros((1, projection.input_dim), np.float32))
        except ValueError as exc:
            raise IndexCorruptError(f"projection in {folder} has arrays that do not fit together") from exc
        if (projection.input_dim, projection.output_dim) != (meta.get("input_dim"), meta.get("output_dim")):
            raise IndexCorruptError(f"projection in {folder}: arrays disagree with {JSON_NAME}")
        return projection


def _check_fit_data(x: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise UsageError(f"fitting a projection needs at least two vectors, got shape {x.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(x):
            raise UsageError(f"{len(x)} vectors but {len(labels)} labels")
    return x, labels


def fit_pca(x: np.ndarray, dims: int | None = None) -> Projection:
    """Top `dims` principal directions (default 64, at most min(vectors-1, input dim))."""
    x, _ = _check_fit_data(x, None)
    most = min(len(x) - 1, x.shape[1])
    dims = min(DEFAULT_PCA_DIMS, most) if dims is None else dims
    if not 1 <= dims <= most:
        raise UsageError(f"PCA can keep 1..{most} dims here (vectors-1, input dim), not {dims}")
    mean = x.mean(axis=0)
    centred = x - mean
    # Eigenvectors of the (dim x dim) scatter: far cheaper than an SVD of the data when images outnumber dims.
    values, vectors = np.linalg.eigh(centred.T @ centred)
    w = vectors[:, np.argsort(values)[::-1][:dims]]
    return Projection("pca", {"mean": mean.astype(np.float32), "w": w.astype(np.float32)}, {})


def fit_lda(x: np.ndarray, labels: np.ndarray, dims: int | None = None) -> Projection:
    """Linear discriminant directions, at most classes-1 of them (the default).

    Solves between-class scatter v = lambda * within-class scatter v, the within-class scatter shrunk towards
    a multiple of the identity by the Ledoit-Wolf amount (never less than 1e-4), so that it stays invertible
    with fewer images than dimensions. The directions are scaled to unit within-class variance.
    """
    from scipy.linalg import eigh
    from sklearn.covariance import ledoit_wolf_shrinkage

    x, checked = _check_fit_data(x, labels)
    assert checked is not None
    labels = checked
    classes = np.unique(labels)
    most = min(len(classes) - 1, x.shape[1])
    if most < 1:
        raise UsageError("LDA needs vectors of at least two classes")
    dims = most if dims is None else dims
    if not 1 <= dims <= most:
        raise UsageError(f"LDA gives at most classes-1 = {most} dims here, not {dims}")
    mean = x.mean(axis=0)
    residuals = np.empty_like(x)
    between = np.zeros((x.shape[1], x.shape[1]))
    for c in classes:
        rows = labels == c
        class_mean = x[rows].mean(axis=0)
        residuals[rows] = x[rows] - class_mean
        between += rows.sum() * np.outer(class_mean - mean, class_mean - mean)
    within = residuals.T @ residuals / len(x)
    scale = np.trace(within) / x.shape[1]
    if scale <= 0:
        raise UsageError("LDA needs some spread within classes; every class's vectors are identical")
    shrink = max(float(ledoit_wolf_shrinkage(residuals, assume_centered=True)), 1e-4)
    within = (1 - shrink) * within + shrink * scale * np.eye(x.shape[1])
    values, vectors = eigh(between / len(x), within)
    w = vectors[:, np.argsort(values)[::-1][:dims]]
    return Projection("lda", {"mean": mean.astype(np.float32), "w": w.astype(np.float32)}, {})


@dataclass(frozen=True)
class HeadParams:
    """Training settings of the triplet head; the defaults take a few seconds on a CPU core."""

    hidden: int = 256
    steps: int = 400
    classes_per_batch: int = 16
    per_class: int = 8
    margin: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4


def batch_hard_triplet_loss(embeddings: Any, labels: Any, margin: float) -> Any:
    """Mean over anchors of max(0, farthest positive - nearest negative + margin), on unit vectors (torch)."""
    import torch

    dist = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    hardest_pos = torch.where(same, dist, torch.zeros_like(dist)).max(dim=1).values
    hardest_neg = torch.where(same, torch.full_like(dist, float("inf")), dist).min(dim=1).values
    return torch.relu(hardest_pos - hardest_neg + margin).mean()


def _pk_batch(members: list[np.ndarray], p: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of P classes by K images each (drawn with replacement where a class has fewer than K)."""
    chosen = rng.choice(len(members), size=min(p, len(members)), replace=False)
    return np.concatenate([rng.choice(members[c], size=k, replace=len(members[c]) < k) for c in chosen])


def _train_head(
    centred: np.ndarray, labels: np.ndarray, dims: int, params: HeadParams, seed: int
) -> dict[str, np.ndarray]:
    import torch

    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        skip = torch.nn.Linear(centred.shape[1], dims, bias=False)
        inner = torch.nn.Sequential(
            torch.nn.Linear(centred.shape[1], params.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(params.hidden, dims),
        )
        optimiser = torch.optim.AdamW(
            [*skip.parameters(), *inner.parameters()], lr=params.lr, weight_decay=params.weight_decay
        )
        data = torch.as_tensor(centred, dtype=torch.float32)
        targets = torch.as_tensor(labels)
        for _ in range(params.steps):
            rows = torch.as_tensor(_pk_batch(members, params.classes_per_batch, params.per_class, rng))
            out = torch.nn.functional.normalize(skip(data[rows]) + inner(data[rows]), dim=1)
            loss = batch_hard_triplet_loss(out, targets[rows], params.margin)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        weights = {
            "w0": skip.weight.T,
            "w1": inner[0].weight.T,
            "b1": inner[0].bias,
            "w2": inner[2].weight.T,
            "b2": inner[2].bias,
        }
        return {k: cast(Any, v).numpy().astype(np.float32) for k, v in weights.items()}


def fit_head(
    x: np.ndarray,
    labels: np.ndarray,
    dims: int | None = None,
    *,
    params: HeadParams | None = None,
    seed: int = 0,
) -> Projection:
    """A small MLP head with a linear skip, trained with batch-hard triplet loss on frozen vectors (CPU)."""
    from retrieval.embedders.base import torch_threads

    x, checked = _check_fit_data(x, labels)
    assert checked is not None
    labels = checked
    if len(np.unique(labels)) < 2:
        raise UsageError("a triplet head needs vectors of at least two classes")
    dims = DEFAULT_HEAD_DIMS if dims is None else dims
    if dims < 1:
        raise UsageError(f"head dims must be positive, got {dims}")
    params = params or HeadParams()
    mean = x.mean(axis=0)
    # Matrices this small train several times faster on one thread than on several spin-waiting ones.
    with torch_threads(1):
        weights = _train_head(x - mean, labels, dims, params, seed)
    return Projection(
        "head", {"mean": mean.astype(np.float32), **weights}, {"params": {**asdict(params), "seed": seed}}
    )


def fit_projection(
    kind: str,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    dims: int | None = None,
    seed: int = 0,
    head: HeadParams | None = None,
    embedder_id: str | None = None,
    classes: Sequence[str] | None = None,
) -> Projection:
    """Fit a projection of `kind` ("pca", "lda" or "head") on labelled vectors.

    Args:
        dims: output dimensions (pca: default 64; lda: at most and by default classes-1; head: default 64).
        seed, head: the triplet head's random seed and training settings.
        embedder_id, classes: recorded with the projection, so an index can refuse another model's vectors.

    Raises:
        UsageError: an unknown kind, impossible dims or too little data.
    """
    if kind == "pca":
        projection = fit_pca(x, dims)
    elif kind == "lda":
        projection = fit_lda(x, labels, dims)
    elif kind == "head":
        projection = fit_head(x, labels, dims, params=head, seed=seed)
    else:
        raise UsageError(f"unknown projection {kind!r}; choose from {', '.join(KINDS)}")
    info = {
        **projection.info,
        "embedder_id": embedder_id,
        "classes": list(classes) if classes is not None else None,
        "fitted_on": len(x),
    }
    return Projection(projection.kind, projection.arrays, info)


class ProjectedEmbedder(Embedder):
    """An embedder followed by a projection: the vectors are the projection's, everything else (preprocessing,
    id, text support) is the base embedder's, so the index records the model it was built with."""

    def __init__(self, base: Embedder, projection: Projection) -> None:
        if base.dim != projection.input_dim:
            raise IndexMismatchError(
                f"the index's {projection.kind} projection takes {projection.input_dim}-dim vectors, "
                f"but {base.id} gives {base.dim}"
            )
        self.base = base
        self.projection = projection
        self.spec = base.spec
        self.id = base.id
        self.dim = projection.output_dim
        self.input_size = base.input_size
        self.supports_text = base.supports_text
        self.preprocess_id = base.preprocess_id
        self.keeps_alpha = base.keeps_alpha
        self.superseded = base.superseded
        self.device = base.device
        self.batch_size = base.batch_size

    def preprocess(self, image: Image.Image) -> Any:
        return self.base.preprocess(image)

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        return self.projection.apply(self.base.embed_preprocessed(batch))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.projection.apply(self.base.embed_images(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.projection.apply(self.base.embed_texts(texts))

    def unprojected(self) -> Embedder:
        return self.base

    def project(self, vectors: np.ndarray) -> np.ndarray:
        return self.projection.apply(vectors)

    def close(self) -> None:
        self.base.close()
