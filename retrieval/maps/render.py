"""Drawing a `NeighbourhoodMap`: PNG or SVG through matplotlib's Agg canvas, or one self-contained HTML page.

Both show each image's thumbnail at its point, framed in its cluster's colour (or a colour for its score),
best results drawn last so they stay on top, and the query marked with a star. The thumbnails of a PNG are
composed into one raster with Pillow and shown as a single image: drawing hundreds of matplotlib artists
would cost seconds. The HTML page is the template map.html holding its data, thumbnails and the map viewer
(viewer.js, viewer.css: the same files the search page's map tab runs) inline, so it opens from disk with no
server and no network; clicking a picture opens the original through a file:// link.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageDraw

from retrieval.errors import UsageError
from retrieval.files.thumbnails import ThumbnailCache
from retrieval.maps.layout import MapPoint, MapProgress, MapProgressFn, NeighbourhoodMap
from retrieval.metadata import MetadataStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ColourBy = Literal["cluster", "score"]
COLOUR_BY: tuple[str, ...] = ("cluster", "score")
FORMATS = {".png": "png", ".svg": "svg", ".html": "html", ".htm": "html"}
DEFAULT_SIZE_PX = (1600, 1200)
DPI = 100
SCORE_COLOURMAP = "viridis"
_MAP_BG = (246, 246, 243)
_QUERY_COLOUR = "#111111"
# The map panel's place in the figure (left, bottom, width, height); the legend sits to its right.
_AXES_RECT = (0.012, 0.015, 0.775, 0.885)
_CONTEXT_SCALE = 0.7


@dataclass(frozen=True)
class RenderedMap:
    """A written map; `thumbnails_made` counts thumbnails decoded from photos (0 once they are cached)."""

    path: Path
    format: str
    seconds: float
    thumbnails_made: int = 0


def map_format(path: Path | str) -> str:
    """png, svg or html, from the file name.

    Raises:
        UsageError: any other extension.
    """
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot write a map to {path}: the name must end in .png, .svg or .html")
    return fmt


def save_map(
    m: NeighbourhoodMap,
    out: Path | str,
    thumbs: Sequence[bytes | None],
    *,
    colour_by: ColourBy = "cluster",
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> RenderedMap:
    """Write the map to `out` (format from its extension); `thumbs` holds JPEG bytes aligned with m.points."""
    out = Path(out)
    fmt = map_format(out)
    if colour_by not in COLOUR_BY:
        raise UsageError(f"colour must be one of {', '.join(COLOUR_BY)}, got {colour_by!r}")
    if len(thumbs) != len(m.points):
        raise UsageError(f"{len(thumbs)} thumbnails for {len(m.points)} points")
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        out.write_text(render_html(m, thumbs, colour_by=colour_by), encoding="utf-8")
    else:
        figure = render_figure(m, thumbs, colour_by=colour_by, size_px=size_px)
        figure.savefig(out, format=fmt, dpi=DPI, facecolor="white")
    return RenderedMap(path=out, format=fmt, seconds=time.perf_counter() - started)


def render_map(
    m: NeighbourhoodMap,
    out: Path | str,
    cache: ThumbnailCache,
    meta: MetadataStore,
    *,
    colour_by: ColourBy = "cluster",
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
    progress: MapProgressFn | None = None,
) -> RenderedMap:
    """Fetch (or make, once) the points' thumbnails, then `save_map`; `seconds` counts both. `progress` is
    told of the stages ("thumbnails", then "drawing")."""
    map_format(out)  # refuse a bad file name before any thumbnail is made
    report = progress or (lambda _p: None)
    started = time.perf_counter()
    made = cache.made
    report(MapProgress("thumbnails", 0, len(m.points)))
    thumbs = cache.get_many(
        meta,
        [(p.id, p.path) for p in m.points],
        progress=lambda done, total: report(MapProgress("thumbnails", done, total)),
    )
    report(MapProgress("drawing"))
    rendered = save_map(m, out, thumbs, colour_by=colour_by, size_px=size_px)
    return replace(rendered, seconds=time.perf_counter() - started, thumbnails_made=cache.made - made)


# -- shared --------------------------------------------------------------------------------------------


def cluster_colours(k: int) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [to_hex(cmap(i % cmap.N)) for i in range(k)]


def _score_range(points: Sequence[MapPoint]) -> tuple[float, float]:
    scores = [p.score for p in points if p.role != "query"]
    lo, hi = min(scores), max(scores)
    return (lo, hi) if hi - lo > 1e-6 else (lo - 0.05, hi + 0.05)


def point_colours(m: NeighbourhoodMap, colour_by: ColourBy) -> list[str]:
    """A hex colour per point: its cluster's, or its score's on the colour map; the query is near-black."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if colour_by == "cluster":
        palette = cluster_colours(m.clusters)
        return [_QUERY_COLOUR if p.role == "query" else palette[p.cluster] for p in m.points]
    cmap = colormaps[SCORE_COLOURMAP]
    lo, hi = _score_range(m.points)
    return [
        _QUERY_COLOUR if p.role == "query" else to_hex(cmap((p.score - lo) / (hi - lo))) for p in m.points
    ]


def draw_order(points: Sequence[MapPoint]) -> list[int]:
    """Context first, then results from worst to best score, the query last: the best stay visible."""
    rank = {"context": 0, "result": 1, "query": 2}
    return sorted(range(len(points)), key=lambda i: (rank[points[i].role], points[i].score))


def thumb_side(n: int, area_px: float, largest: int = 96) -> int:
    """A thumbnail side that lets n pictures share the area without drowning each other."""
    return int(np.clip(0.85 * math.sqrt(area_px / max(n, 1)), 24, largest))


def _subtitle(m: NeighbourhoodMap) -> str:
    counts = f"{m.n_results} results"
    if m.n_context:
        counts += f" + {m.n_context} of their neighbours"
    p = m.params
    return (
        f"{counts} + the query · t-SNE perplexity {p.perplexity:g}, {p.max_iter} iterations, "
        f"PCA {p.pca_dims} dims, seed {p.seed} · trustworthiness {m.trustworthiness:.3f} "
        f"({p.trust_neighbors} neighbours)"
    )


def _clusters_note(m: NeighbourhoodMap) -> str:
    how = "chosen by silhouette" if m.clusters_chosen else "given"
    return f"k-means on the vectors, k = {m.clusters} ({how})"


# -- PNG / SVG ----------------------------------------------------------------------------------------


def _open_thumb(data: bytes | None, side: int) -> Image.Image | None:
    if data is None:
        return None
    try:
        opened = Image.open(io.BytesIO(data))
        opened.draft("RGB", (side, side))
        im = opened.convert("RGB")
    except Exception:  # a damaged cache file draws as a blank tile rather than failing the map
        return None
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return im


def compose_canvas(
    m: NeighbourhoodMap, thumbs: Sequence[bytes | None], colours: Sequence[str], size: tuple[int, int]
) -> tuple[Image.Image, np.ndarray]:
    """Paste every thumbnail, framed in its colour, at its point on one RGB canvas of `size` pixels.

    Returns the canvas and each point's picture as a pixel box (left, top, width, height; y down); a point
    drawn without a picture (a text query) has an empty box at its place.
    """
    width, height = size
    n = len(m.points)
    side = thumb_side(n, width * height)
    xy = np.array([(p.x, p.y) for p in m.points], dtype=np.float64)
    margin = side / 2 + 6
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    scale = min((width - 2 * margin) / span[0], (height - 2 * margin) / span[1])
    centre = (lo + hi) / 2
    px = np.empty_like(xy)
    px[:, 0] = width / 2 + (xy[:, 0] - centre[0]) * scale
    px[:, 1] = height / 2 - (xy[:, 1] - centre[1]) * scale  # t-SNE's y points up, pixels' down

    boxes = np.concatenate([px, np.zeros_like(px)], axis=1)
    canvas = Image.new("RGB", size, _MAP_BG)
    pen = ImageDraw.Draw(canvas)
    for i in draw_order(m.points):
        point = m.points[i]
        s = side if point.role != "context" else max(12, int(side * _CONTEXT_SCALE))
        border = 2 if point.role == "context" or s < 40 else 3
        if point.role == "query":
            border = 4
        thumb = _open_thumb(thumbs[i], s)
        if thumb is None and point.role == "query":
            continue  # a text query has no picture: the figure marks it with a star
        w, h = thumb.size if thumb is not None else (s, s)
        x0, y0 = round(px[i, 0] - w / 2), round(px[i, 1] - h / 2)
        boxes[i] = (x0, y0, w, h)
        pen.rectangle((x0 - border, y0 - border, x0 + w + border - 1, y0 + h + border - 1), fill=colours[i])
        if thumb is None:
            pen.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=(205, 205, 205))
            continue
        if point.role == "context":
            thumb = Image.blend(thumb, Image.new("RGB", thumb.size, (255, 255, 255)), 0.35)
        canvas.paste(thumb, (x0, y0))
    return canvas, boxes


def render_figure(
    m: NeighbourhoodMap,
    thumbs: Sequence[bytes | None],
    *,
    colour_by: ColourBy = "cluster",
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Figure:
    """A matplotlib Figure on an Agg canvas (no pyplot, no global state); save it with `savefig`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    left, bottom, w, h = _AXES_RECT
    panel = (int(size_px[0] * w), int(size_px[1] * h))
    colours = point_colours(m, colour_by)
    canvas, boxes = compose_canvas(m, thumbs, colours, panel)

    # The raster goes in unresampled at its pixel offset (imshow would resample all of it, a third of the
    # drawing time); the axes on top, transparent, give the star and labels the same pixel coordinates.
    x_px, y_px = round(size_px[0] * left), round(size_px[1] * bottom)
    fig.figimage(np.asarray(canvas.convert("RGBA")), xo=x_px, yo=y_px, origin="upper", zorder=0)
    ax = fig.add_axes(
        (x_px / size_px[0], y_px / size_px[1], panel[0] / size_px[0], panel[1] / size_px[1]), zorder=1
    )
    ax.patch.set_visible(False)
    ax.set_xlim(0, panel[0])
    ax.set_ylim(panel[1], 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cccccc")

    q = next(i for i, p in enumerate(m.points) if p.role == "query")
    has_query_picture = bool(boxes[q, 2])
    # On the top edge of the query's own picture when it has one, else at its point.
    left_q, top_q, width_q, _ = boxes[q]
    ax.scatter(
        [left_q + width_q / 2],
        [top_q - 2 if has_query_picture else top_q],
        marker="*",
        s=650,
        c="#ffd21f",
        edgecolors="black",
        linewidths=1.4,
        zorder=5,
    )
    for i, p in enumerate(m.points):
        if p.role == "result" and p.rank is not None and p.rank <= 3:
            ax.text(
                boxes[i, 0],
                boxes[i, 1],
                str(p.rank),
                fontsize=9,
                fontweight="bold",
                ha="center",
                va="center",
                color="white",
                bbox={"boxstyle": "circle,pad=0.25", "fc": "black", "ec": "white", "lw": 1},
                zorder=6,
            )

    fig.text(left, 0.968, f"Neighbourhood map of {m.title}", fontsize=18, fontweight="bold", va="center")
    fig.text(left, 0.928, _subtitle(m), fontsize=11, color="#444444", va="center")

    handles: list[object] = [
        Line2D(
            [],
            [],
            marker="*",
            ls="",
            ms=18,
            mfc="#ffd21f",
            mec="black",
            label="query" + (" (framed black)" if has_query_picture else ""),
        ),
        Line2D(
            [], [], marker="o", ls="", ms=13, mfc="black", mec="white", label="rank 1-3", markeredgewidth=1
        ),
    ]
    if m.n_context:
        handles.append(
            Patch(facecolor="#e4e4e4", edgecolor="#9a9a9a", label="neighbours of results\n(smaller, faded)")
        )
    legend_x = left + w + 0.012
    if colour_by == "cluster":
        palette = cluster_colours(m.clusters)
        sizes = np.bincount([p.cluster for p in m.points if p.role != "query"], minlength=m.clusters)
        handles += [
            Patch(facecolor=palette[c], edgecolor=palette[c], label=f"cluster {c + 1}: {sizes[c]} images")
            for c in range(m.clusters)
        ]
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(legend_x, bottom + h),
            frameon=False,
            fontsize=11,
            title=f"frame colour:\n{_clusters_note(m)}".replace(" (", "\n("),
            title_fontsize=11,
            alignment="left",
            labelspacing=0.9,
        )
    else:
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(legend_x, bottom + h),
            frameon=False,
            fontsize=11,
            alignment="left",
            labelspacing=0.9,
        )
        lo, hi = _score_range(m.points)
        cax = fig.add_axes((legend_x + 0.01, bottom + h - 0.62, 0.018, 0.45))
        bar = fig.colorbar(ScalarMappable(Normalize(lo, hi), SCORE_COLOURMAP), cax=cax)
        bar.set_label("frame colour: cosine with the query", fontsize=11)
    return fig


# -- HTML ---------------------------------------------------------------------------------------------


def render_html(
    m: NeighbourhoodMap, thumbs: Sequence[bytes | None], *, colour_by: ColourBy = "cluster"
) -> str:
    """One page holding everything: points, thumbnails (base64 JPEG), style and the viewer; no external URL.

    The page is the template map.html with the viewer that the search page's map tab runs (viewer.js,
    viewer.css) inlined, and the points in the JSON shape of the server's /api/map.
    """
    points = [
        {
            "role": p.role,
            "id": p.id,
            "path": p.path,
            "x": round(p.x, 4),
            "y": round(p.y, 4),
            "score": round(p.score, 4),
            "rank": p.rank,
            "cluster": p.cluster,
            "thumbnail": _data_url(thumb),
        }
        for p, thumb in zip(m.points, thumbs, strict=True)
    ]
    data = {
        "title": m.title,
        "clusters": m.clusters,
        "note": _clusters_note(m),
        "colourBy": colour_by,
        "points": points,
    }
    return fill_template(
        _asset("map.html"),
        {
            "title": html.escape(f"Neighbourhood map of {m.title}"),
            "subtitle": html.escape(_subtitle(m)),
            "data": script_json(data),
            "viewer_css": _inlined(_asset("viewer.css"), "</style"),
            "viewer_js": _inlined(_asset("viewer.js"), "</script", "<!--"),
        },
    )


_ASSETS = Path(__file__).resolve().parent
#: The map viewer, shipped as package data: the search page loads these files, the .html map inlines them.
VIEWER_FILES = {name: _ASSETS / name for name in ("viewer.js", "viewer.css")}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Inside a JSON string these mean the same escaped; escaped, no "</script>" or "<!--" can end or bend the
# block, and U+2028/2029 stay strings in any JavaScript parser.
_SCRIPT_SAFE = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def fill_template(template: str, values: dict[str, str]) -> str:
    """Each `{{name}}` of `template` replaced by `values[name]`, in one pass: text that a value brings in (a
    file named `{{data}}.jpg`) is never read for placeholders.

    Raises:
        KeyError: a placeholder that `values` lacks.
    """
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def script_json(value: object) -> str:
    """`value` as JSON that can sit inside a <script> element of an HTML page."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(_SCRIPT_SAFE)


def _data_url(jpeg: bytes | None) -> str | None:
    return None if jpeg is None else f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode('ascii')}"


def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def _inlined(text: str, *forbidden: str) -> str:
    """`text` checked for what would end its <script> or <style> element early."""
    for bad in forbidden:
        if bad in text.lower():
            raise RuntimeError(f"the viewer's code contains {bad!r}: it cannot be inlined into a page")
    return text
