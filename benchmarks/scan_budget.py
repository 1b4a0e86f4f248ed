"""How large a store the scan serves: its cost and recall at sizes no store is built for here.

    python benchmarks/scan_budget.py [--n 1000000 --n 3000000] [--queries 200] [--rounds 2] [--seed 7]
                                     [--no-write]

A text query (and every query of a store whose graph reaches its target at no ef) scans while one scan costs
at most SCAN_BYTES of int8 head rows (`signs.scan_reads`: every slot's sign bits, then the kept rows' heads).
A store of millions takes hours to build on these two cores, nearly all of it the graph, which a scan never
reads: so here the quantizer, the int8 head and tail codes and the signs are built as a store builds them
(`Quantizer.fit` on 50,000 vectors, `HeadCodes`, `Signs`), and each query runs the store's own scan
(`VectorStore._scan`) and re-rank (`scan.rerank`, the best 96 scored exactly, as a 1M store's save chose).
"signs" is the default scan, "head" the scan before the sign stage (every slot's head scored), interleaved in
blocks, each query's best time of `--rounds`. CLIP-like generator (benchmarks/clip_like.py); recall@10 against
the exact top-10 by float32 inner product. Rewrites "## Search: how large a store scans" of BENCHMARKS.md.

The script re-executes itself without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (they slow numpy on these
machines); tests never change them.
"""

from __future__ import annotations

import sys

from _common import env_note, interleaved_best_times, run_without_slow_numpy_env, write_section

if __name__ == "__main__":
    run_without_slow_numpy_env()

import argparse
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clip_like  # noqa: E402
import vectors  # noqa: E402

from retrieval.vectors.hnsw import scan, signs  # noqa: E402
from retrieval.vectors.hnsw.filtered import HeadCodes  # noqa: E402
from retrieval.vectors.hnsw.quantizer import Quantizer  # noqa: E402
from retrieval.vectors.hnsw.store import SCAN_BYTES, SCAN_CANDS, StoreParams, VectorStore  # noqa: E402

DIM, K = 512, 10
FIT = 50_000
RESCORE = 96
BLOCK = 65_536
WAYS = ("head", "signs")


class Rows:
    """The store's originals as its codes read them (`get`), from an array in RAM."""

    def __init__(self, base: np.ndarray) -> None:
        self.base = base

    def get(self, rows: np.ndarray) -> np.ndarray:
        return self.base[rows]


@dataclass
class Codes:
    """What `VectorStore._scan` reads of a store's state: its quantizer, slots and codes, no graph."""

    quantizer: Quantizer
    head: HeadCodes
    tail: np.ndarray
    signs: signs.Signs
    slot_ids: np.ndarray
    n_slots: int
    n_alive: int

    def signs_now(self) -> signs.Signs:
        return self.signs


def codes_of(base: np.ndarray) -> tuple[Codes, float]:
    """The store's codes of `base` (slot i holds vector i) and the seconds they took."""
    t = time.perf_counter()
    params = StoreParams()
    n = len(base)
    fit = np.sort(np.random.default_rng(n).choice(n, min(n, FIT), replace=False))
    quantizer = Quantizer.fit(base[fit], params.graph_dims, adapt=params.adapt_head)
    tail = np.empty((n, quantizer.tail_dims), dtype=np.int8)
    for lo in range(0, n, BLOCK):
        tail[lo : lo + BLOCK] = quantizer.encode(base[lo : lo + BLOCK])[1]
    head = HeadCodes.build(quantizer, Rows(base), n)  # type: ignore[arg-type]  # reads only `get`
    sign_rows = signs.Signs.build(head, tail, n)
    ids = np.arange(n, dtype=np.int64)
    return Codes(quantizer, head, tail, sign_rows, ids, n, n), time.perf_counter() - t


def way(name: str, st: Codes, base: np.ndarray, queries: np.ndarray) -> Callable[[int], np.ndarray]:
    """A search of the i-th query by the store's scan ("signs") or the one before it ("head")."""
    share, least = (signs.KEEP_SHARE, signs.KEEP_MIN) if name == "signs" else (1.0, 1 << 62)
    graph_q, weights, bias = st.quantizer.prepare_queries(queries)

    def search(i: int) -> np.ndarray:
        saved = signs.KEEP_SHARE, signs.KEEP_MIN
        signs.KEEP_SHARE, signs.KEEP_MIN = share, least
        try:
            slots, scores = VectorStore._scan(st, st.head, queries[i], graph_q[i], K, -1)  # type: ignore[arg-type]
        finally:
            signs.KEEP_SHARE, signs.KEEP_MIN = saved
        return scan.rerank(slots, scores + bias[i], st.tail, weights[i], base, queries[i], RESCORE, K)[0]

    return search


def measure(n: int, a: argparse.Namespace) -> tuple[list[tuple], str]:
    """Rows (n, queries, scan, recall, p50 ms, q/s) of both scans at n, and a note on the codes."""
    base, image, text = clip_like.make(n, DIM, a.queries, seed=a.seed)
    st, took = codes_of(base)
    q = st.quantizer
    reads = signs.scan_reads(n, n, q.head_dims, q.dim, 4 * SCAN_CANDS)
    note = (
        f"{n:,}: codes and signs in {took:.0f} s, head {q.head_dims} dims, a scan costs "
        f"{reads / SCAN_BYTES:.2f} of SCAN_BYTES ({'scans' if reads <= SCAN_BYTES else 'walks'})"
    )
    rows = []
    for kind, queries in (("text", text), ("image", image)):
        truth = vectors.exact_topk(base, queries, K)
        ways = [way(name, st, base, queries) for name in WAYS]
        for search in ways:
            search(0)  # compiled kernels loaded
        timed = interleaved_best_times(ways, [len(queries)] * 2, np.arange(len(queries)), K, a.rounds)
        for name, (lat, ids) in zip(WAYS, timed, strict=True):
            recall = vectors.recall_at_k(ids, truth, K)
            rows.append((n, kind, name, float(recall), float(np.median(lat)) * 1e3, len(queries) / lat.sum()))
        done = ", ".join(f"{r[2]} recall {r[3]:.4f} p50 {r[4]:.2f} ms" for r in rows[-2:])
        print(f"{n:,} {kind}: {done}", flush=True)
    return rows, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, action="append", help="collection size (repeatable)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    a = parser.parse_args()
    sizes = a.n or [1_000_000, 3_000_000]
    rows, notes = [], []
    for n in sizes:
        found, note = measure(n, a)
        rows += found
        notes.append(note)

    lines = [
        "| n | queries | scan | recall@10 | p50 ms | q/s | q/s ÷ head |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, kind, name, recall, p50, qps in rows:
        head_qps = next(r[5] for r in rows if r[:2] == (n, kind) and r[2] == "head")
        lines.append(
            f"| {n:,} | {kind} | {name} | {recall:.4f} | {p50:.2f} | {qps:.0f} | {qps / head_qps:.2f}× |"
        )
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    command = " ".join(f"--n {n}" for n in sizes)
    body = f"""## Search: how large a store scans

`python benchmarks/scan_budget.py {command} --queries {a.queries} --rounds {a.rounds} --seed {a.seed}`,
{datetime.date.today().isoformat()}; {env_note()}. A text query scans while one scan costs at most SCAN_BYTES
({SCAN_BYTES >> 20} MB) of int8 head rows, a sign row counting {signs.SIGN_COST}× its bytes (its popcounts
bound it, not memory); before the sign stage the bound was every slot's head bytes, ~1.15M CLIP-like
vectors. No graph is built (hours at these sizes here, and a scan never reads it): the store's codes and
signs are made as its build makes them and each query runs the store's own scan (`VectorStore._scan`) and
re-rank (the best {RESCORE} scored exactly, as a 1M store's save chose), one query per call, best of
{a.rounds}, both ways interleaved. "head" scores every slot's int8 head, "signs" (the default) every slot's
sign bits first, then the best max({signs.KEEP_MIN:,}, {signs.KEEP_SHARE:.0%} of n) on their head. The
times leave out what a store's `search` adds around its scan (the query's rotation, checks, the Python call):
"Search: the scan's sign stage" times a built store's whole search; compare the ratios across days.

{table}

{chr(10).join("- " + note for note in notes)}
"""
    if not a.no_write:
        write_section(body)


if __name__ == "__main__":
    main()
