"""Filtered search in the default store: recall@10 and queries/s at every selectivity, vs unfiltered and naive.

    python benchmarks/filtered_search.py [--n 1000000] [--queries 300] [--rounds 2] [--seed 0] [--no-write]
                                         [--build-only]

DRAFT: the build-and-cache part only.
"""

from __future__ import annotations

import sys

from _common import run_without_slow_numpy_env

if __name__ == "__main__":
    run_without_slow_numpy_env({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import vectors  # noqa: E402
from search import DIM, build_store  # noqa: E402

from retrieval.vectors.hnsw.store import StoreParams  # noqa: E402

CACHE = Path.home() / ".cache" / "retrieval-bench"
CACHE_QUERIES = 1000  # queries kept with the cached store; a run uses the first --queries of them


def cached_store(n: int, seed: int, params: StoreParams) -> Path:
    """The folder of a store of `n` benchmark vectors (ids 0..n-1), with its queries and clusters beside it:
    built once (a 1M store takes many minutes), then reused while n, seed and the store's settings match."""
    folder = CACHE / f"filtered-{n}-seed{seed}"
    meta = {"n": n, "seed": seed, "dim": DIM, "queries": CACHE_QUERIES, "params": params.to_dict()}
    done = folder / "meta.json"
    if done.exists():
        recorded = json.loads(done.read_text())
        if {key: recorded.get(key) for key in meta} == meta:
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    t = time.perf_counter()
    base, queries, clusters = vectors.make_with_clusters(n, DIM, CACHE_QUERIES, seed=seed)
    np.save(partial / "queries.npy", queries)
    np.save(partial / "clusters.npy", clusters)
    build_s = build_store(base, partial / "store", params)
    del base
    meta["build_s"] = round(build_s, 1)
    meta["total_s"] = round(time.perf_counter() - t, 1)
    (partial / "meta.json").write_text(json.dumps(meta))
    partial.rename(folder)
    print(f"built {folder} in {meta['total_s']:.0f} s", file=sys.stderr, flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args()
    cached_store(a.n, a.seed, StoreParams())


if __name__ == "__main__":
    main()
