"""Filtered search in the default store: which way answers a search restricted to a set of allowed slots.

Three ways, chosen per search by the allowed set's size m among n live vectors (cost model below, constants
measured in BENCHMARKS.md, "Filtered search"):

* **exact**: score the m float32 originals (memory-mapped) directly; for small sets.
* **scan**: a two-stage scan of the allowed slots. Every slot has an int8 copy of its PCA head (`HeadCodes`,
  ~1/18 of the bytes of an original, built from the originals on the first scan and kept with the
  generation); an allowed set keeps the first LEAD_DIMS head coordinates of its slots as float32 (`Lead`,
  built once per set). A query scores every allowed slot on those, the best LEAD_KEEP·cands of them on
  their whole int8 head, and hands the best `cands` to the graph path's re-rank: int8 tail, then the best
  of those exactly from the originals.
* **post**: for a large set, the unfiltered graph search made cands·n/m wide, kept to the allowed nodes
  (about `cands` of them where allowed vectors are as common near the query as in the store), then the
  same re-rank. A query that finds fewer than POST_KEEP·cands allowed (a folder away from the query)
  walks the graph with the filter applied during the walk (hnswlib's `knn_query(filter=...)`, which
  carries on through disallowed nodes; a Python call per node, so only as a fallback) or, where that
  would cost more, is scanned.

Every way returns exact scores; only which allowed vectors are considered differs. A partitioned scan
(k-means over the heads) was measured and dropped (BENCHMARKS.md): on these vectors its recall needed
~30 % of the partitions visited, a fixed share of the allowed rows, O(m) like the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.vectors.hnsw.originals import Originals
from retrieval.vectors.hnsw.quantizer import Quantizer

#: Relative cost of each way, in units of one float32 original scored (gather + dot product), fitted on
#: the forced-way tables at 100k and 1M (BENCHMARKS.md, "Filtered search"): the scan costs SCAN_ROW per
#: allowed row, the post-filtered graph search POST_NODE per node it asks for (cands·n/m), both FIXED more
#: for the re-rank.
SCAN_ROW = 0.04
POST_NODE = 4.8
FIXED = 150.0
#: A post-filtered query keeping fewer than POST_KEEP·cands allowed nodes walks the graph with the filter
#: (WALK_NODE per node it expects to visit, cands·n/m) where that costs less than the scan, else scans.
POST_KEEP = 0.5
WALK_NODE = 2.7
#: The scan's first stage: LEAD_DIMS head coordinates per row (float32); its second: the whole int8 head
#: of the best LEAD_KEEP·cands rows.
LEAD_DIMS = 32
LEAD_KEEP = 16
#: Head codes clip each coordinate at HEAD_RANGE times its root mean square (rarely reached).
HEAD_RANGE = 5.0
_BLOCK = 16384


def choose(m: int, n_slots: int, n_alive: int, cands: int, *, graph: bool) -> str:
    """'exact', 'scan' or 'post' for m allowed live vectors and `cands` candidates per query: the cheapest
    by the cost model above. The post-filtered search needs a graph and more allowed vectors than
    candidates."""
    del n_slots
    costs = {"exact": float(m), "scan": SCAN_ROW * m + FIXED}
    if graph and m > cands:
        costs["post"] = POST_NODE * cands * n_alive / m + FIXED
    return min(costs, key=costs.__getitem__)


def walk_first(m: int, n_alive: int, cands: int) -> bool:
    """Whether a post-filtered query that found too few allowed nodes should walk rather than scan."""
    return WALK_NODE * cands * n_alive / m < SCAN_ROW * m


@dataclass(eq=False)
class HeadCodes:
    """int8 PCA head of every slot, for scans: row s holds slot s's head coordinates / `step`, rounded."""

    quantizer: Quantizer
    step: np.ndarray  # (head_dims,) float32
    codes: np.ndarray  # (rows, head_dims) int8

    @classmethod
    def build(cls, quantizer: Quantizer, originals: Originals, n_slots: int) -> HeadCodes:
        rms = np.sqrt(np.maximum(quantizer.energy[: quantizer.head_dims], 1e-12)).astype(np.float32)
        step = (HEAD_RANGE * rms / 127.0).astype(np.float32)
        out = cls(quantizer, step, np.empty((0, quantizer.head_dims), dtype=np.int8))
        out.extend(originals, n_slots)
        return out

    def extend(self, originals: Originals, n_slots: int) -> None:
        """Encode the slots added since the last call (removed slots are simply never asked for)."""
        start = len(self.codes)
        if n_slots <= start:
            return
        grown = np.empty((n_slots, self.quantizer.head_dims), dtype=np.int8)
        grown[:start] = self.codes
        basis = self.quantizer.basis[:, : self.quantizer.head_dims]
        for lo in range(start, n_slots, _BLOCK):
            hi = min(lo + _BLOCK, n_slots)
            head = originals.get(np.arange(lo, hi)) @ basis
            grown[lo:hi] = np.clip(np.rint(head / self.step), -127, 127).astype(np.int8)
        self.codes = grown

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes


@dataclass(eq=False)
class Lead:
    """An allowed set laid out for two-stage scans: its slots and the first LEAD_DIMS head coordinates of
    each, decoded to float32 (a dot product per row with no conversion)."""

    head: HeadCodes
    slots: np.ndarray  # (m,) int64
    lead: np.ndarray  # (m, lead_dims) float32

    @classmethod
    def build(cls, head: HeadCodes, slots: np.ndarray) -> Lead:
        dims = min(LEAD_DIMS, head.quantizer.head_dims)
        lead = np.empty((len(slots), dims), dtype=np.float32)
        for lo in range(0, len(slots), _BLOCK):
            part = head.codes[slots[lo : lo + _BLOCK], :dims]
            lead[lo : lo + _BLOCK] = part.astype(np.float32) * head.step[:dims]
        return cls(head, slots, lead)

    def candidates(self, graph_query: np.ndarray, cands: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `cands` slots by head score q_head·x_head among the best LEAD_KEEP·cands by the lead
        coordinates' score, and those head scores, for one query (its graph query row)."""
        head = self.head
        slots = self.slots
        keep = LEAD_KEEP * cands
        if len(slots) > keep:
            first = self.lead @ graph_query[: self.lead.shape[1]]
            slots = slots[np.argpartition(first, len(first) - keep)[len(first) - keep :]]
        weights = graph_query[: head.quantizer.head_dims] * head.step
        scores = head.codes.take(slots, axis=0).astype(np.float32) @ weights
        if cands < len(scores):
            best = np.argpartition(scores, len(scores) - cands)[len(scores) - cands :]
            return slots[best], scores[best]
        return slots, scores

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes + self.lead.nbytes
