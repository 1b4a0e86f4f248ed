"""Filtered search in the default store: which way answers a search restricted to a set of allowed slots.

Three ways, chosen per search by the allowed set's size m among n live vectors (cost model below, constants
measured in BENCHMARKS.md, "Filtered search"):

* **exact**: score the m float32 originals (memory-mapped) directly; for small sets.
* **scan**: score the m allowed slots on an int8 copy of the PCA head (`HeadCodes`, ~1/18 of the bytes of
  an original, built on the first scan from the originals and kept with the generation), then the graph
  path's re-rank: int8 tail for the best candidates, the best of those exactly from the originals.
* **walk**: the hnswlib graph walk with the filter applied during the walk (`knn_query(filter=...)` over a
  mask of slots): it collects `cands` allowed candidates, visiting roughly cands·n/m nodes, then the same
  re-rank. Robust to filters correlated with the vectors (a folder far from the query): the walk carries on
  through disallowed nodes until it has found enough allowed ones, where over-fetching unfiltered results
  and filtering them afterwards finds none.

Every way returns exact scores; only which allowed vectors are considered differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.vectors.hnsw.originals import Originals
from retrieval.vectors.hnsw.quantizer import Quantizer

#: Relative cost of each way, in units of one float32 original scored (gather + dot product), fitted at
#: 100k and checked at 1M (BENCHMARKS.md, "Filtered search"): a head-code row costs SCAN_ROW, plus FIXED
#: for the re-rank; the walk costs WALK_NODE per node it expects to visit (cands·n/m), FIXED, and
#: WALK_SLOT per slot of the store for the mask it walks with (built once per allowed set).
SCAN_ROW = 0.16
WALK_NODE = 2.7
FIXED = 150.0
WALK_SLOT = 0.0003
#: Head codes clip each coordinate at HEAD_RANGE times its root mean square (rarely reached).
HEAD_RANGE = 5.0
_BLOCK = 16384


def choose(m: int, n_slots: int, n_alive: int, cands: int, *, graph: bool) -> str:
    """'exact', 'scan' or 'walk' for m allowed live vectors and `cands` candidates per query: the cheapest
    by the cost model above. The walk needs a graph and more allowed vectors than candidates."""
    costs = {"exact": float(m), "scan": SCAN_ROW * m + FIXED}
    if graph and m > cands:
        costs["walk"] = WALK_NODE * cands * n_alive / m + FIXED + WALK_SLOT * n_slots
    return min(costs, key=costs.__getitem__)


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

    def scores(self, slots: np.ndarray, graph_query: np.ndarray) -> np.ndarray:
        """Approximate head score q_head·x_head of each slot for one query (its graph query row)."""
        weights = graph_query[: self.quantizer.head_dims] * self.step
        out = np.empty(len(slots), dtype=np.float32)
        for lo in range(0, len(slots), _BLOCK):
            block = self.codes.take(slots[lo : lo + _BLOCK], axis=0)
            out[lo : lo + _BLOCK] = block.astype(np.float32) @ weights
        return out

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes
