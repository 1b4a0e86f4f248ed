"""A weight-free embedder for near-duplicates: colour, edge layout and a tiny thumbnail, in pure numpy.

It needs no download and runs anywhere, which makes it the fallback for offline machines and the reference in
tests. It finds resized, re-compressed or lightly edited copies of a picture; it knows nothing of meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from retrieval.embedders.base import Embedder, EmbedderSpec, normalize_rows

VERSION = "v1"
_SIDE = 64  # every image is squashed to _SIDE x _SIDE before measuring
_COLOUR_LEVELS = 4  # per RGB channel: 4 x 4 x 4 joint bins
_GRID = 4  # edge histograms in a _GRID x _GRID grid of cells
_ORIENTATIONS = 8  # unsigned gradient directions per cell
_THUMB = 8  # grey thumbnail side
# Relative weight of each block after it is L2-normalised on its own.
_BLOCK_WEIGHTS = {"colour": 1.0, "edges": 1.0, "thumbnail": 1.0}
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class ClassicEmbedder(Embedder):
    """Hand-made features (Hellinger colour histogram, HOG-like cells, mean-removed thumbnail); 256-d."""

    supports_text = False
    device = "cpu"

    def __init__(self, *, batch_size: int = 32) -> None:
        self.spec = EmbedderSpec("classic", VERSION, None)
        self.id = f"classic:{VERSION}"
        self.dim = _COLOUR_LEVELS**3 + _GRID * _GRID * _ORIENTATIONS + _THUMB * _THUMB
        self.input_size = _SIDE
        self.batch_size = batch_size
        self.preprocess_id = (
            f"classic:{VERSION}:squash{_SIDE}:rgb{_COLOUR_LEVELS}^3-hellinger"
            f":hog{_GRID}x{_GRID}x{_ORIENTATIONS}:thumb{_THUMB}"
        )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The whole feature is computed here, so ingest spreads it over its decode threads."""
        small = image.convert("RGB").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR, reducing_gap=3.0)
        rgb = np.asarray(small, dtype=np.float64) / 255.0
        grey = rgb @ _GREY
        blocks = {
            "colour": _colour_histogram(rgb),
            "edges": _edge_histograms(grey),
            "thumbnail": _thumbnail(grey),
        }
        feature = np.concatenate([_BLOCK_WEIGHTS[name] * _unit(block) for name, block in blocks.items()])
        return _unit(feature).astype(np.float32)

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize_rows(np.stack([np.asarray(item, dtype=np.float32) for item in batch]))


def _colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """Joint RGB histogram with square-rooted frequencies (Hellinger), so no one dominant colour swamps it."""
    levels = np.minimum((rgb * _COLOUR_LEVELS).astype(np.int64), _COLOUR_LEVELS - 1)
    index = (levels[..., 0] * _COLOUR_LEVELS + levels[..., 1]) * _COLOUR_LEVELS + levels[..., 2]
    counts = np.bincount(index.ravel(), minlength=_COLOUR_LEVELS**3).astype(np.float64)
    return np.sqrt(counts / counts.sum())


def _edge_histograms(grey: np.ndarray) -> np.ndarray:
    """Magnitude-weighted gradient orientations per cell, each vote split between its two nearest bins."""
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    position = (np.arctan2(gy, gx) % np.pi) / np.pi * _ORIENTATIONS
    lower = np.floor(position).astype(np.int64) % _ORIENTATIONS
    upper = (lower + 1) % _ORIENTATIONS
    share = position - np.floor(position)

    cell_side = _SIDE // _GRID
    rows, cols = np.indices(grey.shape) // cell_side
    cell = (rows * _GRID + cols) * _ORIENTATIONS
    size = _GRID * _GRID * _ORIENTATIONS
    votes = np.bincount((cell + lower).ravel(), weights=(magnitude * (1 - share)).ravel(), minlength=size)
    votes += np.bincount((cell + upper).ravel(), weights=(magnitude * share).ravel(), minlength=size)
    return np.sqrt(votes)


def _thumbnail(grey: np.ndarray) -> np.ndarray:
    """Coarse layout of light and dark, independent of overall brightness."""
    step = _SIDE // _THUMB
    thumb = grey.reshape(_THUMB, step, _THUMB, step).mean(axis=(1, 3)).ravel()
    return thumb - thumb.mean()


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-12 else vector


__all__ = ["VERSION", "ClassicEmbedder"]
