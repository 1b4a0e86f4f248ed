"""Drawing a `NeighbourhoodMap`: PNG or SVG through matplotlib's Agg canvas, or one self-contained HTML page.

Both show each image's thumbnail at its point, framed in its cluster's colour (or a colour for its score),
best results drawn last so they stay on top, and the query marked with a star. The thumbnails of a PNG are
composed into one raster with Pillow and shown as a single image: drawing hundreds of matplotlib artists
would cost seconds. The HTML page holds its data, code, style and thumbnails inline, so it opens from disk
with no server and no network; clicking a picture opens the original through a file:// link.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageDraw

from retrieval.errors import UsageError
from retrieval.maps.layout import MapPoint, NeighbourhoodMap
from retrieval.maps.thumbnails import ThumbnailCache
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
) -> RenderedMap:
    """Fetch (or make, once) the points' thumbnails, then `save_map`; `seconds` counts both."""
    map_format(out)  # refuse a bad file name before any thumbnail is made
    started = time.perf_counter()
    made = cache.made
    thumbs = cache.get_many(meta, [(p.id, p.path) for p in m.points])
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
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (side, side))
        im = im.convert("RGB")
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
    """One page holding everything: points, thumbnails (base64 JPEG), style and code; no external URL."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    by_cluster = point_colours(m, "cluster")
    by_score = point_colours(m, "score")
    encoded: list[str] = []
    points = []
    for i, p in enumerate(m.points):
        thumb = None
        if thumbs[i] is not None:
            thumb = len(encoded)
            encoded.append(base64.b64encode(thumbs[i]).decode("ascii"))  # type: ignore[arg-type]
        points.append(
            {
                "x": round(p.x, 4),
                "y": round(p.y, 4),
                "role": p.role,
                "id": p.id,
                "path": p.path,
                "score": round(p.score, 4),
                "rank": p.rank,
                "cluster": p.cluster,
                "thumb": thumb,
                "cc": by_cluster[i],
                "sc": by_score[i],
            }
        )
    lo, hi = _score_range(m.points)
    cmap = colormaps[SCORE_COLOURMAP]
    sizes = np.bincount([p.cluster for p in m.points if p.role != "query"], minlength=m.clusters)
    data = {
        "colourBy": colour_by,
        "side": thumb_side(len(m.points), 1200 * 850, largest=80),
        "order": draw_order(m.points),
        "points": points,
        "thumbs": encoded,
        "clusters": [
            {"colour": c, "count": int(n)} for c, n in zip(cluster_colours(m.clusters), sizes, strict=True)
        ],
        "clustersNote": _clusters_note(m),
        "score": {"min": lo, "max": hi, "stops": [to_hex(cmap(t)) for t in np.linspace(0, 1, 7)]},
    }
    # "<" occurs only inside JSON strings, where \u003c means the same: no "</script>" can end the block.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return (
        _HTML.replace("__TITLE__", html.escape(f"Neighbourhood map of {m.title}"))
        .replace("__SUBTITLE__", html.escape(_subtitle(m)))
        .replace("__DATA__", payload)
    )


_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
html, body { margin: 0; height: 100%; overflow: hidden; background: #f6f6f3; color: #222;
  font: 14px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { position: fixed; top: 0; left: 0; right: 0; z-index: 2; padding: 8px 14px;
  background: rgba(255,255,255,0.93); border-bottom: 1px solid #ddd; }
header h1 { font-size: 17px; margin: 0; }
header p { margin: 3px 0 0; font-size: 12.5px; color: #555; }
#legend { position: fixed; right: 12px; top: 72px; z-index: 2; max-height: 75vh; overflow: auto;
  background: rgba(255,255,255,0.93); border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px;
  font-size: 12.5px; min-width: 170px; }
#legend .key { display: flex; align-items: center; gap: 7px; margin: 4px 0; }
#legend .swatch { width: 14px; height: 14px; border-radius: 2px; flex: none; }
#legend .ramp { height: 12px; border-radius: 2px; margin: 4px 0 2px; }
#legend .ends { display: flex; justify-content: space-between; color: #555; }
#legend .help { color: #666; margin: 8px 0 0; max-width: 190px; }
#tip { position: fixed; z-index: 3; display: none; pointer-events: none; max-width: 340px;
  background: #fff; border: 1px solid #bbb; border-radius: 6px; padding: 7px;
  box-shadow: 0 3px 10px rgba(0,0,0,0.18); font-size: 12px; }
#tip img { display: block; max-width: 192px; max-height: 192px; margin-bottom: 5px; }
#tip .path { word-break: break-all; }
#tip .meta { color: #555; margin-top: 3px; }
canvas { display: block; cursor: grab; }
canvas.dragging { cursor: grabbing; }
canvas.over { cursor: pointer; }
</style>
</head>
<body>
<header><h1>__TITLE__</h1><p>__SUBTITLE__</p></header>
<div id="legend">
  <label>frame colour <select id="colour"><option value="cluster">cluster</option>
  <option value="score">score</option></select></label>
  <div id="keys"></div>
  <p class="help">scroll to zoom, drag to pan, double-click to reset; hover a picture for details,
  click it to open the original.</p>
</div>
<div id="tip"></div>
<canvas id="map"></canvas>
<script>const MAP = __DATA__;</script>
<script>
(function () {
  "use strict";
  const P = MAP.points, canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  const tip = document.getElementById("tip"), keys = document.getElementById("keys");
  const select = document.getElementById("colour");
  const TOP = 64, MARGIN = 50;
  let W = 0, H = 0, dpr = 1, scale = 1, fitScale = 1, tx = 0, ty = 0, hover = -1, mode = MAP.colourBy;
  let drag = null, queued = false, touched = false;
  const images = P.map(function (p) {
    if (p.thumb === null) return null;
    const im = new Image();
    im.onload = redraw;
    im.src = "data:image/jpeg;base64," + MAP.thumbs[p.thumb];
    return im;
  });
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  P.forEach(function (p) {
    x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x); y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y);
  });

  function fit() {
    // Keep the legend's column free when the window is wide enough to spare it.
    const right = W > 900 ? document.getElementById("legend").offsetWidth + 12 : 0;
    const fx = (W - right - 2 * MARGIN) / Math.max(x1 - x0, 1e-9);
    const fy = (H - TOP - 2 * MARGIN) / Math.max(y1 - y0, 1e-9);
    scale = fitScale = Math.min(fx, fy);
    tx = (W - right) / 2 - (x0 + x1) / 2 * scale;
    ty = TOP + (H - TOP) / 2 + (y0 + y1) / 2 * scale;
  }
  function resize() {
    dpr = window.devicePixelRatio || 1; W = window.innerWidth; H = window.innerHeight;
    canvas.width = W * dpr; canvas.height = H * dpr;
    canvas.style.width = W + "px"; canvas.style.height = H + "px";
    if (!touched) fit();  // once the reader has zoomed or panned, a resize keeps their view
    redraw();
  }
  function sx(p) { return tx + p.x * scale; }
  function sy(p) { return ty - p.y * scale; }
  function side(p) {
    const s = MAP.side * Math.min(Math.max(Math.sqrt(scale / fitScale), 0.6), 2.6);
    return p.role === "context" ? s * 0.7 : s;
  }
  function box(i) {
    const p = P[i], s = side(p), im = images[i];
    let w = s, h = s;
    if (im && im.naturalWidth) {
      const r = im.naturalWidth / im.naturalHeight;
      if (r >= 1) { h = s / r; } else { w = s * r; }
    }
    return [sx(p) - w / 2, sy(p) - h / 2, w, h];
  }
  function colour(p) { return mode === "score" ? p.sc : p.cc; }
  function star(x, y, r) {
    ctx.beginPath();
    for (let k = 0; k < 10; k++) {
      const a = -Math.PI / 2 + k * Math.PI / 5, rr = k % 2 ? r * 0.45 : r;
      ctx.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
    }
    ctx.closePath(); ctx.fillStyle = "#ffd21f"; ctx.fill();
    ctx.lineWidth = 1.5; ctx.strokeStyle = "#000"; ctx.stroke();
  }
  function draw() {
    queued = false;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#f6f6f3"; ctx.fillRect(0, 0, W, H);
    MAP.order.forEach(function (i) {
      const p = P[i], b = box(i), im = images[i];
      if (p.role === "query" && !im) return;
      const edge = p.role === "query" ? 4 : (p.role === "context" ? 2 : 3);
      ctx.fillStyle = colour(p);
      ctx.fillRect(b[0] - edge, b[1] - edge, b[2] + 2 * edge, b[3] + 2 * edge);
      if (im && im.complete && im.naturalWidth) {
        ctx.globalAlpha = p.role === "context" ? 0.65 : 1;
        ctx.fillStyle = "#fff"; ctx.fillRect(b[0], b[1], b[2], b[3]);
        ctx.drawImage(im, b[0], b[1], b[2], b[3]);
        ctx.globalAlpha = 1;
      } else {
        ctx.fillStyle = "#cdcdcd"; ctx.fillRect(b[0], b[1], b[2], b[3]);
      }
    });
    const q = P.findIndex(function (p) { return p.role === "query"; });
    const qb = box(q);
    if (images[q]) { star(qb[0] + qb[2] / 2, qb[1] - 4, 13); } else { star(sx(P[q]), sy(P[q]), 15); }
    if (hover >= 0) {
      const b = box(hover);
      ctx.lineWidth = 3; ctx.strokeStyle = "#ff3b30";
      ctx.strokeRect(b[0] - 5, b[1] - 5, b[2] + 10, b[3] + 10);
    }
  }
  function redraw() { if (!queued) { queued = true; window.requestAnimationFrame(draw); } }

  function pick(mx, my) {
    for (let k = MAP.order.length - 1; k >= 0; k--) {
      const i = MAP.order[k], b = box(i);
      if (P[i].role === "query" && !images[i]) {
        if (Math.hypot(mx - sx(P[i]), my - sy(P[i])) < 15) return i;
        continue;
      }
      if (mx >= b[0] - 3 && mx <= b[0] + b[2] + 3 && my >= b[1] - 3 && my <= b[1] + b[3] + 3) return i;
    }
    return -1;
  }
  function line(cls, text) {
    const d = document.createElement("div"); d.className = cls; d.textContent = text; return d;
  }
  function showTip(i, mx, my) {
    const p = P[i];
    tip.replaceChildren();
    if (images[i]) { const im = document.createElement("img"); im.src = images[i].src; tip.appendChild(im); }
    tip.appendChild(line("path", p.role === "query" ? "query" + (p.path ? ": " + p.path : "") : p.path));
    if (p.role !== "query") {
      let meta = "score " + p.score.toFixed(4) + " · cluster " + (p.cluster + 1);
      meta += p.role === "result" ? " · rank " + p.rank : " · neighbour of a result";
      if (p.id !== null) meta += " · id " + p.id;
      tip.appendChild(line("meta", meta));
    }
    tip.style.display = "block";
    const r = tip.getBoundingClientRect();
    tip.style.left = Math.min(mx + 16, W - r.width - 8) + "px";
    tip.style.top = Math.min(my + 16, H - r.height - 8) + "px";
  }
  function fileUrl(path) {
    let p = path.replace(/\\\\/g, "/");
    if (p.charAt(0) !== "/") p = "/" + p;
    return "file://" + p.split("/").map(encodeURIComponent).join("/");
  }
  function legend() {
    keys.replaceChildren();
    if (mode === "cluster") {
      keys.appendChild(line("meta", MAP.clustersNote));
      MAP.clusters.forEach(function (c, k) {
        const row = document.createElement("div"); row.className = "key";
        const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = c.colour;
        row.appendChild(sw);
        row.appendChild(document.createTextNode("cluster " + (k + 1) + ": " + c.count + " images"));
        keys.appendChild(row);
      });
    } else {
      keys.appendChild(line("meta", "cosine with the query"));
      const ramp = document.createElement("div"); ramp.className = "ramp";
      ramp.style.background = "linear-gradient(to right, " + MAP.score.stops.join(", ") + ")";
      keys.appendChild(ramp);
      const ends = document.createElement("div"); ends.className = "ends";
      ends.appendChild(line("", MAP.score.min.toFixed(3)));
      ends.appendChild(line("", MAP.score.max.toFixed(3)));
      keys.appendChild(ends);
    }
  }

  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    const f = Math.exp(-e.deltaY * 0.0015);
    tx = e.clientX - (e.clientX - tx) * f; ty = e.clientY - (e.clientY - ty) * f; scale *= f;
    touched = true; redraw();
  }, { passive: false });
  canvas.addEventListener("mousedown", function (e) {
    drag = { x: e.clientX, y: e.clientY, tx: tx, ty: ty, moved: false };
    canvas.classList.add("dragging");
  });
  window.addEventListener("mouseup", function () {
    canvas.classList.remove("dragging");
    setTimeout(function () { drag = null; }, 0);  // after the click event that ends this drag
  });
  canvas.addEventListener("mousemove", function (e) {
    if (drag && (e.buttons & 1)) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      tx = drag.tx + dx; ty = drag.ty + dy; touched = true; tip.style.display = "none"; redraw();
      return;
    }
    const i = pick(e.clientX, e.clientY);
    if (i !== hover) { hover = i; redraw(); }
    canvas.classList.toggle("over", i >= 0 && !!P[i].path);
    if (i >= 0) showTip(i, e.clientX, e.clientY); else tip.style.display = "none";
  });
  canvas.addEventListener("mouseleave", function () { hover = -1; tip.style.display = "none"; redraw(); });
  canvas.addEventListener("click", function (e) {
    if (drag && drag.moved) return;
    const i = pick(e.clientX, e.clientY);
    if (i >= 0 && P[i].path) window.open(fileUrl(P[i].path), "_blank");
  });
  canvas.addEventListener("dblclick", function () { touched = false; fit(); redraw(); });
  select.value = mode;
  select.addEventListener("change", function () { mode = select.value; legend(); redraw(); });
  window.addEventListener("resize", resize);
  legend();
  resize();
})();
</script>
</body>
</html>
"""
