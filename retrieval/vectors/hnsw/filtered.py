"""Filtered search in the default store: which way answers a search restricted to a set of allowed slots.

Four ways, chosen per search by the allowed set's size m among n live vectors (cost model below, constants
measured in BENCHMARKS.md, "Filtered search"):

* **exact**: score the m float32 originals (memory-mapped) directly; for small sets.
* **scan**: a two-stage scan of the allowed slots. Every slot has an int8 copy of its PCA head (`HeadCodes`,
  a byte per head coordinate, saved with each generation of a large store, else built from the originals
  on the first scan); an allowed set keeps the first LEAD_DIMS head coordinates of its slots (`Lead`,
  built once per set: int8 for the compiled scan of stores of COMPILED_MIN_N vectors or more,
  `scan.two_stage`, else float32 for numpy). A query scores every allowed slot on those, the best
  LEAD_KEEP·cands of them on their whole int8 head, and hands the best `cands` to the graph path's
  re-rank: int8 tail, then the best of those exactly from the originals.
* **graph**: for a large set in a large saved store, the unfiltered compiled search (`onepass`) with the
  filter applied inside its walk: every node steers it, only allowed ones are kept, at the unfiltered
  width, re-ranked in the same call. A query that does not start or gives up (a folder away from it:
  `graph_least`, GRAPH_LIMIT) walks again, through allowed nodes only, from the best of a sample of
  them (the same compiled call), or where that would cost more (`fallback`), scans.
* **post**: for a large set elsewhere, the unfiltered graph search made cands·n/m wide, kept to the
  allowed nodes (about `cands` of them where allowed vectors are as common near the query as in the
  store), then the same re-rank. A query that finds fewer than POST_KEEP·cands allowed (a folder away
  from the query) walks the graph through allowed nodes only (`walk.Level0`, compiled, over the saved
  graph file), or where that would cost more, scans. Without the compiled walk (a small store, or one
  with unsaved changes) the walk is hnswlib's own (`knn_query(filter=...)`, a Python call per node it
  meets). A set whose post-filtered queries often come up short probes first (PROBE) and skips the
  post-filter where it would.

Every way returns exact scores; only which allowed vectors are considered differs. A partitioned scan
(k-means over the heads) was measured and dropped (BENCHMARKS.md): on these vectors its recall needed
~30 % of the partitions visited, a fixed share of the allowed rows, O(m) like the scan.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.vectors.hnsw.originals import Originals
from retrieval.vectors.hnsw.quantizer import RANGE_MARGIN, Quantizer

if TYPE_CHECKING:  # numba loads only when a filtered search first needs it
    from retrieval.vectors.hnsw.walk import Level0

#: Relative cost of each way, in units of one float32 original scored (gather + dot product), fitted on
#: the forced-way tables at 100k and 1M (BENCHMARKS.md, "Filtered search"): the scan costs SCAN_ROW per
#: allowed row (SCAN_ROW_COMPILED for the compiled scan of large stores), the post-filtered graph search
#: POST_NODE per node it asks for (cands·n/m), both FIXED more for the re-rank.
SCAN_ROW = 0.04
SCAN_ROW_COMPILED = 0.012
POST_NODE = 4.8
FIXED = 150.0
#: A large saved store (the compiled walk at hand) walks instead of post-filtering ("graph"): the unfiltered
#: walk at the unfiltered width (`VectorStore.default_ef`), stepping through every node, keeping only allowed
#: ones (hnswlib's filtered rule), and re-ranked in the same compiled call. It expands about width·n/m
#: nodes, as a post-filter of width·n/m does, but re-ranks `width` rather than FILTER_EF candidates and
#: needs no wider search where allowed nodes are rarer near the query than in the store: it goes on until
#: it holds `width`. GRAPH_NODE per expansion expected, between the fits on the forced ways at 100k and 1M:
#: an expansion costs more against a scanned row in a larger store (its rows are further apart in memory).
#: At 100k (ef 128; ms a query, random set: 0.33 / 0.75 at a half / tenth of the store, against the scan's
#: 0.46 / 0.27 and a post-filter's 0.47 / 1.24) it fits 0.7; at 1M (ef 192: 0.87 / 2.51 against the
#: scan's 2.62 / 0.86) 1.8. A query away from a folder would flood its own, disallowed, neighbourhood
#: first (at 100k, a folder of half the store: the 90th percentile query expanded 7 times the expected,
#: the slowest 17): where fewer of its start slots (the best SEEDS of the generation's sample, ranked
#: anyway) are allowed than `graph_least` says, it does not start, and after GRAPH_LIMIT times the
#: expected expansions it gives up; either way it walks again through allowed nodes only, or scans
#: (`fallback`). The start check costs nothing, where the post-filter's probe cost ~40 µs at 100k.
GRAPH_NODE = 1.2
GRAPH_LIMIT = 4
#: A post-filtered query keeping fewer than POST_KEEP·cands allowed nodes walks the graph where that costs
#: less than the scan, else scans. The compiled walk keeps WALK_WIDTH·cands allowed nodes (1M, a folder of
#: half the store, the queries outside it: recall@10 0.953 with 1·cands, 0.970 with 1.5·, 0.973 with 2·;
#: the whole folder set, with the probe's narrower post-filter, interleaved, best of 3 rounds: 0.9825 /
#: 0.9830 / 0.9845 with 1.5· / 1.75· / 2·, at 0.67 / 0.64 / 0.61× an unfiltered search; single runs of
#: the benchmark scatter more than that, 0.48-0.59×), costs WALK_NODE per node kept, and starts from the
#: best SEEDS of SEED_SAMPLE allowed nodes drawn once per set. It needs allowed nodes dense enough to reach
#: through one disallowed one (WALK_MIN_SHARE of the store: at a 1 % random set it reached recall 0.67).
#: hnswlib's walk costs PY_WALK_NODE per node it expects to visit, cands·n/m.
POST_KEEP = 0.5
#: Once more than one in MISS_RATE post-filtered searches of a set has come up short (a folder: the queries
#: outside it), each first asks the graph for its PROBE nearest nodes (~0.2 ms at 1M, against ~1-2.5 ms
#: for the post-filter made 384 wide) and, where under PROBE_KEEP of the allowed share of them is allowed,
#: goes straight to the walk or scan. A set that never comes up short (a random half) never probes. At 1M,
#: a folder of half the store, 3 rounds: 0.62× unfiltered with PROBE_KEEP 0.5, 0.65× with 0.25 (fewer
#: queries that the post-filter would have served walk), 0.57-0.64× with 64 or 16 nodes; recall the same.
#: A probed query's post-filter is made as wide as the probed share says (POST_MARGIN times wider, at most
#: cands·n/m): 288 nodes instead of 384 inside a folder of half the store. There, 2 rounds: 0.66 / 0.57×
#: without it, 0.77 / 0.68× at margin 1, 0.80 / 0.71× at 1.25, 0.76 / 0.74× at 1.5; recall 0.9830 → 0.9825.
MISS_RATE = 10
PROBE = 32
PROBE_KEEP = 0.25
POST_MARGIN = 1.5
WALK_WIDTH = 1.75
WALK_NODE = 9.0
#: The same walk over the int8 codes and the links in RAM (a graph walk's miss in a large saved store):
#: at 100k, the queries outside a folder of half the store, 1.04 ms (recall@10 0.999) where the walk over
#: the graph file, after its probe, took 1.34 ms, and the scan 0.59 ms.
WALK_CODE_NODE = 7.0
WALK_MIN_SHARE = 0.05
SEED_SAMPLE = 1024
SEEDS = 16
PY_WALK_NODE = 2.7
#: The compiled walk and scan serve stores of COMPILED_MIN_N live vectors or more: the first use of each in
#: an install compiles it (~10 s, then cached on disk beside the module), which a small store, where
#: numpy and hnswlib take a few milliseconds, would never win back.
COMPILED_MIN_N = 50_000
#: The scan's first stage: LEAD_DIMS head coordinates per row (int8 compiled, float32 in numpy); its
#: second: the whole int8 head of the best LEAD_KEEP·cands rows.
LEAD_DIMS = 32
LEAD_KEEP = 16
#: Head codes of a store encoded from fewer than 2 rows span HEAD_RANGE root mean squares either side of 0.
HEAD_RANGE = 5.0
_BLOCK = 16384
#: Head code rows in RAM start on and fill whole cache lines of this many bytes (`HeadCodes`).
ROW_ALIGN = 64


def choose(m: int, n_slots: int, n_alive: int, cands: int, *, graph: bool, walk: int | None = None) -> str:
    """'exact', 'scan', 'post' or 'graph' for m allowed live vectors and `cands` candidates per query: the
    cheapest by the cost model above. The post-filtered search needs a graph and more allowed vectors than
    candidates; `walk`: the compiled filtered walk's width, where it is at hand (it then stands in for the
    post-filter, which explores as far for a wider re-rank)."""
    del n_slots
    costs = {"exact": float(m), "scan": scan_row(n_alive) * m + FIXED}
    if walk is not None and m > walk:
        costs["graph"] = GRAPH_NODE * graph_expansions(walk, m, n_alive) + FIXED
    elif graph and m > cands:
        costs["post"] = POST_NODE * cands * n_alive / m + FIXED
    return min(costs, key=costs.__getitem__)


def start_sample(slots: np.ndarray) -> np.ndarray:
    """At most SEED_SAMPLE of `slots` (or graph nodes), ascending, to start walks from: drawn from a seed of
    their count, so the same set gives the same sample in every process."""
    if len(slots) > SEED_SAMPLE:
        slots = np.random.default_rng(len(slots)).choice(slots, SEED_SAMPLE, replace=False)
    return np.sort(slots)


def graph_expansions(width: int, m: int, n_alive: int) -> float:
    """The expansions the compiled filtered walk expects to keep `width` of m allowed among n_alive live
    nodes: width·n/m (the allowed ones as common near the query as in the store)."""
    return width * n_alive / m


def graph_least(n_seeds: int, m: int, n_alive: int) -> int:
    """The fewest allowed of a query's n_seeds start slots for the compiled filtered walk to start: at least
    one, else PROBE_KEEP of the share allowed in the store (2 of 16 at half the store: a random half
    falls short in 17 queries in 65,536)."""
    return max(1, int(np.ceil(PROBE_KEEP * n_seeds * m / n_alive)))


def graph_limit(width: int, m: int, n_alive: int) -> int:
    """The expansions after which the compiled filtered walk gives up (GRAPH_LIMIT times those expected)."""
    return max(1, int(GRAPH_LIMIT * graph_expansions(width, m, n_alive)))


def post_width(cands: int, m: int, n_alive: int, near: float | None) -> int:
    """How many nodes a post-filtered search asks the graph for, to hold about `cands` allowed ones: as
    if allowed nodes were as common near the query as in the store (m of n_alive), or, where a probe
    found a share `near` of them allowed, as that says with POST_MARGIN to spare (never wider)."""
    share = m / n_alive
    if near is not None:
        share = max(share, min(1.0, near / POST_MARGIN))
    return min(n_alive, int(np.ceil(cands / share)))


def compiled(n_alive: int) -> bool:
    """Whether a store of `n_alive` vectors uses the compiled scan and walk (numba installed)."""
    return n_alive >= COMPILED_MIN_N and _have_numba()


def scan_row(n_alive: int) -> float:
    """The scan's cost per allowed row in a store of `n_alive` vectors."""
    return SCAN_ROW_COMPILED if compiled(n_alive) else SCAN_ROW


@functools.cache
def _have_numba() -> bool:
    """numba imports (~0.5 s, once per process, and only for a large store's filtered search): an install
    whose numba does not load (say, built for another numpy) keeps to numpy and hnswlib."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def fallback(m: int, n_alive: int, cands: int, *, compiled: bool, codes: bool = False) -> str:
    """'walk' or 'scan' for a post-filtered query that found too few allowed nodes, by the cost model above;
    `compiled`: whether the compiled walk is at hand (else hnswlib's); `codes`: the one over int8 codes and
    links in RAM (`walk.Links`, else the graph file's, `walk.Level0`)."""
    scan = scan_row(n_alive) * m
    if compiled:
        node = WALK_CODE_NODE if codes else WALK_NODE
        walk = node * WALK_WIDTH * cands if m >= WALK_MIN_SHARE * n_alive else float("inf")
    else:
        walk = PY_WALK_NODE * cands * n_alive / m
    return "walk" if walk < scan else "scan"


@dataclass(eq=False)
class HeadCodes:
    """int8 PCA head of every slot, for scans and the compiled search: row s holds slot s's head coordinates
    less `offset`, over `step`, rounded, each coordinate's range taken from a sample of the rows first
    encoded (widened by the quantizer's margin, as its tail's; later rows outside it are clipped). The
    rotation is uncentred, so the leading coordinates (the data's shared direction) sit far from 0 and vary
    little, and clusters put coordinates far from the rest: a range of ±5 root mean squares around 0
    wasted codes on the first and clipped the second (CLIP-like data at 100k, image queries: score error
    std 0.0021 against 0.00052 from the observed range; compiled search recall@10 0.65 against 0.92).

    In RAM each row fills whole 64-byte cache lines, starting on one (`rows`, zero past the head): a walk
    reads rows at random, and a 444-byte row laid end to end spans 8 lines where 7 hold it (the walk at
    100k, CLIP-like data, ef 128: 523 against 491 µs a query). Kernels take `rows` and loop over their
    weights' length; `codes` is the same memory without the padding. The file holds rows unpadded."""

    quantizer: Quantizer
    step: np.ndarray  # (head_dims,) float32
    offset: np.ndarray  # (head_dims,) float32
    rows: np.ndarray  # (n, ROW_ALIGN multiple >= head_dims) int8, C order, first row on a line

    @property
    def codes(self) -> np.ndarray:
        """(n, head_dims) int8: the codes without the padding (a strided view of `rows`)."""
        return self.rows[:, : self.quantizer.head_dims]

    @classmethod
    def build(cls, quantizer: Quantizer, originals: Originals, n_slots: int) -> HeadCodes:
        h = quantizer.head_dims
        basis = quantizer.basis[:, :h]
        # the ranges from a spread of slots, not the first ones: those may all be one folder's photos
        rows = np.sort(np.random.default_rng(n_slots).choice(n_slots, min(n_slots, _BLOCK), replace=False))
        first = originals.get(rows) @ basis if n_slots else np.zeros((0, h))
        if len(first) > 1:
            lo, hi = first.min(axis=0), first.max(axis=0)
        else:
            hi = HEAD_RANGE * np.sqrt(np.maximum(quantizer.energy[:h], 0.0))
            lo = -hi
        offset = ((hi + lo) / 2).astype(np.float32)
        step = (np.maximum(hi - lo, 1e-6) * (1 + 2 * RANGE_MARGIN) / 254.0).astype(np.float32)
        out = cls(quantizer, step, offset, line_rows(0, h))
        out.extend(originals, n_slots)
        return out

    def extend(self, originals: Originals, n_slots: int) -> None:
        """Encode the slots added since the last call (removed slots are simply never asked for)."""
        start = len(self.rows)
        if n_slots <= start:
            return
        h = self.quantizer.head_dims
        grown = line_rows(n_slots, h)
        grown[:start] = self.rows
        basis = self.quantizer.basis[:, :h]
        for lo in range(start, n_slots, _BLOCK):
            hi = min(lo + _BLOCK, n_slots)
            head = originals.get(np.arange(lo, hi)) @ basis
            grown[lo:hi, :h] = np.clip(np.rint((head - self.offset) / self.step), -127, 127).astype(np.int8)
        self.rows = grown

    def parts(self, n_slots: int) -> Iterator[memoryview]:
        """What `read` reads back, as the bytes of one file, a block at a time (no copy of every row at
        once): step and offset, then the codes of the first `n_slots` slots, unpadded."""
        yield self.step.data.cast("B")
        yield self.offset.data.cast("B")
        for lo in range(0, n_slots, _BLOCK):
            yield np.ascontiguousarray(self.codes[lo : min(lo + _BLOCK, n_slots)]).data.cast("B")

    @classmethod
    def read(cls, quantizer: Quantizer, path: Path, n_slots: int) -> HeadCodes:
        """Read back a file that `parts` wrote, straight into padded rows (a block at a time).

        Raises:
            ValueError: its length is not that of `n_slots` slots of this quantizer's head, or its ranges
                are not finite and positive.
        """
        h = quantizer.head_dims
        size = path.stat().st_size
        if size != 8 * h + n_slots * h:
            raise ValueError(f"{size} bytes, expected {8 * h + n_slots * h}")
        rows = line_rows(n_slots, h)
        with open(path, "rb") as f:
            ranges = np.frombuffer(f.read(8 * h), dtype=np.float32)
            if not (np.isfinite(ranges).all() and (ranges[:h] > 0).all()):
                raise ValueError("its code ranges are not finite and positive")
            block = np.empty((min(n_slots, _BLOCK), h), dtype=np.int8)
            for lo in range(0, n_slots, _BLOCK):
                part = block[: min(_BLOCK, n_slots - lo)]
                if f.readinto(part.data.cast("B")) != part.nbytes:
                    raise ValueError("it ended early")
                rows[lo : lo + len(part), :h] = part
        return cls(quantizer, ranges[:h].copy(), ranges[h:].copy(), rows)

    def weights(self, graph_query: np.ndarray) -> tuple[np.ndarray, float]:
        """For one query's graph row: (w, shift) such that a slot's head score is codes[slot] · w + shift."""
        head = graph_query[: self.quantizer.head_dims]
        return np.ascontiguousarray(head * self.step), float(head @ self.offset)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes


def line_rows(n: int, width: int) -> np.ndarray:
    """Zeroed (n, width rounded up to ROW_ALIGN) int8 rows, the first starting on a ROW_ALIGN boundary."""
    padded = -(-max(width, 1) // ROW_ALIGN) * ROW_ALIGN
    buffer = np.zeros(n * padded + ROW_ALIGN, dtype=np.int8)
    start = -buffer.ctypes.data % ROW_ALIGN
    return buffer[start : start + n * padded].reshape(n, padded)


@dataclass(eq=False)
class Lead:
    """An allowed set laid out for two-stage scans: its slots and the first LEAD_DIMS head coordinates of
    each: as int8 codes for the compiled scan (`scan.two_stage`), else decoded to float32 (numpy has no
    int8 dot product)."""

    head: HeadCodes
    slots: np.ndarray  # (m,) int64
    lead: np.ndarray  # (m, lead_dims) int8 where compiled, else float32

    @property
    def compiled(self) -> bool:
        return self.lead.dtype == np.int8

    @classmethod
    def build(cls, head: HeadCodes, slots: np.ndarray, *, compiled: bool) -> Lead:
        dims = min(LEAD_DIMS, head.quantizer.head_dims)
        lead = np.empty((len(slots), dims), dtype=np.int8 if compiled else np.float32)
        for lo in range(0, len(slots), _BLOCK):
            part = head.codes[slots[lo : lo + _BLOCK], :dims]
            lead[lo : lo + _BLOCK] = (
                part if compiled else part.astype(np.float32) * head.step[:dims] + head.offset[:dims]
            )
        return cls(head, slots, lead)

    def candidates(self, graph_query: np.ndarray, cands: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `cands` slots by head score q_head·x_head among the best LEAD_KEEP·cands by the lead
        coordinates' score, and those head scores, for one query (its graph query row)."""
        head = self.head
        slots = self.slots
        keep = LEAD_KEEP * cands
        weights, shift = head.weights(graph_query)
        if self.compiled:
            from retrieval.vectors.hnsw import scan

            dims = self.lead.shape[1]
            found, scores = scan.two_stage(self.lead, slots, head.rows, weights[:dims], weights, keep, cands)
            return found, scores + shift
        if len(slots) > keep:
            first = self.lead @ graph_query[: self.lead.shape[1]]
            slots = slots[np.argpartition(first, len(first) - keep)[len(first) - keep :]]
        scores = head.codes.take(slots, axis=0).astype(np.float32) @ weights + shift
        if cands < len(scores):
            best = np.argpartition(scores, len(scores) - cands)[len(scores) - cands :]
            return slots[best], scores[best]
        return slots, scores

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes + self.lead.nbytes


@dataclass(eq=False)
class WalkSet:
    """An allowed set laid out for the compiled walk over one saved graph: a byte per graph node (1 where
    allowed) and a fixed random sample of its nodes, with their graph vectors, to start walks from."""

    level0: Level0
    allowed: np.ndarray  # (nodes,) uint8
    sample: np.ndarray  # (≤ SEED_SAMPLE,) node numbers
    sample_vectors: np.ndarray  # (len(sample), graph_dims) float32

    @classmethod
    def build(cls, level0: Level0, mask: bytes, slots: np.ndarray) -> WalkSet:
        """For the allowed `slots` (ascending) and their `mask` (a byte per slot)."""
        allowed = np.frombuffer(mask, dtype=np.uint8)[level0.slots]
        nodes = level0.nodes[slots]
        nodes = start_sample(nodes[nodes >= 0])
        return cls(level0, allowed, nodes, level0.vectors(nodes))

    def candidates(self, graph_query: np.ndarray, cands: int) -> tuple[np.ndarray, np.ndarray]:
        """The allowed slots the walk keeps for one query (WALK_WIDTH·cands of them where reachable) and
        their head scores minus 1, like the post-filtered search's."""
        if not len(self.sample):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        first = self.sample_vectors @ graph_query
        seeds = self.sample[np.argsort(first)[-SEEDS:]]
        slots, scores = self.level0.walk(self.allowed, graph_query, seeds, int(WALK_WIDTH * cands))
        return slots, scores - 1.0
