"""A weight-free embedder for near-duplicates: luminance layout, edges and a light colour block, in numpy.

It needs no download and runs anywhere, which makes it the fallback for offline machines and the reference in
tests. It finds resized, re-compressed, cropped, re-toned, greyscale, mirrored and letterboxed copies of a
picture; it knows nothing of meaning. 256 floats.

Version 2 (the default, `classic:v2`) is built to ignore what a copy changes (BENCHMARKS.md "Duplicates" has
the figures on real wallpapers):

- horizontal flip: every spatial block is mirror-symmetrised (sum and absolute difference of mirrored
  columns, edge orientations mirrored too), so a picture and its mirror image give the same vector;
- greyscale: structure is measured on luminance only, and colour is a light block of opponent chroma that is
  zero for a grey picture, so a grey copy keeps 1 / sqrt(1 + 0.35^2) = 0.94 of its similarity while two grey
  pictures are no longer alike merely for being grey;
- letterbox, pillarbox and frames: uniform bars are trimmed, in matched pairs, before anything is measured;
- brightness, contrast, gamma: luminance is rank-equalised, so any monotonic tone change vanishes;
- transparency: the visible part is cropped to its bounding box and shown over the decoder's mid-grey, so
  two mostly-transparent artworks differ by what they show instead of both being a blank page.

Version 1 (`classic:v1`) is kept so that indexes built with it still open and search with the vectors they
hold; a new index gets v2. Its vectors are those v1 always made, transparent pixels on white included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from retrieval.embedders.base import Embedder, EmbedderSpec, normalize_rows
from retrieval.files.decoding import ALPHA_BACKGROUND, flatten_alpha

VERSION = "v2"
VERSIONS = ("v1", "v2")
DIM = 256

_INPUT_SIDE = 64  # the squashed working square
_INPUT_BOX = 4 * _INPUT_SIDE  # bars are found at this resolution, before the squash
_ALPHA_VISIBLE = 8  # alpha above this counts as visible when cropping to the visible part
_BAR_TOLERANCE = 12 / 255  # a bar pixel is within this of the bar colour (per channel) ...
_BAR_SHARE = 0.97  # ... for this share of a row or column
_BAR_EDGE = 0.25  # a bar ends at the picture: this share of the next rows differs by > 3x the tolerance
_BAR_LIMIT = 0.45  # never trim more than this of a side
_BAR_SYMMETRY = 0.03  # opposite bars differ by at most this share of the side (or 2 pixels)
_INSET = 0.02  # after trimming, drop this much of every side (bar edges, JPEG ringing, rotation corners)
_LAYOUT = 8  # luminance layout: _LAYOUT x _LAYOUT cell means
_EDGE_LEVELS = (2, 4)  # orientation histograms in 2x2 and 4x4 cells
_ORIENTATIONS = 8  # unsigned gradient directions
_CHROMA = 4  # colour: mean opponent chroma in _CHROMA x _CHROMA cells
_CHROMA_FLOOR = 0.05  # RMS chroma below which the colour block shrinks instead of being blown up to unit
_COLOUR_WEIGHT = 0.35  # against 1.0 for layout and edges: a grey copy keeps 1 / sqrt(1 + w^2) = 0.94
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's convert("L"): a grey copy has the same luma

_PREPROCESS_V2 = (
    f"classic:v2:box{_INPUT_BOX}:alpha-crop-grey{ALPHA_BACKGROUND[0]}:bars{round(_BAR_TOLERANCE * 255)}"
    f"-{_BAR_SHARE}-{_BAR_EDGE}-pairs{_BAR_SYMMETRY}-min:inset{_INSET}:squash{_INPUT_SIDE}:rank-luma"
    f":layout{_LAYOUT}:hog{'+'.join(map(str, _EDGE_LEVELS))}x{_ORIENTATIONS}:chroma{_CHROMA}x{_COLOUR_WEIGHT}"
    ":mirror"
)

_V1_SIDE = 64  # every image is squashed to _V1_SIDE x _V1_SIDE before measuring
_V1_COLOUR_LEVELS = 4  # per RGB channel: 4 x 4 x 4 joint bins
_V1_GRID = 4  # edge histograms in a _V1_GRID x _V1_GRID grid of cells
_V1_THUMB = 8  # grey thumbnail side
_V1_WHITE = (255, 255, 255)  # v1 always saw transparent pixels on white; its indexes hold those vectors
_PREPROCESS_V1 = (
    f"classic:v1:squash{_V1_SIDE}:rgb{_V1_COLOUR_LEVELS}^3-hellinger"
    f":hog{_V1_GRID}x{_V1_GRID}x{_ORIENTATIONS}:thumb{_V1_THUMB}"
)
_V1_SUPERSEDED = (
    "classic v1; re-ingest into a new index for classic v2's duplicate detection "
    "(flipped, greyscale and letterboxed copies, transparent artworks)"
)


class ClassicEmbedder(Embedder):
    """Hand-made features, 256-d: `version` "v2" (the default) or "v1" (for indexes built with it)."""

    supports_text = False
    device = "cpu"
    keeps_alpha = True

    def __init__(self, *, version: str = VERSION, batch_size: int = 32) -> None:
        if version not in VERSIONS:
            raise ValueError(f"unknown classic version {version!r}; choose one of {VERSIONS}")
        self.spec = EmbedderSpec("classic", version, None)
        self.id = f"classic:{version}"
        self.dim = DIM
        self.input_size = _INPUT_SIDE if version == "v2" else _V1_SIDE
        self.batch_size = batch_size
        self.preprocess_id = _PREPROCESS_V2 if version == "v2" else _PREPROCESS_V1
        self.superseded = None if version == VERSION else _V1_SUPERSEDED
        self._features = describe if version == "v2" else _describe_v1

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The whole feature is computed here, so ingest spreads it over its decode threads."""
        return self._features(image)

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize_rows(np.stack([np.asarray(item, dtype=np.float32) for item in batch]))


# -- v2 ------------------------------------------------------------------------------------------------


def describe(image: Image.Image) -> np.ndarray:
    """The v2 unit float32 vector (DIM floats) of an upright picture in any mode, alpha kept; any size (it is
    shrunk to fit _INPUT_BOX first, so a decoder may shrink while loading down to 4 x _INPUT_SIDE)."""
    scale = min(1.0, _INPUT_BOX / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0) if scale < 1 else image
    rgb = _visible_rgb(small)
    top, bottom, left, right = trim_bars(rgb)
    rgb = rgb[top:bottom, left:right]
    h, w = rgb.shape[:2]
    dy, dx = max(1, round(h * _INSET)), max(1, round(w * _INSET))
    rgb = rgb[dy : h - dy, dx : w - dx]

    square = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))
    work = square.resize((_INPUT_SIDE, _INPUT_SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(work, dtype=np.float64) / 255
    luma = _equalise(pixels @ _LUMA)
    layout = _pool(luma, _LAYOUT)
    blocks = [
        _unit(_mirror(layout - layout.mean())),
        _unit(_edges(luma)),
        _COLOUR_WEIGHT * _colour(pixels),
    ]
    return _unit(np.concatenate(blocks)).astype(np.float32)


def _visible_rgb(image: Image.Image) -> np.ndarray:
    """RGB floats in [0, 1]; a picture with alpha is first cropped to its visible part, then flattened by the
    decoder's one rule (mid-grey)."""
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in image.info:
        rgba = image.convert("RGBA")
        box = rgba.getchannel("A").point(lambda a: 255 if a > _ALPHA_VISIBLE else 0).getbbox()
        if box is not None and box[2] - box[0] >= 8 and box[3] - box[1] >= 8:
            rgba = rgba.crop(box)
        image = rgba
    return np.asarray(flatten_alpha(image), dtype=np.float64) / 255


def trim_bars(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the picture inside uniform bars (letterbox, pillarbox, frame).

    Bars come in centred pairs of equal width: both sides are trimmed when they have equal uniform runs and
    one ends at an abrupt edge (the picture's own edge may be dark), or by the shorter run when that one
    ends abruptly (the longer ran on into a dark foreground). A photo's own flat region has no twin: a dark
    foreground at the bottom is not matched at the top, and a logo's white page fades into the picture, so
    trimming it would depend on how bright or how compressed the copy is. Trimming repeats, so a frame
    inside a letterbox goes too.
    """
    top, left = 0, 0
    bottom, right = rgb.shape[:2]
    for _ in range(3):
        view = rgb[top:bottom, left:right]
        h, w = view.shape[:2]
        columns = view.transpose(1, 0, 2)
        runs = [_bar(view, h), _bar(view[::-1], h), _bar(columns, w), _bar(columns[::-1], w)]
        cut = [0, 0, 0, 0]
        for a, b, size in ((0, 1, h), (2, 3, w)):
            (na, edge_a), (nb, edge_b) = runs[a], runs[b]
            if min(na, nb) == 0:
                continue
            if (edge_a or edge_b) and abs(na - nb) <= max(2, _BAR_SYMMETRY * size):
                cut[a], cut[b] = na, nb
            elif edge_a if na < nb else edge_b:
                # the shorter bar ends abruptly; the longer one ran on into the picture's own dark edge
                cut[a] = cut[b] = min(na, nb)
        if not any(cut) or h - cut[0] - cut[1] < 8 or w - cut[2] - cut[3] < 8:
            break
        top, bottom, left, right = top + cut[0], bottom - cut[1], left + cut[2], right - cut[3]
    return top, bottom, left, right


def _bar(lines: np.ndarray, size: int) -> tuple[int, bool]:
    """(rows of uniform colour from lines[0] on, whether the picture starts abruptly after them)."""
    colour = np.median(lines[0], axis=0)
    most = int(size * _BAR_LIMIT)
    n = 0
    while n < most:  # a few lines at a time: most pictures have no bar and stop at the first line
        chunk = lines[n : min(most, n + 8)]
        uniform = (_distance(chunk, colour) <= _BAR_TOLERANCE).mean(axis=-1) >= _BAR_SHARE
        if not uniform.all():
            n += int(np.argmin(uniform))
            break
        n += len(chunk)
    if n == 0 or n >= most:
        return 0, False
    after = _distance(lines[n : n + 3], colour) > 3 * _BAR_TOLERANCE
    return n, float(after.mean(axis=-1).max()) >= _BAR_EDGE


def _distance(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Largest per-channel difference from `colour` (np.max over a 3-wide axis is several times slower)."""
    d = np.abs(pixels - colour)
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])


def _equalise(grey: np.ndarray) -> np.ndarray:
    """Each value replaced by its mid-rank in [0, 1]: invariant to any increasing tone curve."""
    _, inverse, counts = np.unique(grey.ravel(), return_inverse=True, return_counts=True)
    mid = (np.cumsum(counts) - counts / 2) / grey.size
    return mid[inverse].reshape(grey.shape)


def _pool(a: np.ndarray, cells: int) -> np.ndarray:
    h, w = a.shape[:2]
    return a.reshape(cells, h // cells, cells, w // cells, *a.shape[2:]).mean(axis=(1, 3))


def _mirror(cells: np.ndarray, mirrored: np.ndarray | None = None) -> np.ndarray:
    """Flip-invariant view of a (rows, columns, ...) grid: sum and absolute difference of each column and
    its mirror, so a picture and its mirror image give the same numbers while left-right structure stays."""
    if mirrored is None:
        mirrored = cells[:, ::-1]
    half = cells.shape[1] // 2
    return np.concatenate([(cells + mirrored)[:, :half].ravel(), np.abs(cells - mirrored)[:, :half].ravel()])


def _edges(luma: np.ndarray) -> np.ndarray:
    """Magnitude-weighted gradient orientations (soft-binned) per cell, square-rooted and centred, so two
    unrelated pictures score near 0 instead of v1's all-positive 0.8; one unit block per level."""
    votes = _orientation_votes(luma).reshape(*luma.shape, _ORIENTATIONS)
    # A flip maps direction theta to pi - theta: bin b (centred on b * pi / bins) becomes bin -b.
    flipped_bins = (-np.arange(_ORIENTATIONS)) % _ORIENTATIONS
    levels = []
    for cells in _EDGE_LEVELS:
        pooled = np.sqrt(_pool(votes, cells))
        pooled = pooled - pooled.mean()
        levels.append(_unit(_mirror(pooled, pooled[:, ::-1][..., flipped_bins])))
    return np.concatenate(levels)


def _colour(rgb: np.ndarray) -> np.ndarray:
    """Opponent chroma (red-green, yellow-blue) per cell. Scaling it to unit length makes it blind to
    saturation and brightness edits; below a floor it stays short, so JPEG noise in a nearly grey picture
    is not blown up, and a greyscale picture has no colour block at all."""
    red_green = rgb[..., 0] - rgb[..., 1]
    yellow_blue = (rgb[..., 0] + rgb[..., 1]) / 2 - rgb[..., 2]
    chroma = _mirror(_pool(np.stack([red_green, yellow_blue], axis=-1), _CHROMA))
    return chroma / max(float(np.linalg.norm(chroma)), _CHROMA_FLOOR * np.sqrt(chroma.size))


# -- v1 (indexes built with it) ------------------------------------------------------------------------------


def _describe_v1(image: Image.Image) -> np.ndarray:
    """Hellinger colour histogram, HOG-like cells and a mean-removed grey thumbnail, each unit length."""
    rgb_image = flatten_alpha(image, _V1_WHITE)
    small = rgb_image.resize((_V1_SIDE, _V1_SIDE), Image.Resampling.BILINEAR, reducing_gap=3.0)
    rgb = np.asarray(small, dtype=np.float64) / 255.0
    grey = rgb @ _LUMA
    blocks = [_colour_histogram(rgb), _edge_histograms(grey), _thumbnail(grey)]
    return _unit(np.concatenate([_unit(block) for block in blocks])).astype(np.float32)


def _colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """Joint RGB histogram with square-rooted frequencies (Hellinger), so no one dominant colour swamps it."""
    levels = np.minimum((rgb * _V1_COLOUR_LEVELS).astype(np.int64), _V1_COLOUR_LEVELS - 1)
    index = (levels[..., 0] * _V1_COLOUR_LEVELS + levels[..., 1]) * _V1_COLOUR_LEVELS + levels[..., 2]
    counts = np.bincount(index.ravel(), minlength=_V1_COLOUR_LEVELS**3).astype(np.float64)
    return np.sqrt(counts / counts.sum())


def _edge_histograms(grey: np.ndarray) -> np.ndarray:
    """Magnitude-weighted gradient orientations per cell, each vote split between its two nearest bins."""
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    position = (np.arctan2(gy, gx) % np.pi) / np.pi * _ORIENTATIONS
    lower = np.floor(position).astype(np.int64) % _ORIENTATIONS
    upper = (lower + 1) % _ORIENTATIONS
    share = position - np.floor(position)

    cell_side = _V1_SIDE // _V1_GRID
    rows, cols = np.indices(grey.shape) // cell_side
    cell = (rows * _V1_GRID + cols) * _ORIENTATIONS
    size = _V1_GRID * _V1_GRID * _ORIENTATIONS
    votes = np.bincount((cell + lower).ravel(), weights=(magnitude * (1 - share)).ravel(), minlength=size)
    votes += np.bincount((cell + upper).ravel(), weights=(magnitude * share).ravel(), minlength=size)
    return np.sqrt(votes)


def _thumbnail(grey: np.ndarray) -> np.ndarray:
    """Coarse layout of light and dark, independent of overall brightness."""
    thumb = _pool(grey, _V1_THUMB).ravel()
    return thumb - thumb.mean()


# -- shared --------------------------------------------------------------------------------------------


def _orientation_votes(grey: np.ndarray) -> np.ndarray:
    """Per pixel, its gradient magnitude split between the two nearest of _ORIENTATIONS unsigned directions:
    a flat (pixels x _ORIENTATIONS) array."""
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    position = (np.arctan2(gy, gx) % np.pi) / np.pi * _ORIENTATIONS
    lower = np.floor(position).astype(np.int64) % _ORIENTATIONS
    share = position - np.floor(position)
    base = np.arange(grey.size) * _ORIENTATIONS
    size = grey.size * _ORIENTATIONS
    votes = np.bincount(base + lower.ravel(), weights=(magnitude * (1 - share)).ravel(), minlength=size)
    votes += np.bincount(
        base + (lower.ravel() + 1) % _ORIENTATIONS, weights=(magnitude * share).ravel(), minlength=size
    )
    return votes


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-12 else vector


__all__ = ["DIM", "VERSION", "VERSIONS", "ClassicEmbedder", "describe", "trim_bars"]
