"""A filtered walk over the bottom layer of a saved hnswlib graph, compiled with numba.

hnswlib's own filtered walk (`knn_query(filter=...)`) follows every node better than the worst allowed result
found so far, allowed or not. For a query outside a folder (its neighbourhood disallowed) that floods the
query's own cluster before it reaches the folder: ~15,000 nodes scored per query at 1M, 14 ms, whether the
filter is a Python call or compiled (measured both ways, BENCHMARKS.md "Filtered search"). This walk starts
inside the allowed set (the best of a sample of it) and moves only through allowed nodes, looking through a
disallowed neighbour to its allowed neighbours (two hops, as ACORN does), so it scores about as many nodes as
an unfiltered search of the same width: ~6,000 keeping 384, 2.9 ms with the loads prefetched.

The graph is read from its file, memory-mapped: hnswlib keeps its memory to itself, and the file of a
generation is the graph as loaded (a store with unsaved changes does not walk; see `VectorStore`). An
hnswlib index file is a fixed header, then one record per node in hnswlib's internal order: link count
(uint16), 2 flag bytes, `max_m0` links (uint32 internal ids), the vector (float32), the label (uint64: here
the slot), then the upper layers, which this walk does not need.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from retrieval.vectors.hnsw.prefetch import prefetch as _prefetch
from retrieval.vectors.hnsw.prefetch import prefetch_row, prefetch_span

_HEADER = struct.Struct("<QQQQQQiIQQQdQ")
#: `_search`'s `allowed` for an unfiltered walk: no byte per slot, every slot kept.
EVERY = np.empty(0, dtype=np.uint8)
EVERY.flags.writeable = False  # the type of a filter read from bytes: one compiled walk serves both


@dataclass(eq=False)
class Links:
    """The bottom layer of a graph with nodes numbered by slot, in RAM: what an unfiltered search walks,
    scoring each node on its int8 head codes instead of the graph file's float32 vectors, so that a reader
    holds about one byte per dimension plus the links, not hnswlib's whole index. Packed row after row (4
    bytes a link, 8 a slot): nodes hold about half the links hnswlib makes room for (CLIP-like data at
    100k, m 20: 21.8 of 40), so a table of max_links per slot was 164 bytes a vector where this is 108."""

    offsets: np.ndarray  # (n_slots + 1,) int64: slot s links to flat[offsets[s] : offsets[s + 1]]
    flat: np.ndarray  # (links,) int32: the linked slots
    longest: int  # links of the slot that has most

    def of(self, slot: int) -> np.ndarray:
        """The slots `slot` links to."""
        return self.flat[self.offsets[slot] : self.offsets[slot + 1]]

    @property
    def counts(self) -> np.ndarray:
        """Links of each slot (0: no node)."""
        return np.diff(self.offsets)

    def search(
        self, codes: np.ndarray, weights: np.ndarray, seeds: np.ndarray, width: int, hidden: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best `width` slots a best-first walk from `seeds` reaches, by codes[slot] · weights, with those
        scores; `codes`: (n_slots, >= len(weights)) int8 rows (`HeadCodes.rows`: read as far as `weights`
        goes). Slot `hidden` (if >= 0) is never visited: marked seen first."""
        seen, mark = self.marks(hidden)
        slots, scores, _ = _search(
            self.offsets, self.flat, self.longest, codes, weights, seeds, width, seen, mark, EVERY, 0, False
        )
        return slots, scores

    def marks(self, hidden: int = -1) -> tuple[np.ndarray, int]:
        """Visited marks for one walk on this thread (`_marks`), slot `hidden` (if >= 0) marked already."""
        seen, mark = _marks(len(self.offsets) - 1)
        if hidden >= 0:
            seen[hidden] = mark
        return seen, mark

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.flat.nbytes


@dataclass(eq=False)
class Level0:
    """The bottom layer of an hnswlib graph file: each node's links and vector (views of one memory map), the
    slot of each node, and the node of each slot (-1 where none)."""

    words: np.ndarray  # (count * stride,) uint32: the records, word by word
    values: np.ndarray  # the same memory as float32
    stride: int  # words per record
    vector_at: int  # word offset of the vector in a record
    dims: int
    max_links: int  # links per record
    slots: np.ndarray  # (count,) int64
    nodes: np.ndarray  # (n_slots,) int64

    @classmethod
    def open(cls, path: Path, dims: int, n_slots: int) -> Level0 | None:
        """Map `path`; None where it is not an hnswlib file of `dims`-dim vectors whose labels are slots."""
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return None
        (
            offset0,
            _capacity,
            count,
            size,
            label_at,
            vector_at,
            _level,
            _entry,
            _max_m,
            max_m0,
            _m,
            _mult,
            _ef,
        ) = _HEADER.unpack(head)
        if (
            count == 0
            or offset0 != 0
            or vector_at != 4 + 4 * max_m0
            or label_at != vector_at + 4 * dims
            or size != label_at + 8
            or path.stat().st_size < _HEADER.size + count * size
        ):
            return None
        mapped = np.memmap(path, dtype=np.uint32, mode="r", offset=_HEADER.size, shape=(count * size // 4,))
        words = np.asarray(mapped)  # a plain array over the map: numba takes it
        stride = size // 4
        labels = words.reshape(count, stride)[:, label_at // 4 : label_at // 4 + 2]
        slots = np.ascontiguousarray(labels).view(np.uint64).reshape(-1).astype(np.int64)
        if slots.min() < 0 or slots.max() >= n_slots:
            return None
        nodes = np.full(n_slots, -1, dtype=np.int64)
        nodes[slots] = np.arange(count, dtype=np.int64)
        return cls(words, words.view(np.float32), stride, vector_at // 4, dims, max_m0, slots, nodes)

    def vectors(self, nodes: np.ndarray) -> np.ndarray:
        """The graph vectors of `nodes`, (len, dims) float32."""
        rows = self.values.reshape(-1, self.stride)
        return rows[nodes, self.vector_at : self.vector_at + self.dims]

    def links(self, n_slots: int) -> Links:
        """The bottom layer's links renumbered by slot, copied out of the map (see `Links`).

        Raises:
            ValueError: a link names a node past the file's count.
        """
        offsets = np.zeros(n_slots + 1, dtype=np.int64)
        _count_links(self.words, self.stride, self.max_links, self.slots, offsets)
        np.cumsum(offsets, out=offsets)
        flat = np.empty(int(offsets[-1]), dtype=np.int32)
        # compiled, in place: numpy's temporaries for this (int64 per link) outgrew the links themselves
        if not _fill_links(self.words, self.stride, self.max_links, self.slots, offsets, flat):
            raise ValueError("a link names a node past the file's count")
        return Links(offsets, flat, int(np.diff(offsets).max(initial=0)))

    def walk(
        self, allowed: np.ndarray, query: np.ndarray, seeds: np.ndarray, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best `width` allowed nodes the walk reaches from `seeds` (allowed nodes), as slots, with their
        graph scores (query · vector). `allowed`: one uint8 per node."""
        nodes, scores = _walk(
            self.words, self.values, self.stride, self.vector_at, self.max_links, allowed, query, seeds, width
        )
        return self.slots[nodes], scores


@njit(cache=True, nogil=True, fastmath=True)
def _dot(values, at, query):
    s = np.float32(0.0)
    for d in range(query.shape[0]):
        s += values[at + d] * query[d]
    return s


@njit(cache=True, nogil=True)
def _sift_up(scores, nodes, i, sign):
    """Heap order by sign * score, largest first, after a push at i."""
    while i > 0:
        p = (i - 1) >> 1
        if sign * scores[p] >= sign * scores[i]:
            break
        scores[p], scores[i] = scores[i], scores[p]
        nodes[p], nodes[i] = nodes[i], nodes[p]
        i = p


@njit(cache=True, nogil=True)
def _pop(scores, nodes, n, sign):
    """Drop the top of a heap of n; returns n - 1."""
    n -= 1
    scores[0], nodes[0] = scores[n], nodes[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and sign * scores[c + 1] > sign * scores[c]:
            c += 1
        if sign * scores[i] >= sign * scores[c]:
            break
        scores[c], scores[i] = scores[i], scores[c]
        nodes[c], nodes[i] = nodes[i], nodes[c]
        i = c
    return n


@njit(cache=True, nogil=True)
def _offer(node, score, todo_s, todo_n, n_todo, best_s, best_n, n_best, width):
    """Keep a scored node if it is among the best `width` so far, and queue it for expansion; returns the new
    (n_todo, n_best). The queue must have room (`_room`), and callers test `score` against the worst kept
    first. Both for speed: when this returned the queue's arrays and made the test itself, calls for every
    scored node cost more than the walk's own work (the walk at ef 16-64, 100k: 37 → 14 µs, 95 → 37)."""
    if n_best >= width and score <= best_s[0]:
        return n_todo, n_best
    n_todo = _queue(node, score, todo_s, todo_n, n_todo)
    best_s[n_best], best_n[n_best] = score, node
    _sift_up(best_s, best_n, n_best, -1.0)
    n_best += 1
    if n_best > width:
        n_best = _pop(best_s, best_n, n_best, -1.0)
    return n_todo, n_best


@njit(cache=True, nogil=True)
def _queue(node, score, todo_s, todo_n, n_todo):
    """Queue a scored node for expansion (the queue must have room); returns the new n_todo."""
    todo_s[n_todo], todo_n[n_todo] = score, node
    _sift_up(todo_s, todo_n, n_todo, 1.0)
    return n_todo + 1


@njit(cache=True, nogil=True)
def _room(todo_s, todo_n, n_todo):
    """The full queue's arrays, twice as long (callers test that it is full: rare, and no call otherwise)."""
    grown_s = np.empty(2 * n_todo, dtype=np.float32)
    grown_n = np.empty(2 * n_todo, dtype=np.int64)
    grown_s[:n_todo] = todo_s[:n_todo]
    grown_n[:n_todo] = todo_n[:n_todo]
    return grown_s, grown_n


@njit(cache=True, nogil=True)
def _walk(words, values, stride, vector_at, max_links, allowed, query, seeds, width):
    """Best-first search over allowed nodes: a max-heap of nodes to expand, a min-heap of the best `width`
    found; it stops when the best node left to expand scores below the worst kept (hnswlib's rule). Each
    expansion first collects the nodes to score, then asks for their vectors (prefetch), then scores them:
    the loads overlap instead of waiting one by one (a random 892-byte row: 440 ns alone, 230 prefetched)."""
    seen = np.zeros(allowed.shape[0], dtype=np.uint8)
    todo_s = np.empty(1024, dtype=np.float32)
    todo_n = np.empty(1024, dtype=np.int64)
    best_s = np.empty(width + 1, dtype=np.float32)
    best_n = np.empty(width + 1, dtype=np.int64)
    batch = np.empty(max_links * (max_links + 1), dtype=np.int64)
    through = np.empty(max_links, dtype=np.int64)
    n_todo, n_best = 0, 0
    for t in range(seeds.shape[0]):
        u = seeds[t]
        if seen[u] or not allowed[u]:
            continue
        seen[u] = 1
        score = _dot(values, u * stride + vector_at, query)
        if n_todo == todo_s.shape[0]:
            todo_s, todo_n = _room(todo_s, todo_n, n_todo)
        n_todo, n_best = _offer(u, score, todo_s, todo_n, n_todo, best_s, best_n, n_best, width)
    while n_todo > 0 and not (n_best >= width and todo_s[0] < best_s[0]):
        base = todo_n[0] * stride
        n_todo = _pop(todo_s, todo_n, n_todo, 1.0)
        n_batch, n_through = 0, 0
        for j in range(words[base] & 0xFFFF):
            u = np.int64(words[base + 1 + j])
            if seen[u]:
                continue
            seen[u] = 1
            if allowed[u]:
                batch[n_batch] = u
                n_batch += 1
            else:  # a disallowed neighbour: look through it to its allowed neighbours
                through[n_through] = u
                n_through += 1
                _prefetch(words, u * stride)  # type: ignore[call-arg]  # numba supplies typingctx
        for j in range(n_through):
            at = through[j] * stride
            for h in range(words[at] & 0xFFFF):
                w = np.int64(words[at + 1 + h])
                if seen[w] or not allowed[w]:
                    continue
                seen[w] = 1
                batch[n_batch] = w
                n_batch += 1
        for j in range(n_batch):
            prefetch_span(values, batch[j] * stride + vector_at, query.shape[0])  # records start mid-line
        for j in range(n_batch):
            score = _dot(values, batch[j] * stride + vector_at, query)
            if n_best >= width and score <= best_s[0]:
                continue
            if n_todo == todo_s.shape[0]:
                todo_s, todo_n = _room(todo_s, todo_n, n_todo)
            n_todo, n_best = _offer(batch[j], score, todo_s, todo_n, n_todo, best_s, best_n, n_best, width)
    return best_n[:n_best].copy(), best_s[:n_best].copy()


@njit(cache=True, nogil=True, fastmath=True)
def _code_dot(codes, row, weights):
    s = np.float32(0.0)
    for d in range(weights.shape[0]):
        s += np.float32(codes[row, d]) * weights[d]
    return s


_threads = threading.local()


def _marks(n: int) -> tuple[np.ndarray, int]:
    """This thread's visited marks for a walk over n slots and the mark of this walk (hnswlib's visited
    list): a slot is seen when it holds the mark, so no walk clears n bytes (at 1M, fresh zeroed pages
    cost ~0.1 ms a query). Per thread: walks release the GIL and may run side by side."""
    seen = getattr(_threads, "seen", None)
    mark = getattr(_threads, "mark", 0) + 1
    if seen is None or len(seen) != n or mark > 0xFFFF:
        seen, mark = np.zeros(n, dtype=np.uint16), 1
        _threads.seen = seen
    _threads.mark = mark
    return seen, mark


@njit(cache=True, nogil=True)
def _search(offsets, flat, longest, codes, weights, seeds, width, seen, mark, allowed, limit, through):
    """The best-first walk (as `_walk`, hnswlib's stopping rule) over slot-numbered links, scoring int8 code
    rows; each expansion prefetches the rows it is about to score. A slot is seen where `seen` holds `mark`.

    `allowed`: one byte per slot, or empty for all. Where given, every node still steers the walk but only
    allowed ones are kept (hnswlib's filtered rule), so the walk goes on until it holds `width` allowed
    nodes: about width·n/m expansions for m allowed of n spread like the rest, far more for a query whose
    neighbourhood is disallowed. With `through`, it steps onto allowed nodes only and looks through a
    disallowed neighbour to its allowed neighbours instead (as `_walk`: for such a query, from seeds
    inside the allowed set). `limit` (> 0) stops it after that many expansions. Returns the kept slots,
    their scores and whether the walk ended by the rule (not by `limit`)."""
    todo_s = np.empty(1024, dtype=np.float32)
    todo_n = np.empty(1024, dtype=np.int64)
    best_s = np.empty(width + 1, dtype=np.float32)
    best_n = np.empty(width + 1, dtype=np.int64)
    longest = max(longest, 1)
    # the nodes one expansion scores: its links (and, `through`, their links)
    batch = np.empty(longest * (longest + 1) if through else longest, dtype=np.int64)
    beyond = np.empty(longest if through else 0, dtype=np.int64)  # its disallowed links, to look through
    every = allowed.shape[0] == 0
    n_todo, n_best, expanded = 0, 0, 0
    for t in range(seeds.shape[0]):
        u = seeds[t]
        if seen[u] == mark:
            continue
        seen[u] = mark
        if n_todo == todo_s.shape[0]:
            todo_s, todo_n = _room(todo_s, todo_n, n_todo)
        score = _code_dot(codes, u, weights)
        if every or allowed[u]:
            n_todo, n_best = _offer(u, score, todo_s, todo_n, n_todo, best_s, best_n, n_best, width)
        elif not through:
            n_todo = _queue(u, score, todo_s, todo_n, n_todo)
    while n_todo > 0 and not (n_best >= width and todo_s[0] < best_s[0]):
        if expanded == limit > 0:
            return best_n[:n_best].copy(), best_s[:n_best].copy(), False
        expanded += 1
        v = todo_n[0]
        n_todo = _pop(todo_s, todo_n, n_todo, 1.0)
        n_batch, n_beyond = 0, 0
        for j in range(offsets[v], offsets[v + 1]):
            u = np.int64(flat[j])
            if seen[u] == mark:
                continue
            seen[u] = mark
            if through and not allowed[u]:
                beyond[n_beyond] = u
                n_beyond += 1
                _prefetch(flat, offsets[u])  # type: ignore[call-arg]  # numba supplies typingctx
                continue
            batch[n_batch] = u
            n_batch += 1
            prefetch_row(codes, u)
        for j in range(n_beyond):
            w0 = beyond[j]
            for h in range(offsets[w0], offsets[w0 + 1]):
                w = np.int64(flat[h])
                if seen[w] == mark or not allowed[w]:
                    continue
                seen[w] = mark
                batch[n_batch] = w
                n_batch += 1
                prefetch_row(codes, w)
        for j in range(n_batch):
            u = batch[j]
            score = _code_dot(codes, u, weights)
            if n_best >= width and score <= best_s[0]:  # no call for the many that are not kept (`_offer`)
                continue
            if n_todo == todo_s.shape[0]:
                todo_s, todo_n = _room(todo_s, todo_n, n_todo)
            if every or allowed[u]:
                n_todo, n_best = _offer(u, score, todo_s, todo_n, n_todo, best_s, best_n, n_best, width)
            else:
                n_todo = _queue(u, score, todo_s, todo_n, n_todo)
            _prefetch(flat, offsets[u])  # type: ignore[call-arg]  # queued: its links are read when expanded
    return best_n[:n_best].copy(), best_s[:n_best].copy(), True


@njit(cache=True, nogil=True)
def _count_links(words, stride, max_links, slots, offsets):
    """offsets[slot + 1] = the links of the node holding slot (0 where none), before their running sum."""
    for v in range(slots.shape[0]):
        offsets[slots[v] + 1] = min(np.int64(words[v * stride] & 0xFFFF), max_links)


@njit(cache=True, nogil=True)
def _fill_links(words, stride, max_links, slots, offsets, flat):
    """Copy each node's links into its slot's row, as slots; False where a link names no node. A row takes
    at most the room its slot was given (two nodes of one slot cannot write past it)."""
    nodes = slots.shape[0]
    for v in range(nodes):
        base = v * stride
        row = slots[v]
        at = offsets[row]
        count = min(np.int64(words[base] & 0xFFFF), max_links, offsets[row + 1] - at)
        for j in range(count):
            u = np.int64(words[base + 1 + j])
            if u >= nodes:
                return False
            flat[at + j] = slots[u]
    return True
