"""Benchmark a Milvus server and Milvus Lite next to the default store (hnswlib + int8 tail), in one run.

    python benchmarks/milvus_store.py [--uri http://127.0.0.1:PORT | --server] [--n 100000] [--queries 1000]
        [--rounds 2] [--no-write]

(Not `benchmarks/milvus.py`: with benchmarks/ on sys.path that name would hide the `milvus` package.)
`--server` starts a Milvus 2.3 standalone server itself (tests/support/services.py; the `milvus-server`
extra) and
reports its process's RAM; `--uri` measures one already running (RAM not measured). Without either, only
Milvus Lite and the default store. The stores are built through `retrieval.stores.create_store`, as an
index would build them, from the same synthetic vectors (benchmarks/vectors.py, dim 512), adding in
batches as ingest does and saving at the end.
Build time runs from creating the store to a freshly opened store answering its first query (for Milvus Lite
the reopen is where its indexes are loaded or built). Each store is then searched one query at a time on one
thread, at its default and at a few other candidate counts (`ef`): recall@10 against exact float32 search,
queries/s and p50/p99 latency, timed interleaved over `--rounds` rounds (each query keeps its best time).
RAM is the growth of resident anonymous memory of a fresh process that opened the store and ran queries;
disk is the store's folder. On the server, build time also waits until the server has indexed every row
(it indexes flushed segments in the background), and RAM is the server process's peak and final RSS.
The script rewrites the section "## Milvus stores vs default store" of BENCHMARKS.md (other sections are
kept). Needs the `milvus` extra.
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
import contextlib
import datetime
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # support/services.py: a Milvus server on free ports

from vectors import exact_topk, make, recall_at_k  # noqa: E402

from retrieval.vectors import Store, StoreSpec, create_store, open_store  # noqa: E402
from retrieval.vectors import milvus as milvus_store  # noqa: E402
from retrieval.vectors.hnsw.store import StoreParams  # noqa: E402

HEADING = "## Milvus stores vs default store"
DIM = 512
K = 10
ADD_BATCH = 2000  # vectors per add(), as an ingest of a big folder adds them (one batch of files at a time)
SAVE_EVERY = 20  # add() calls between save()s, as ingest checkpoints
DEFAULT_EFS = (128, 256, 384)
MILVUS_EFS = (64, 128, 256)
BATCH = 100  # queries per call in the batched measurement
RAM_QUERIES = 200
SPECS = {"default": StoreSpec("hnswlib-int8"), "milvus-lite": StoreSpec("milvus", None, "bench")}
MILVUS_KINDS = ("milvus-lite", "milvus-server")


WHY = """\
### Where Milvus Lite's time goes

milvus-lite 3 is Milvus's API reimplemented in Python over pyarrow and faiss. Profiling one query at 20k
vectors: faiss's HNSW_SQ search takes about 0.7 ms of the ~19 ms; the rest is two Python loops over every
stored row that each search runs before it (`_update_max_seqs` and `_build_local_mask` in
`milvus_lite/search/executor_indexed.py`: which version of each primary key is current, which rows are
deleted). So a query costs time in proportion to the collection, whatever `ef` is, and a batch of queries pays
it once: Milvus Lite is for tests and small indexes, and a Milvus server (whose segments carry their own
delete bitmaps) is the deployment for large ones. Both Milvus stores now rank exactly: the store re-scores
max(4k, k+32) candidates against their float32 vectors (one `get`), so recall no longer stops at what
HNSW_SQ's 8-bit codes can tell apart; that `get` is most of a server query's time here. Milvus Lite
keeps every float32 vector in RAM (pyarrow tables) next to the index, hence its RAM
per vector; the default store keeps them on disk, memory-mapped.
"""


@dataclass
class Row:
    store: str
    setting: str
    recall: float
    qps: float
    p50_ms: float
    p99_ms: float


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_ram(kind: str, folder: str, queries_path: str) -> None:
    """Child process: open a store, run queries, print resident-memory growth (bytes) as JSON."""
    queries = np.load(queries_path)
    import pymilvus  # noqa: F401 - imported before the baseline, as the server process has it loaded

    before = rss_kb()
    with open_store(SPECS[kind], Path(folder)) as store:
        for q in queries:
            store.search(q, K)
        after = rss_kb()
    print(json.dumps({k: (after[k] - before[k]) * 1024 for k in after}))


def proc_rss_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident memory of process `pid` in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def wait_indexed(store: Store, n: int, timeout_s: float = 1800.0) -> None:
    """Until the server reports every row indexed (it indexes each sealed segment in the background)."""
    client, collection = store._client, store.collection  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.describe_index(collection, "vector") or {}
        if int(info.get("indexed_rows", 0)) >= n and not int(info.get("pending_index_rows", 0)):
            return
        time.sleep(1.0)
    raise TimeoutError(f"the server had not indexed {n} rows in {timeout_s:.0f} s")


def build(kind: str, base: np.ndarray, folder: Path) -> tuple[float, float, dict]:
    """Build a store as ingest would; returns (build s, of which reopen s, stats)."""
    t = time.perf_counter()
    store = create_store(SPECS[kind], folder, DIM)
    for i, start in enumerate(range(0, len(base), ADD_BATCH)):
        store.add(np.arange(start, min(start + ADD_BATCH, len(base))), base[start : start + ADD_BATCH])
        if (i + 1) % SAVE_EVERY == 0:
            store.save()
    store.save()
    if kind == "milvus-server":
        wait_indexed(store, len(base))
    store.close()
    t_open = time.perf_counter()
    store = open_store(SPECS[kind], folder)
    store.search(base[0], K)
    done = time.perf_counter()
    stats = store.stats()
    store.close()
    return done - t, done - t_open, stats


def run_interleaved(
    contenders: list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]],
    queries: np.ndarray,
    truth: np.ndarray,
    rounds: int,
) -> list[Row]:
    counts = [len(queries)] * len(contenders)
    timed = interleaved_best_times([search for _, _, search in contenders], counts, queries, K, rounds)
    return [
        Row(
            store,
            setting,
            recall_at_k(c_ids, truth, K),
            1.0 / c_lat.mean(),
            float(np.percentile(c_lat, 50) * 1e3),
            float(np.percentile(c_lat, 99) * 1e3),
        )
        for (store, setting, _), (c_lat, c_ids) in zip(contenders, timed, strict=True)
    ]


def batched_qps(store: Store, queries: np.ndarray, rounds: int) -> float:
    """Queries/s when they come BATCH at a time (one `search` call each), best of `rounds`."""
    best = np.inf
    for _ in range(rounds):
        t = time.perf_counter()
        for start in range(0, len(queries), BATCH):
            store.search(queries[start : start + BATCH], K)
        best = min(best, time.perf_counter() - t)
    return len(queries) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds; each query keeps its best time")
    ap.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    server = ap.add_mutually_exclusive_group()
    server.add_argument("--uri", help="a running Milvus server to measure too (http://HOST:PORT)")
    server.add_argument("--server", action="store_true", help="start a Milvus 2.3 server to measure too")
    ap.add_argument("--measure-ram", nargs=3, metavar=("KIND", "FOLDER", "QUERIES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure_ram:
        measure_ram(*a.measure_ram)
        return

    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    base, queries = make(a.n, DIM, a.queries, seed=0)
    truth = exact_topk(base, queries, K)
    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        server_pid: int | None = None
        if a.server:
            from support.services import start_milvus, stop_milvus

            proc, port = start_milvus(work / "server-data")
            stack.callback(stop_milvus, proc)
            server_pid, a.uri = proc.pid, f"http://127.0.0.1:{port}"
        if a.uri:
            SPECS["milvus-server"] = StoreSpec("milvus", a.uri, f"bench_{os.getpid()}")
        queries_path = work / "queries.npy"
        np.save(queries_path, queries[:RAM_QUERIES])
        built: dict[str, dict] = {}
        for kind in SPECS:
            folder = work / kind
            build_s, open_s, stats = build(kind, base, folder)
            if kind == "milvus-server":
                ram_b = (proc_rss_mb(server_pid)[1] * 2**20 / a.n) if server_pid else float("nan")
                disk = folder_bytes(work / "server-data" / "data") if server_pid else float("nan")
            else:
                child = [sys.executable, __file__, "--measure-ram", kind, str(folder), str(queries_path)]
                ram = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
                ram_b, disk = ram["RssAnon"] / a.n, folder_bytes(folder)
            built[kind] = {
                "build_s": build_s,
                "open_s": open_s,
                "ram_b": ram_b,
                "disk_b": disk / a.n,
                "stats": stats,
            }
            print(f"{kind}: built in {build_s:.1f} s (reopen {open_s:.1f} s)", flush=True)
        del base
        stores: dict[str, Store] = {kind: open_store(SPECS[kind], work / kind) for kind in SPECS}
        default_ef = StoreParams().ef_search

        def at(kind: str, ef: int) -> Callable[[np.ndarray], np.ndarray]:
            return lambda q: stores[kind].search(q, K, ef=ef)[0][0]

        contenders = [
            ("default", f"ef={ef}" + (" (default)" if ef == default_ef else ""), at("default", ef))
            for ef in DEFAULT_EFS
        ] + [
            (kind, f"ef={ef}" + (" (default)" if ef == milvus_store.EF_SEARCH else ""), at(kind, ef))
            for kind in MILVUS_KINDS
            if kind in stores
            for ef in MILVUS_EFS
        ]
        rows = run_interleaved(contenders, queries, truth, a.rounds)
        batched = {kind: batched_qps(store, queries, a.rounds) for kind, store in stores.items()}
        for store in stores.values():
            store.close()
        server_ram = proc_rss_mb(server_pid) if server_pid else None

    table = (
        "| store | setting | recall@10 | queries/s | p50 ms | p99 ms |\n|---|---|---:|---:|---:|---:|\n"
        + "\n".join(
            f"| {r.store} | {r.setting} | {r.recall:.4f} | {r.qps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
            for r in rows
        )
    )
    builds = (
        "| store | index | build s | of which reopen s | RAM B/vec | disk B/vec |\n"
        "|---|---|---:|---:|---:|---:|\n"
        + "\n".join(
            f"| {kind} | {b['stats'].get('index', 'hnswlib graph + int8 tail')} | {b['build_s']:.1f} "
            f"| {b['open_s']:.1f} | {b['ram_b']:.0f} | {b['disk_b']:.0f} |"
            for kind, b in built.items()
        )
    )
    ours = {r.store: r for r in rows if "(default)" in r.setting}
    d = ours["default"]
    summary = "\n".join(
        f"- {kind} at its default: recall@10 {r.recall:.4f} at {r.qps:.0f} queries/s one at a time "
        f"(default store: {d.recall:.4f} at {d.qps:.0f}), {batched[kind]:.0f} queries/s {BATCH} per call "
        f"(default store: {batched['default']:.0f}); build {built[kind]['build_s']:.0f} s vs "
        f"{built['default']['build_s']:.0f} s."
        for kind, r in ours.items()
        if kind != "default"
    )
    if server_ram:
        summary += (
            f"\n- Milvus server process RSS: peak {server_ram[0]:.0f} MB, {server_ram[1]:.0f} MB at the end."
        )
    cmd = "python benchmarks/milvus_store.py " + " ".join(sys.argv[1:])
    body = (
        f"{HEADING}\n\n"
        f"Command: `{cmd}` ({datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs, load average {load:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end; contenders timed interleaved, {INTERLEAVE} queries "
        f"at a time, best of {a.rounds} rounds per query). n = {a.n:,} vectors of dim {DIM} from "
        f"`benchmarks/vectors.py` `make`, {len(queries)} queries, k = {K}; recall@10 against exact float32 "
        "search. "
        f"All stores are made by `retrieval.stores.create_store` and filled by `add()` in batches of "
        f"{ADD_BATCH} with a `save()` every {SAVE_EVERY} batches, as ingest does; build time ends when a "
        f"freshly opened store has answered a query. Queries one at a time through `Store.search`, BLAS and "
        f"OpenMP pinned to one thread ({env_note()}); Milvus Lite answers over gRPC from a server thread in "
        "the same process, the server (if any) over loopback; every Milvus search asks for "
        f"max({milvus_store.RERANK_FACTOR}k, k+{milvus_store.RERANK_EXTRA}) candidates and re-scores them "
        "exactly from their float32 vectors (one `get`), at Bounded consistency. RAM B/vec: growth of "
        "resident anonymous memory of a fresh process that opened the store and ran "
        f"{RAM_QUERIES} queries (the server: its process's RSS at the end).\n\n"
        f"{builds}\n\n{table}\n\n{summary}\n\n(total wall time {time.perf_counter() - t0:.0f} s)\n\n" + WHY
    )
    print(body, flush=True)
    if not a.no_write:
        write_section(body, a.output)


if __name__ == "__main__":
    main()
