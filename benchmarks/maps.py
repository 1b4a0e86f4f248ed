"""Benchmark t-SNE maps: layout and rendering time for 200, 500 and 1,000 points.

    python benchmarks/maps.py [--sizes 200 500 1000] [--repeats 3] [--keep DIR] [--sweep]

Vectors are synthetic embedding-like rows (benchmarks/vectors.py, dim 512; row 0 plays the query) and the
thumbnails are drawn 96 px JPEGs, so the figures isolate the map itself from the index. Per size it reports
the median over repeats of: layout (PCA + t-SNE + trustworthiness), clusters (k-means, k by silhouette),
PNG and HTML rendering from cached thumbnails, each as wall time and as this process's CPU time (the machine
is shared; CPU time is the steadier figure). It also reports what a fresh process pays once for imports and
what a cold thumbnail costs (decoding a 1600x1200 JPEG). With --sweep it also tries other t-SNE iteration
counts and perplexities at 200, 500 and 1,000 points, the evidence for the defaults. It prints Markdown.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which slow numpy on this machine, are removed from this command's
environment (never from the tests'). The layout itself pins BLAS and OpenMP to one thread (retrieval/maps.py).
"""

from __future__ import annotations

import os
import sys

from _common import dropped_env, run_without_slow_numpy_env

if __name__ == "__main__":
    run_without_slow_numpy_env()

import argparse
import io
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from support.photos import draw_photo  # noqa: E402
from vectors import make  # noqa: E402

started = time.perf_counter()
from retrieval.files.thumbnails import make_thumbnail  # noqa: E402
from retrieval.maps.layout import (  # noqa: E402
    MapPoint,
    NeighbourhoodMap,
    cluster_points,
    compute_layout,
)
from retrieval.maps.render import save_map  # noqa: E402

DIM = 512


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def warm_imports() -> float:
    """Import sklearn/matplotlib and draw a tiny map once: what a fresh process pays before its first map."""
    t0 = time.perf_counter()
    vectors, _ = make(30, DIM, 1, seed=9)
    layout = compute_layout(vectors)
    groups = cluster_points(layout.reduced[1:])
    m = as_map(layout, groups, 30)
    with tempfile.TemporaryDirectory() as tmp:
        save_map(m, Path(tmp) / "w.png", [None] * 30)
    return time.perf_counter() - t0


def as_map(layout, groups, n: int) -> NeighbourhoodMap:
    xy = layout.coords
    points = [MapPoint("query", None, None, float(xy[0, 0]), float(xy[0, 1]), 1.0, None, -1)]
    points += [
        MapPoint("result", i, f"/photos/{i}.jpg", float(xy[i, 0]), float(xy[i, 1]), 1 - i / n, i, int(c))
        for i, c in zip(range(1, n), groups.labels, strict=True)
    ]
    return NeighbourhoodMap(
        '"benchmark"', tuple(points), layout.params, layout.trustworthiness, groups.k, groups.chosen, {}
    )


def drawn_thumbnails(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        draw_photo(i, (96, 72)).save(buf, "JPEG", quality=82)
        out.append(buf.getvalue())
    return out


def cold_thumbnail_ms(count: int = 20) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(count):
            path = Path(tmp) / f"{i}.jpg"
            draw_photo(i, (1600, 1200)).save(path, quality=90)
            paths.append(path)
        t0 = time.perf_counter()
        for path in paths:
            make_thumbnail(path)
        return (time.perf_counter() - t0) / count * 1000


def sweep(sizes: tuple[int, ...] = (200, 500, 1000)) -> None:
    """Trustworthiness and CPU time of other iteration counts and perplexities than the defaults."""
    print("\n| points | max_iter | perplexity | trustworthiness | layout CPU s |")
    print("|---:|---:|---:|---:|---:|")
    for n in sizes:
        vectors, _ = make(n, DIM, 1, seed=n)
        for max_iter in (350, 500, 1000):
            for perplexity in (None, 15.0, 30.0, 50.0):
                layout, _, cpu = timed(
                    lambda v=vectors, i=max_iter, p=perplexity: compute_layout(v, max_iter=i, perplexity=p)
                )
                label = f"{layout.params.perplexity:g}" + (" (default)" if perplexity is None else "")
                print(f"| {n} | {max_iter} | {label} | {layout.trustworthiness:.3f} | {cpu:.2f} |")


def measure(n: int, thumbs: list[bytes], repeats: int, folder: Path) -> dict[str, object]:
    """Median wall and CPU seconds of each stage of an n-point map, with its perplexity and trust."""
    vectors, _ = make(n, DIM, 1, seed=n)
    runs: dict[str, list[tuple[float, float]]] = {"layout": [], "clusters": [], "png": [], "html": []}
    for _ in range(repeats):
        layout, *cost = timed(lambda: compute_layout(vectors, seed=0))
        runs["layout"].append(tuple(cost))
        groups, *cost = timed(lambda: cluster_points(layout.reduced[1:], seed=0))  # noqa: B023
        runs["clusters"].append(tuple(cost))
        m = as_map(layout, groups, n)
        for fmt in ("png", "html"):
            _, *cost = timed(lambda: save_map(m, folder / f"map-{n}.{fmt}", thumbs[:n]))  # noqa: B023
            runs[fmt].append(tuple(cost))
    median = {k: tuple(statistics.median(run[i] for run in v) for i in range(2)) for k, v in runs.items()}
    median["total"] = tuple(median["layout"][i] + median["clusters"][i] + median["png"][i] for i in range(2))
    return {
        "n": n,
        "perplexity": layout.params.perplexity,
        "trust": layout.trustworthiness,
        "median": median,
        "html_kib": (folder / f"map-{n}.html").stat().st_size / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the rendered maps in this folder")
    ap.add_argument("--sweep", action="store_true", help="also try other iteration counts and perplexities")
    args = ap.parse_args()

    imports = time.perf_counter() - started
    first = warm_imports()
    thumbs = drawn_thumbnails(max(args.sizes))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [measure(n, thumbs, args.repeats, folder) for n in args.sizes]
    load_after = os.getloadavg()[0]
    cold_ms = cold_thumbnail_ms()

    def cell(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.2f} ({pair[1]:.2f})"

    print(
        "| points | perplexity | trustworthiness | layout | clusters | PNG | layout + clusters + PNG | HTML |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        med = row["median"]
        print(
            f"| {row['n']} | {row['perplexity']:g} | {row['trust']:.3f} | {cell(med['layout'])} | "
            f"{cell(med['clusters'])} | {cell(med['png'])} | **{cell(med['total'])}** | "
            f"{cell(med['html'])}, {row['html_kib']:.0f} KiB |"
        )
    dropped = dropped_env() or "nothing"
    print()
    print(
        f"Seconds, median of {args.repeats} runs: wall (CPU of this process). Load average {load_before:.1f} "
        f"before, {load_after:.1f} after, on {os.cpu_count()} cores; Python {platform.python_version()}. "
        f"Dropped from the environment: {dropped}. Once per process: importing the map modules "
        f"{imports:.1f} s, then scikit-learn and matplotlib with a first tiny map {first:.1f} s. "
        f"A thumbnail made cold from a 1600x1200 JPEG: {cold_ms:.0f} ms (then cached)."
    )
    if args.sweep:
        sweep()


if __name__ == "__main__":
    main()
