"""The fitted transform that lets the vector store keep ~1 byte per dimension in RAM.

A vector x is rotated onto the eigenvectors of the data's second-moment matrix
(uncentred PCA: for inner products the mean direction is signal, not an offset to
remove), ordered by decreasing energy. The rotated vector splits in two:

* the **head**, the first `head_dims` coordinates, kept as float32 in the HNSW graph;
* the **tail**, the remaining low-energy coordinates, stored as int8 codes with a
  per-dimension scale and offset fitted on the data.

Because the rotation is orthogonal, q·x = q_head·x_head + q_tail·x_tail, so a
candidate's score is the exact head score plus a quantized tail score whose error
is small (the tail carries little energy and each dimension gets its own range).

The graph's vectors get one more coordinate, sqrt(1 - |x_head|²), which makes them all
unit length (the usual reduction of inner-product search to nearest-neighbour search);
queries carry 0 there, so the graph's inner product is still exactly q_head·x_head.
Heads of unequal length make an inner-product HNSW graph markedly worse to navigate:
at 1M vectors the completed graph finds far more of the true neighbours at the same ef.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.errors import IndexCorruptError, UsageError

#: int8 codes use the symmetric range [-LEVELS, LEVELS].
LEVELS = 127
#: Fitted tail ranges are widened by this fraction on each side so that vectors added
#: after the fit are rarely clipped.
RANGE_MARGIN = 0.05
_CHUNK = 8192
#: The head adapts to the data (`fit(..., adapt=True)`) when the sample holds at least this many vectors
#: besides its probe queries; smaller stores keep the head they ask for (they are cheap to search anyway).
ADAPT_MIN_SAMPLE = 5000
#: Probe queries drawn from the sample, and how many true neighbours of each are checked.
ADAPT_PROBES, ADAPT_K = 256, 10
#: A head holds when this share of the probes' true top-ADAPT_K ranks among their best
#: ADAPT_CANDIDATES (per 50,000 sample vectors) by head score alone; else the head grows by its own
#: length at a time, up to every dimension. Measured on 50k samples (BENCHMARKS.md, "Search"): on
#: benchmarks/vectors.py the 111-dim head holds (0.979-0.988); on the CLIP-like generator it keeps
#: 0.52-0.56 and even 383 dims only 0.90, so that data gets the full dimension.
ADAPT_SHARE, ADAPT_CANDIDATES = 0.97, 40
#: `head_share` measures a query's energy on the leading directions that hold SHARE_ENERGY of the data's
#: (at most the head): where the data lies. On the CLIP-like generator at 100k (169 of 512 dims) image
#: queries keep 0.74-0.96 of theirs there (5th-95th percentile), text queries 0.33-0.40; on
#: benchmarks/vectors.py (117 dims) image queries 0.83-0.96. A head that grows to most dimensions
#: (`adapted_head`) would otherwise count a text query's energy as the data's.
SHARE_ENERGY = 0.9


@dataclass(frozen=True, eq=False)
class Quantizer:
    """PCA rotation + exact float32 head + int8 tail; build with `fit`, persist with `to_arrays`."""

    basis: np.ndarray  # (dim, dim) float32, columns = directions by decreasing energy
    energy: np.ndarray  # (dim,) float64, second moment along each direction
    head_dims: int
    offset: np.ndarray  # (tail_dims,) float32
    scale: np.ndarray  # (tail_dims,) float32, > 0
    fitted_n: int
    completion: bool = False  # graph vectors carry sqrt(1 - |head|²) as one more coordinate
    # [head basis | 0 if completion | tail basis · scale | tail basis @ offset]: one product per query
    # yields the graph query, the tail and the tail's offset term.
    _query_matrix: np.ndarray = field(init=False, repr=False)
    # Its first graph_dims columns alone, contiguous: a search that scores every candidate exactly needs no
    # tail weights, and the tail is most of the matrix (401 of 513 columns on benchmarks/vectors.py data).
    _head_matrix: np.ndarray = field(init=False, repr=False)
    # The leading directions `head_share` measures, as one contiguous block: a column slice of `basis` is
    # strided, and a product with it cost about as much as the whole `_query_matrix` product per query.
    _share_basis: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        h, dim = self.head_dims, self.dim
        g = self.graph_dims
        matrix = np.zeros((dim, g + self.tail_dims + 1), dtype=np.float32)
        matrix[:, :h] = self.basis[:, :h]
        matrix[:, g:-1] = self.basis[:, h:] * self.scale  # tail weights come out pre-scaled
        matrix[:, -1] = self.basis[:, h:] @ self.offset if self.tail_dims else 0.0
        object.__setattr__(self, "_query_matrix", matrix)
        object.__setattr__(self, "_head_matrix", np.ascontiguousarray(matrix[:, :g]))
        total = float(self.energy.sum())
        share_dims = h
        if total > 0:
            share_dims = min(h, int(np.searchsorted(np.cumsum(self.energy) / total, SHARE_ENERGY)) + 1)
        object.__setattr__(self, "_share_basis", np.ascontiguousarray(self.basis[:, :share_dims]))

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def graph_dims(self) -> int:
        """Length of the vectors the graph holds: the head, plus the completing coordinate."""
        return self.head_dims + int(self.completion)

    @property
    def tail_dims(self) -> int:
        return self.dim - self.head_dims

    @classmethod
    def fit(cls, sample: np.ndarray, graph_dims: int | None, *, adapt: bool = False) -> Quantizer:
        """Fit rotation and int8 ranges on `sample` (n, dim) float32, unit rows.

        `graph_dims` is the length of the graph's vectors: graph_dims - 1 exact head coordinates
        plus the completing one; None (or >= dim) keeps every coordinate exact, with no int8 tail.
        With `adapt`, that head is the shortest the sample allows (`adapted_head`): data whose
        neighbours differ along many directions (a flat spectrum, as CLIP embeddings have) gets a longer
        head, up to every dimension, so that the graph still finds the true neighbours.

        Raises:
            UsageError: the sample is empty or not 2-D.
        """
        if sample.ndim != 2 or len(sample) == 0:
            raise UsageError(f"cannot fit a quantizer on an array of shape {sample.shape}")
        n, dim = sample.shape
        completion = graph_dims is not None and graph_dims < dim
        head = max(int(graph_dims) - 1, 1) if completion and graph_dims is not None else dim
        moment = np.zeros((dim, dim), dtype=np.float64)
        for start in range(0, n, _CHUNK):
            block = np.asarray(sample[start : start + _CHUNK], dtype=np.float32)
            moment += (block.T @ block).astype(np.float64)
        moment /= n
        energy, vecs = np.linalg.eigh(moment)
        order = np.argsort(energy)[::-1]
        basis = np.ascontiguousarray(vecs[:, order], dtype=np.float32)
        energy = np.clip(energy[order], 0.0, None)
        if adapt and completion:
            head = adapted_head(sample, basis, head)
            completion = head < dim

        tail = dim - head
        lo = np.full(tail, np.inf, dtype=np.float32)
        hi = np.full(tail, -np.inf, dtype=np.float32)
        if tail:
            tail_basis = basis[:, head:]
            for start in range(0, n, _CHUNK):
                block = np.asarray(sample[start : start + _CHUNK], dtype=np.float32) @ tail_basis
                lo = np.minimum(lo, block.min(axis=0))
                hi = np.maximum(hi, block.max(axis=0))
        width = (hi - lo) * (1.0 + 2.0 * RANGE_MARGIN)
        # A flat dimension (tiny samples) still gets a usable step.
        width = np.maximum(width, 1e-6)
        offset = ((hi + lo) / 2.0).astype(np.float32)
        scale = (width / (2.0 * LEVELS)).astype(np.float32)
        return cls(basis, energy, head, offset, scale, int(n), completion)

    def rotate(self, x: np.ndarray) -> np.ndarray:
        """Return x (n, dim) in the fitted basis; inner products are unchanged."""
        return np.asarray(x, dtype=np.float32) @ self.basis

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (graph vectors float32 (n, graph_dims), codes int8 (n, tail_dims)) for x (n, dim)."""
        rotated = self.rotate(x)
        head = rotated[:, : self.head_dims]
        if self.completion:
            rest = np.sqrt(np.clip(1.0 - np.einsum("ij,ij->i", head, head), 0.0, None))
            graph = np.concatenate([head, rest[:, None]], axis=1).astype(np.float32)
        else:
            graph = np.ascontiguousarray(head)
        return graph, self.encode_tail(rotated[:, self.head_dims :])

    def encode_tail(self, tail: np.ndarray) -> np.ndarray:
        """Quantize already-rotated tail coordinates; values outside the fitted range are clipped."""
        q = np.rint((tail - self.offset) / self.scale)
        return np.clip(q, -LEVELS, LEVELS).astype(np.int8)

    def decode(self, graph: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Return approximate original vectors (n, dim) from graph vectors and their tail codes."""
        tail = codes.astype(np.float32) * self.scale + self.offset
        return np.concatenate([graph[:, : self.head_dims], tail], axis=1) @ self.basis.T

    def prepare_queries(
        self, queries: np.ndarray, *, tail: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (graph query (m, graph_dims), tail weights (m, tail_dims), tail bias (m,)); with `tail`
        False, the graph queries only, with tail weights (m, 0) and a zero bias (about a quarter of the
        product where the tail is long).

        The graph query's inner product with a graph vector is exactly q_head·x_head (it holds
        0 in the completing coordinate). The tail score against codes is `codes @ weights +
        bias`: q·(offset + scale·code) split so that codes are multiplied by a pre-scaled
        query, never decoded.
        """
        g = self.graph_dims
        if not tail and self.tail_dims:
            graph = np.asarray(queries, dtype=np.float32) @ self._head_matrix
            return graph, np.empty((len(graph), 0), dtype=np.float32), np.zeros(len(graph), dtype=np.float32)
        rotated = np.asarray(queries, dtype=np.float32) @ self._query_matrix
        return rotated[:, :g], rotated[:, g:-1], rotated[:, -1]

    def head_share(self, queries: np.ndarray, graph_queries: np.ndarray | None = None) -> np.ndarray:
        """Fraction of each query's energy (m, dim) where the data lies: on the leading directions holding
        SHARE_ENERGY of the data's, or on the whole head where that is shorter. Low for a query from
        another distribution (text against image embeddings), which the graph walk steers badly.
        `graph_queries`, their `prepare_queries` rows where at hand, hold those coordinates already."""
        if graph_queries is not None:
            head = graph_queries[:, : self._share_basis.shape[1]]
        else:
            head = queries @ self._share_basis
        if len(queries) == 1:  # the usual single query: two dot products (a tenth of a query's own cost)
            return np.array([np.dot(head[0], head[0]) / max(float(np.dot(queries[0], queries[0])), 1e-12)])
        return np.einsum("ij,ij->i", head, head) / np.maximum(np.einsum("ij,ij->i", queries, queries), 1e-12)

    def head_energy(self) -> float:
        """Fraction of the fitted second moment the exact head keeps (1.0 = lossless graph)."""
        total = float(self.energy.sum())
        return float(self.energy[: self.head_dims].sum()) / total if total > 0 else 1.0

    def info(self) -> dict[str, Any]:
        """Summary for `VectorStore.stats()`."""
        return {
            "dim": self.dim,
            "head_dims": self.head_dims,
            "graph_dims": self.graph_dims,
            "tail_dims": self.tail_dims,
            "fitted_n": self.fitted_n,
            "head_energy": round(self.head_energy(), 4),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays that `from_arrays` turns back into an equal quantizer (for np.savez)."""
        return {
            "basis": self.basis,
            "energy": self.energy,
            "head_dims": np.array(self.head_dims, dtype=np.int64),
            "offset": self.offset,
            "scale": self.scale,
            "fitted_n": np.array(self.fitted_n, dtype=np.int64),
            "completion": np.array(int(self.completion), dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> Quantizer:
        """Rebuild from `to_arrays` output (a dict or an NpzFile).

        Raises:
            IndexCorruptError: arrays are missing or their shapes disagree.
        """
        try:
            basis = np.asarray(arrays["basis"], dtype=np.float32)
            energy = np.asarray(arrays["energy"], dtype=np.float64)
            head = int(arrays["head_dims"])
            offset = np.asarray(arrays["offset"], dtype=np.float32)
            scale = np.asarray(arrays["scale"], dtype=np.float32)
            fitted_n = int(arrays["fitted_n"])
            # Absent in stores written before graph vectors were completed to unit length.
            completion = bool(int(arrays["completion"])) if "completion" in arrays else False
        except (KeyError, ValueError, TypeError) as exc:
            raise IndexCorruptError(f"quantizer arrays are incomplete: {exc}") from exc
        dim = basis.shape[0] if basis.ndim == 2 else -1
        tail = dim - head
        if (
            basis.shape != (dim, dim)
            or energy.shape != (dim,)
            or not 0 < head <= dim
            or offset.shape != (tail,)
            or scale.shape != (tail,)
            or not np.all(scale > 0)
            or (completion and tail == 0)
        ):
            raise IndexCorruptError("quantizer arrays have inconsistent shapes or values")
        return cls(np.ascontiguousarray(basis), energy, head, offset, scale, fitted_n, completion)


def adapted_head(sample: np.ndarray, basis: np.ndarray, head: int) -> int:
    """The shortest head, of `head`, 2·`head`, 3·`head`, ... or every dimension, that ranks the true
    neighbours of probe vectors (drawn from `sample`) near the top by head score alone (ADAPT_SHARE of
    their top ADAPT_K among the best ADAPT_CANDIDATES per 50,000): the graph walks on head scores, so
    a neighbour the head ranks low is one the walk rarely returns. `head` itself when the sample is
    small (under ADAPT_MIN_SAMPLE vectors besides the probes)."""
    n, dim = sample.shape
    if n - ADAPT_PROBES < ADAPT_MIN_SAMPLE or head >= dim:
        return head
    rng = np.random.default_rng(0)
    probe_rows = np.zeros(n, dtype=bool)
    probe_rows[rng.choice(n, size=ADAPT_PROBES, replace=False)] = True
    probes = np.asarray(sample[probe_rows], dtype=np.float32) @ basis
    rest = np.flatnonzero(~probe_rows)
    rotated = np.empty((len(rest), dim), dtype=np.float32)
    for start in range(0, len(rest), _CHUNK):
        rotated[start : start + _CHUNK] = np.asarray(sample[rest[start : start + _CHUNK]]) @ basis
    exact = probes @ rotated.T
    truth = np.argpartition(-exact, ADAPT_K, axis=1)[:, :ADAPT_K]
    del exact
    candidates = max(ADAPT_K, round(ADAPT_CANDIDATES * len(rest) / 50_000))
    for h in range(head, dim, head):
        scores = probes[:, :h] @ rotated[:, :h].T
        bar = -np.partition(-scores, candidates - 1, axis=1)[:, candidates - 1 : candidates]
        if float((np.take_along_axis(scores, truth, axis=1) >= bar).mean()) >= ADAPT_SHARE:
            return h
    return dim
