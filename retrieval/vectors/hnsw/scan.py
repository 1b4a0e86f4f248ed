"""The filtered scan's two stages in one compiled pass (numba), for large stores.

numpy has no int8 dot product, so the numpy scan keeps its first stage as float32 (128 B per allowed row)
and pays a float32 copy of every row it passes to the second: at 10 % of 1M that is 12.8 MB read per query
(2.1 ms of a 4.7 ms query) and 1.1 ms of gather and cast. Here both stages read the int8 codes directly:
32 B per allowed row, and the second stage's rows in place (2.2 ms in all there).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from retrieval.vectors.hnsw.prefetch import prefetch_row

#: A scan of every row splits them among the cores past this size (its kernel releases the GIL): a scan is
#: bound by memory bandwidth per core, ~4.5 GB/s here, so 1M 444-dim CLIP-like rows take ~100 ms on one.
PARALLEL_BYTES = 8 << 20
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def all_scores(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """codes[r, :len(weights)] · weights for every row r of the int8 `codes` (`HeadCodes.rows`: longer rows),
    on every core for a large array."""
    count = 1 if codes.nbytes < PARALLEL_BYTES else cores()
    return np.concatenate(split(len(codes), count, lambda lo, hi: _lead_scores(codes[lo:hi], weights)))


def head_scores(codes: np.ndarray, slots: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """codes[slot, :len(weights)] · weights for each of `slots` (rows read at random, prefetched), on every
    core for many rows."""
    count = 1 if len(slots) * codes.shape[1] < PARALLEL_BYTES else cores()
    return np.concatenate(split(len(slots), count, lambda lo, hi: _head_scores(codes, slots[lo:hi], weights)))


def split(n: int, count: int, work: Callable[[int, int], np.ndarray]) -> list[np.ndarray]:
    """work(lo, hi) over `count` consecutive parts of range(n), on the scans' threads where count > 1 (the
    kernels release the GIL), in order."""
    if count <= 1:
        return [work(0, n)]
    bounds = np.linspace(0, n, count + 1).astype(np.int64).tolist()
    return list(threads(count).map(lambda i: work(bounds[i], bounds[i + 1]), range(count)))


def cores() -> int:
    """Cores a scan splits its rows among (at most 8)."""
    try:
        return min(len(os.sched_getaffinity(0)), 8)
    except AttributeError:  # not Linux
        return min(os.cpu_count() or 1, 8)


def threads(count: int) -> ThreadPoolExecutor:
    """The scans' shared pool of `count` threads (made on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(count, thread_name_prefix="retrieval-scan")
        return _pool


def two_stage(
    lead: np.ndarray,
    slots: np.ndarray,
    codes: np.ndarray,
    lead_weights: np.ndarray,
    weights: np.ndarray,
    keep: int,
    cands: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The best `cands` of the allowed `slots` by head score codes[slot] · weights, among the best `keep` by
    the lead score lead[row] · lead_weights, with those head scores.

    lead: (m, lead_dims) int8, row r the first head codes of slots[r]; codes: `HeadCodes.rows`, int8 rows
    at least as long as `weights`.
    The selections stay in numpy (argpartition): a heap in the kernel was slower, 4.9 against 2.2 ms at
    10 % of 1M."""
    if len(slots) > keep:
        first = _lead_scores(lead, lead_weights)
        slots = slots[np.argpartition(first, len(first) - keep)[len(first) - keep :]]
    scores = _head_scores(codes, slots, weights)
    if cands < len(scores):
        best = np.argpartition(scores, len(scores) - cands)[len(scores) - cands :]
        return slots[best], scores[best]
    return slots, scores


@njit(cache=True, nogil=True, fastmath=True)
def _lead_scores(lead, weights):
    """lead[r, :len(weights)] · weights for every row r (rows may be longer: `HeadCodes.rows`)."""
    out = np.empty(lead.shape[0], dtype=np.float32)
    for r in range(lead.shape[0]):
        s = np.float32(0.0)
        for d in range(weights.shape[0]):
            s += np.float32(lead[r, d]) * weights[d]
        out[r] = s
    return out


@njit(cache=True, nogil=True, fastmath=True)
def _head_scores(codes, slots, weights):
    out = np.empty(slots.shape[0], dtype=np.float32)
    ahead = min(8, slots.shape[0])
    for j in range(ahead):
        prefetch_row(codes, slots[j])
    for j in range(slots.shape[0]):
        if j + ahead < slots.shape[0]:
            prefetch_row(codes, slots[j + ahead])
        row = slots[j]
        s = np.float32(0.0)
        for d in range(weights.shape[0]):
            s += np.float32(codes[row, d]) * weights[d]
        out[j] = s
    return out


def rerank(
    slots: np.ndarray,
    head: np.ndarray,
    tail: np.ndarray,
    tail_weights: np.ndarray,
    originals: np.ndarray,
    query: np.ndarray,
    n_rescore: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The store's re-rank in one compiled pass: each candidate's head score plus its int8 tail score, then
    the best `n_rescore` of those scored exactly against their float32 `originals` rows, best k first. The
    same steps in numpy are ~10 calls a query: on the CLIP-like data at 100k, the same candidates, 25 → 15 µs
    at ef 16, 64 → 53 at 64, 120 → 98 at 640 (best of 5, identical results). With no more candidates
    than n_rescore the tail is never read (nor `tail_weights`, which may then be empty)."""
    return _rerank(slots, head, tail, tail_weights, originals, query, n_rescore, k)


@njit(cache=True, nogil=True, fastmath=True)
def _rerank(slots, head, tail, tail_weights, originals, query, n_rescore, k):
    c = slots.shape[0]
    if n_rescore < c:  # the best n_rescore by head + tail: above the n_rescore-th (a full sort cost more)
        total = np.empty(c, dtype=np.float32)
        ahead = min(8, c)
        for j in range(ahead):
            prefetch_row(tail, slots[j])
        for j in range(c):
            if j + ahead < c:
                prefetch_row(tail, slots[j + ahead])
            row = slots[j]
            s = head[j]
            for d in range(tail.shape[1]):
                s += np.float32(tail[row, d]) * tail_weights[d]
            total[j] = s
        bar = np.partition(total, c - n_rescore)[c - n_rescore]
        keep = np.empty(n_rescore, dtype=np.int64)
        m = 0
        for j in range(c):
            if total[j] > bar and m < n_rescore:
                keep[m] = j
                m += 1
        for j in range(c):  # then ties at the bar, as many as fit
            if total[j] == bar and m < n_rescore:
                keep[m] = j
                m += 1
    else:
        keep = np.arange(c)
    m = keep.shape[0]
    picked = np.empty(m, dtype=np.int64)
    for j in range(m):
        picked[j] = slots[keep[j]]
        prefetch_row(originals, picked[j])
    exact = np.empty(m, dtype=np.float32)
    for j in range(m):
        row = picked[j]
        s = np.float32(0.0)
        for d in range(query.shape[0]):
            s += originals[row, d] * query[d]
        exact[j] = s
    order = np.argsort(exact)[::-1][: min(k, m)]
    return picked[order], exact[order]
