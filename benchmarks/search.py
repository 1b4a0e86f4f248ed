"""Benchmark the default VectorStore against plain hnswlib, faiss and usearch at equal recall.

    python benchmarks/search.py [--data vectors] [--data clip-like] [--n 100000] [--queries 1000]
                                [--seed 0] [--rounds 2] [--only hnswlib,faiss-flat32,...] [--no-write]

For each data set (default both) and n it builds, in one run and on the same data:
plain hnswlib float32 (M=16, ef_construction=200), faiss IndexHNSWFlat M=16 and M=32 (inner
product), faiss IndexHNSWSQ QT_8bit M=32 with and without IndexRefineFlat, usearch i8 (cos)
and f16 (ip), and the store; each at a sweep of ef (`--only` picks some of them, by the keys in
CONTENDERS; the store is always in). Data: `vectors` is benchmarks/vectors.py
(clustered, steep spectrum; its queries are image-like); `clip-like` is benchmarks/clip_like.py
(CLIP ViT-B/32-like: shared mean, flat spectrum, image and text queries). Ground truth is exact
top-10 by brute force. All contenders answer the same queries one at a time on one thread,
timed interleaved (benchmarks/_common.py), so the ratios are the figures to read. For each
contender it reports queries/s at recall@10 0.95 / 0.98 / 0.99 (log-interpolated between its
best ef settings), RAM in bytes per vector (resident anonymous memory of a fresh process that
loaded the index and ran queries), disk and build time, and rewrites the section
"## Search: the store vs hnswlib, faiss and usearch" of BENCHMARKS.md.

The script re-executes itself without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (they slow numpy on
these machines) and with BLAS pinned to one thread; tests never change them.
"""

from __future__ import annotations

import os
import sys

from _common import (
    INTERLEAVE,
    env_note,
    interleaved_best_times,
    rss_kb,
    run_without_slow_numpy_env,
    write_section,
)

if __name__ == "__main__":
    run_without_slow_numpy_env({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})

import argparse
import datetime
import itertools
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import clip_like  # noqa: E402
import vectors  # noqa: E402

from retrieval.vectors.hnsw.store import LOW_HEAD_BOOST, SCAN_BYTES, StoreParams, VectorStore  # noqa: E402

HEADING = "## Search: the store vs hnswlib, faiss and usearch"
DIM = 512
K = 10
TARGETS = (0.95, 0.98, 0.99)
EFS = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768)
ADD_BATCH = 10_000
RAM_QUERIES = 200
HNSWLIB_M, HNSWLIB_EFC = 16, 200
FAISS_EFC = 100
USEARCH_M, USEARCH_EFC = 16, 128
REFINE_FACTOR = 4
#: Keys for --only, in the order the tables list them.
CONTENDERS = (
    "hnswlib",
    "faiss-flat16",
    "faiss-flat32",
    "faiss-sq8",
    "faiss-sq8-refine",
    "usearch-i8",
    "usearch-f16",
)


@dataclass
class Family:
    """One index (built once) and how to query it at a given ef."""

    name: str
    at: Callable[[int], Callable[[np.ndarray], np.ndarray]]
    build_s: float
    ram_b: float
    disk_b: float
    efs: tuple[int, ...] = EFS
    default_ef: int | None = None
    default_note: str = ""  # how the store's default was chosen
    curve: dict[str, list[tuple[int, float, float]]] = field(
        default_factory=dict
    )  # kind -> (ef, recall, qps)


def make_data(data: str, n: int, n_queries: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if data == "vectors":
        base, queries = vectors.make(n, DIM, n_queries, seed=seed)
        return base, {"image": queries}
    base, image, text = clip_like.make(n, DIM, n_queries, seed=seed)
    return base, {"image": image, "text": text}


# ---- RAM: a fresh process loads the index and runs queries ------------------------------------


def measure_ram(kind: str, path: str, queries_path: str) -> None:
    """Child process: open an index, run queries, print resident-memory growth (bytes) as JSON."""
    queries = np.load(queries_path)
    before = rss_kb()
    if kind == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=DIM)
        index.load_index(path)
        index.set_ef(64)
        run = lambda q: index.knn_query(q[None], k=K)  # noqa: E731
    elif kind == "faiss":
        import faiss

        index = faiss.read_index(path)
        run = lambda q: index.search(q[None], K)  # noqa: E731
    elif kind == "usearch":
        from usearch.index import Index

        index = Index.restore(path)
        run = lambda q: index.search(q, K)  # noqa: E731
    else:
        store = VectorStore.open(Path(path))
        run = lambda q: store.search(q, K)  # noqa: E731
    for q in queries:
        run(q)
    after = rss_kb()
    print(json.dumps({k: (after[k] - before[k]) * 1024 for k in after}))


def ram_of(kind: str, path: Path, queries_path: Path, n: int) -> float:
    cmd = [sys.executable, __file__, "--measure-ram", kind, str(path), str(queries_path)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return out["RssAnon"] / n


def disk_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size


# ---- contenders -------------------------------------------------------------------------------


def hnswlib_family(base: np.ndarray, work: Path, qpath: Path, efs: tuple[int, ...]) -> Family:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=len(base), M=HNSWLIB_M, ef_construction=HNSWLIB_EFC)
    t = time.perf_counter()
    index.add_items(base, np.arange(len(base)))
    build = time.perf_counter() - t
    path = work / "hnswlib.bin"
    index.save_index(str(path))
    index.set_num_threads(1)

    def at(ef: int) -> Callable[[np.ndarray], np.ndarray]:
        def one(q: np.ndarray) -> np.ndarray:
            index.set_ef(max(ef, K))
            return index.knn_query(q[None], k=K)[0][0]

        return one

    name = f"hnswlib f32 M={HNSWLIB_M}"
    return Family(name, at, build, ram_of("hnswlib", path, qpath, len(base)), disk_of(path) / len(base), efs)


def faiss_families(
    base: np.ndarray, work: Path, qpath: Path, wanted: set[str], efs: tuple[int, ...]
) -> list[Family]:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    out = []

    def hnsw_at(index, refine=None):
        def at(ef: int) -> Callable[[np.ndarray], np.ndarray]:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ef, K)
            if refine is None:
                return lambda q: index.search(q[None], K, params=params)[1][0]
            rparams = faiss.IndexRefineSearchParameters()
            rparams.k_factor = REFINE_FACTOR
            rparams.base_index_params = params
            return lambda q: refine.search(q[None], K, params=rparams)[1][0]

        return at

    for m in (16, 32):
        if f"faiss-flat{m}" not in wanted:
            continue
        index = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = FAISS_EFC
        t = time.perf_counter()
        index.add(base)
        build = time.perf_counter() - t
        path = work / f"faiss-flat-{m}.index"
        faiss.write_index(index, str(path))
        ram = ram_of("faiss", path, qpath, len(base))
        out.append(
            Family(f"faiss HNSWFlat M={m}", hnsw_at(index), build, ram, disk_of(path) / len(base), efs)
        )
    if not wanted & {"faiss-sq8", "faiss-sq8-refine"}:
        faiss.omp_set_num_threads(1)
        return out
    index = faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = FAISS_EFC
    t = time.perf_counter()
    index.train(base[:50_000])
    index.add(base)
    build = time.perf_counter() - t
    if "faiss-sq8" in wanted:
        path = work / "faiss-sq8.index"
        faiss.write_index(index, str(path))
        ram = ram_of("faiss", path, qpath, len(base))
        out.append(Family("faiss HNSWSQ8 M=32", hnsw_at(index), build, ram, disk_of(path) / len(base), efs))
    if "faiss-sq8-refine" not in wanted:
        faiss.omp_set_num_threads(1)
        return out
    t = time.perf_counter()
    refine = faiss.IndexRefineFlat(index, faiss.swig_ptr(base))  # copies base into its flat refine index
    build_refine = build + time.perf_counter() - t
    rpath = work / "faiss-sq8-refine.index"
    faiss.write_index(refine, str(rpath))
    rram = ram_of("faiss", rpath, qpath, len(base))
    out.append(
        Family(
            f"faiss HNSWSQ8 M=32 + RefineFlat×{REFINE_FACTOR}",
            hnsw_at(index, refine),
            build_refine,
            rram,
            disk_of(rpath) / len(base),
            efs,
        )
    )
    faiss.omp_set_num_threads(1)
    return out


def usearch_families(
    base: np.ndarray, work: Path, qpath: Path, wanted: set[str], efs: tuple[int, ...]
) -> list[Family]:
    out: list[Family] = []
    if not wanted & {"usearch-i8", "usearch-f16"}:
        return out
    from usearch.index import Index

    for dtype, metric in (("i8", "cos"), ("f16", "ip")):
        if f"usearch-{dtype}" not in wanted:
            continue
        index = Index(ndim=DIM, metric=metric, dtype=dtype, connectivity=USEARCH_M, expansion_add=USEARCH_EFC)
        t = time.perf_counter()
        index.add(np.arange(len(base)), base)
        build = time.perf_counter() - t
        path = work / f"usearch-{dtype}.usearch"
        index.save(str(path))
        ram = ram_of("usearch", path, qpath, len(base))

        def at(ef: int, index=index) -> Callable[[np.ndarray], np.ndarray]:
            def one(q: np.ndarray) -> np.ndarray:
                index.expansion_search = max(ef, K)
                return index.search(q, K, threads=1).keys

            return one

        name = f"usearch {dtype} ({metric}) M={USEARCH_M}"
        out.append(Family(name, at, build, ram, disk_of(path) / len(base), efs))
    return out


def build_store(base: np.ndarray, folder: Path, params: StoreParams) -> float:
    """Create the store in `folder`, ids 0..n-1 added in ingest-sized batches; returns the seconds taken."""
    t = time.perf_counter()
    store = VectorStore.create(folder, DIM, params)
    for start in range(0, len(base), ADD_BATCH):
        block = base[start : start + ADD_BATCH]
        store.add(np.arange(start, start + len(block)), block)
    store.save()
    store.close()
    return time.perf_counter() - t


def store_family(
    base: np.ndarray, work: Path, qpath: Path, params: StoreParams, efs: tuple[int, ...]
) -> Family:
    folder = work / "store"
    build = build_store(base, folder, params)
    ram = ram_of("store", folder, qpath, len(base))
    reader = VectorStore.open(folder)  # as a server would: read-only, originals memory-mapped
    tuned = reader.stats()["tuning"]
    note = (
        f"chosen by its save: ef {tuned['ef']}, {tuned['rescore']} re-scored exactly, probe recall@10 "
        f"{tuned['recall']:.4f}, {tuned['seconds']:.1f} s of the build"
        if tuned
        else f"ef {reader.default_ef()}, not tuned"
    )

    def at(ef: int) -> Callable[[np.ndarray], np.ndarray]:
        chosen = ef or None  # 0: the store's default choice (tuned at save, boosted for text-like queries)
        return lambda q: reader.search(q, K, ef=chosen)[0][0]

    # Disk includes the float32 originals (memory-mapped, not counted in RAM).
    return Family(
        "store", at, build, ram, disk_of(folder) / len(base), efs=(0, *efs), default_ef=0, default_note=note
    )


# ---- timing and report ------------------------------------------------------------------------


def time_families(families: list[Family], queries: dict[str, np.ndarray], truths, rounds: int) -> None:
    for kind, qs in queries.items():
        pairs = [(f, ef) for f in families for ef in f.efs]
        timed = interleaved_best_times([f.at(ef) for f, ef in pairs], [len(qs)] * len(pairs), qs, K, rounds)
        for (f, ef), (lat, ids) in zip(pairs, timed, strict=True):
            f.curve.setdefault(kind, []).append(
                (ef, vectors.recall_at_k(ids, truths[kind], K), 1 / lat.mean())
            )


def qps_at(curve: list[tuple[int, float, float]], target: float) -> tuple[float | None, str]:
    """Queries/s at `target` recall, log-interpolated between the family's best settings (each faster
    than every setting of higher recall); None when no setting reaches it."""
    pts: list[tuple[float, float, int]] = []
    for ef, rec, qps in sorted(curve, key=lambda c: (-c[1], -c[2])):
        if not pts or qps > pts[-1][1]:
            pts.append((rec, qps, ef))
    pts.reverse()
    if target <= pts[0][0]:
        return pts[0][1], f"ef {pts[0][2]}"
    for (r0, q0, e0), (r1, q1, e1) in itertools.pairwise(pts):
        if r0 <= target <= r1:
            f = (target - r0) / (r1 - r0) if r1 > r0 else 1.0
            return float(np.exp(np.log(q0) + f * (np.log(q1) - np.log(q0)))), f"ef {e0}-{e1}"
    return None, f"max {pts[-1][0]:.4f}"


def report(families: list[Family], kinds: list[str]) -> str:
    store = families[-1]
    hnsw_ram = next((f.ram_b for f in families if f.name.startswith("hnswlib")), None)
    lines = []
    for kind in kinds:
        lines.append(
            f"**{kind} queries** — queries/s at recall@10 (ratio = store ÷ contender at that recall):\n"
        )
        head = (
            "| contender | "
            + " | ".join(f"q/s @ {t}" for t in TARGETS)
            + " | best recall | RAM B/vec | RAM ratio store÷it | disk B/vec | build s |"
        )
        lines.append(head)
        lines.append("|---|" + "---:|" * (len(TARGETS) + 5))
        ours = [qps_at(store.curve[kind], t)[0] for t in TARGETS]
        for f in families:
            cells = []
            for t, mine in zip(TARGETS, ours, strict=True):
                qps, _ = qps_at(f.curve[kind], t)
                if qps is None:
                    cells.append("not reached")
                elif f is store or mine is None:
                    cells.append(f"{qps:.0f}")
                else:
                    cells.append(f"{qps:.0f} (**{mine / qps:.2f}×**)")
            best = max(r for _, r, _ in f.curve[kind])
            lines.append(
                f"| {f.name} | " + " | ".join(cells) + f" | {best:.4f} | {f.ram_b:.0f} | "
                f"{store.ram_b / f.ram_b:.2f} | {f.disk_b:.0f} | {f.build_s:.1f} |"
            )
        default = next((r, q) for ef, r, q in store.curve[kind] if ef == store.default_ef)
        lines.append(
            f"\nStore at its default ({store.default_note}; a text-like query scans where a scan costs "
            f"at most {SCAN_BYTES >> 20} MB of head codes, else gets ×{LOW_HEAD_BOOST} candidates): "
            f"recall@10 {default[0]:.4f}, "
            f"{default[1]:.0f} q/s."
            + (f" RAM store ÷ plain hnswlib = {store.ram_b / hnsw_ram:.2f}." if hnsw_ram else "")
            + "\n"
        )
    lines.append("<details><summary>every setting (ef: recall@10 / q/s)</summary>\n")
    for kind in kinds:
        for f in families:
            pts = ", ".join(f"{ef or 'default'}: {r:.4f}/{q:.0f}" for ef, r, q in f.curve[kind])
            lines.append(f"- {kind}, {f.name}: {pts}")
    lines.append("\n</details>\n")
    return "\n".join(lines) + "\n"


def bench(data: str, n: int, a: argparse.Namespace, params: StoreParams) -> str:
    t0 = time.perf_counter()
    base, queries = make_data(data, n, a.queries, a.seed)
    truths = {kind: vectors.exact_topk(base, qs, K) for kind, qs in queries.items()}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        qpath = work / "queries.npy"
        np.save(qpath, np.concatenate(list(queries.values()))[:RAM_QUERIES])
        wanted = set(a.only)
        families = [hnswlib_family(base, work, qpath, a.efs)] if "hnswlib" in wanted else []
        families += faiss_families(base, work, qpath, wanted, a.efs)
        families += usearch_families(base, work, qpath, wanted, a.efs)
        families.append(store_family(base, work, qpath, params, a.efs))
        print(f"{data} n={n}: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        del base
        time_families(families, queries, truths, a.rounds)
    text = (
        f"### {data}, n = {n:,}, dim {DIM}, seed {a.seed}, {a.queries} queries per kind, k = {K}\n\n"
        + report(families, list(queries))
        + f"\n(wall time for this data set: {time.perf_counter() - t0:.0f} s)\n"
    )
    print(text, flush=True)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", choices=("vectors", "clip-like"), help="default: both")
    ap.add_argument("--n", type=int, action="append", help="collection size (repeatable); default 100000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds; each query keeps its best time")
    ap.add_argument(
        "--only",
        type=lambda v: [c for c in v.split(",") if c],
        default=list(CONTENDERS),
        help=f"comma list of peers to run next to the store, from {','.join(CONTENDERS)} (default: all)",
    )
    ap.add_argument(
        "--efs",
        type=lambda v: tuple(int(e) for e in v.split(",") if e),
        default=EFS,
        help=f"comma list of ef settings every contender is swept over (default {','.join(map(str, EFS))})",
    )
    ap.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    ap.add_argument("--measure-ram", nargs=3, metavar=("KIND", "PATH", "QUERIES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure_ram:
        measure_ram(*a.measure_ram)
        return
    unknown = set(a.only) - set(CONTENDERS)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)}; known: {','.join(CONTENDERS)}")
    params = StoreParams()
    load_before = os.getloadavg()[0]
    sections = [bench(d, n, a, params) for d in a.data or ["vectors", "clip-like"] for n in a.n or [100_000]]
    cmd = "python benchmarks/search.py " + " ".join(sys.argv[1:])
    body = (
        f"{HEADING}\n\n"
        f"Command: `{cmd}` ({datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after). Absolute figures are noisy: all contenders are timed in one "
        f"run, interleaved {INTERLEAVE} queries at a time over {a.rounds} rounds, each query keeping its "
        f"best time, so the ratios are the figures to read. Single query per call, one thread "
        f"({env_note()}; BLAS pinned to one thread). Builds use all cores. q/s at a recall is "
        f"log-interpolated between a contender's "
        f'best ef settings ({", ".join(map(str, a.efs))}); "not reached" means no setting got there. RAM '
        f"B/vec: growth of resident anonymous memory in a fresh process that loaded the index and ran "
        f"{RAM_QUERIES} queries (the store's float32 originals are memory-mapped, counted on disk only). "
        f"Peers: hnswlib M={HNSWLIB_M} ef_construction={HNSWLIB_EFC}; faiss efConstruction={FAISS_EFC}, "
        f"RefineFlat k_factor {REFINE_FACTOR}; usearch connectivity {USEARCH_M}, expansion_add "
        f"{USEARCH_EFC}. Store defaults: `{params.to_dict()}`.\n\n" + "\n".join(sections) + "\n"
    )
    if not a.no_write:
        write_section(body, a.output)


if __name__ == "__main__":
    main()
