"""One walked query of a large store, from its rotated row to its k results, in a single compiled call.

For a walked query, `VectorStore._compiled_search` made nine numpy calls and two compiled ones: the head
weights, the seed sample's scores and their best SEEDS (argpartition), the walk, a check that its slots are
live, the re-rank. Each numpy call costs 2-10 µs whatever its size, and on data that needs a small ef that
is as much as the walk: on `benchmarks/vectors.py` data at 100k, ef 32, the steps around the walk took
55 µs where the walk took 61 (one query repeated). Here they are loops in the same compiled function as
the walk and the re-rank (`walk._search`, `scan._rerank`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from retrieval.vectors.hnsw.scan import _rerank
from retrieval.vectors.hnsw.walk import _search


@njit(cache=True, nogil=True, fastmath=True)
def answer(
    graph_row,
    head_step,
    head_offset,
    seeds,
    seed_codes,
    n_seeds,
    offsets,
    flat,
    longest,
    head_codes,
    seen,
    mark,
    width,
    allowed,
    limit,
    through,
    least,
    slot_ids,
    tail_codes,
    tail_weights,
    bias,
    originals,
    query,
    n_rescore,
    k,
):
    """The best k slots for one query and their exact scores, best first; none where the walk reached fewer
    than k live slots (heavy deletes: the caller asks hnswlib), or where `limit` (> 0) stopped the walk or
    `least` kept it from starting.

    graph_row: the query's head coordinates (its `prepare_queries` graph row); head_step, head_offset: the
    int8 head codes' ranges (`HeadCodes`), so a slot's head score is codes[slot] · (row · step) + row ·
    offset; head_codes: their rows (`HeadCodes.rows`, padded to whole cache lines). seeds: a sample of
    live slots; seed_codes: their first columns of head codes (as many as it has), ranked to pick the best
    n_seeds to start from. The walk (`walk._search`) keeps `width` slots (only `allowed` ones where that
    holds a byte per slot: a filter; stepping onto those only, `through`), expands at most `limit` (0: any
    number) and marks what it visits in `seen` with `mark` (a slot already holding it is never visited);
    with a filter, it does not start where fewer than `least` of the n_seeds start slots are allowed (a
    folder away from the query: the walk would flood the query's own neighbourhood first; 0: it always
    starts). tail_codes, tail_weights, bias: the int8 tail and the query's pre-scaled tail weights
    (`prepare_queries`; unread where width <= n_rescore); the best n_rescore by head + tail are scored
    exactly against `originals` (`scan.rerank`)."""
    h = head_step.shape[0]
    weights = np.empty(h, dtype=np.float32)
    shift = np.float32(0.0)
    for d in range(h):
        weights[d] = graph_row[d] * head_step[d]
        shift += graph_row[d] * head_offset[d]
    starts = _best_seeds(seeds, seed_codes, weights, n_seeds)
    if least > 0:  # a filter: the query's best seeds say whether its neighbourhood is allowed at all
        near = 0
        for j in range(starts.shape[0]):
            near += allowed[starts[j]] != 0
        if near < least:
            return starts[:0], np.empty(0, dtype=np.float32)
    slots, scores, ended = _search(
        offsets, flat, longest, head_codes, weights, starts, width, seen, mark, allowed, limit, through
    )
    if not ended:
        return slots[:0], scores[:0]
    live = 0
    for j in range(slots.shape[0]):  # drop removed slots, in place
        if slot_ids[slots[j]] >= 0:
            slots[live] = slots[j]
            scores[live] = scores[j] + shift + bias
            live += 1
    if live < k:
        return slots[:0], scores[:0]
    return _rerank(
        slots[:live], scores[:live], tail_codes, tail_weights, originals, query, max(n_rescore, k), k
    )


@njit(cache=True, nogil=True, fastmath=True)
def _best_seeds(seeds, seed_codes, weights, n_seeds):
    """The n_seeds of `seeds` whose seed_codes rows score best against the leading `weights`."""
    count = min(n_seeds, seeds.shape[0])
    best_s = np.full(count, -np.inf, dtype=np.float32)  # ascending: best_s[0] is the worst kept
    best_n = np.zeros(count, dtype=np.int64)
    for r in range(seeds.shape[0]):
        s = np.float32(0.0)
        for d in range(seed_codes.shape[1]):
            s += np.float32(seed_codes[r, d]) * weights[d]
        if count == 0 or s <= best_s[0]:
            continue
        i = 0
        while i + 1 < count and best_s[i + 1] < s:  # insertion into the few kept
            best_s[i], best_n[i] = best_s[i + 1], best_n[i + 1]
            i += 1
        best_s[i], best_n[i] = s, seeds[r]
    return best_n
