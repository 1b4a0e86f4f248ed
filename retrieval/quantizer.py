"""The fitted transform that lets the vector store keep ~1 byte per dimension in RAM.

A vector x is rotated onto the eigenvectors of the data's second-moment matrix
(uncentred PCA: for inner products the mean direction is signal, not an offset to
remove), ordered by decreasing energy. The rotated vector splits in two:

* the **head**, the first `head_dims` coordinates, kept as float32: the HNSW graph
  is built over it, and the graph's own distances give the head's share of the
  inner product exactly;
* the **tail**, the remaining low-energy coordinates, stored as int8 codes with a
  per-dimension scale and offset fitted on the data.

Because the rotation is orthogonal, q·x = q_head·x_head + q_tail·x_tail, so a
candidate's score is the exact head score plus a quantized tail score whose error
is small (the tail carries little energy and each dimension gets its own range).
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


@dataclass(frozen=True, eq=False)
class Quantizer:
    """PCA rotation + exact float32 head + int8 tail; build with `fit`, persist with `to_arrays`."""

    basis: np.ndarray  # (dim, dim) float32, columns = directions by decreasing energy
    energy: np.ndarray  # (dim,) float64, second moment along each direction
    head_dims: int
    offset: np.ndarray  # (tail_dims,) float32
    scale: np.ndarray  # (tail_dims,) float32, > 0
    fitted_n: int
    _extended: np.ndarray = field(init=False, repr=False)  # [basis | tail basis @ offset]

    def __post_init__(self) -> None:
        # Queries are rotated by [basis | basis_tail @ offset]: one matrix product yields the
        # head, the tail and the tail's offset term. `basis` becomes a view of its first
        # columns, so the extra column costs `dim` floats, not a second matrix.
        dim, head = self.basis.shape[0], self.head_dims
        extended = np.empty((dim, dim + 1), dtype=np.float32)
        extended[:, :dim] = self.basis
        extended[:, dim] = self.basis[:, head:] @ self.offset if dim > head else 0.0
        object.__setattr__(self, "_extended", extended)
        object.__setattr__(self, "basis", extended[:, :dim])

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def tail_dims(self) -> int:
        return self.dim - self.head_dims

    @classmethod
    def fit(cls, sample: np.ndarray, head_dims: int | None) -> Quantizer:
        """Fit rotation and int8 ranges on `sample` (n, dim) float32; `head_dims` None keeps all dims exact.

        Raises:
            UsageError: the sample is empty or not 2-D.
        """
        if sample.ndim != 2 or len(sample) == 0:
            raise UsageError(f"cannot fit a quantizer on an array of shape {sample.shape}")
        n, dim = sample.shape
        head = dim if head_dims is None else min(int(head_dims), dim)
        moment = np.zeros((dim, dim), dtype=np.float64)
        for start in range(0, n, _CHUNK):
            block = np.asarray(sample[start : start + _CHUNK], dtype=np.float32)
            moment += (block.T @ block).astype(np.float64)
        moment /= n
        energy, vecs = np.linalg.eigh(moment)
        order = np.argsort(energy)[::-1]
        basis = np.ascontiguousarray(vecs[:, order], dtype=np.float32)
        energy = np.clip(energy[order], 0.0, None)

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
        return cls(basis, energy, head, offset, scale, int(n))

    def rotate(self, x: np.ndarray) -> np.ndarray:
        """Return x (n, dim) in the fitted basis; inner products are unchanged."""
        return np.asarray(x, dtype=np.float32) @ self.basis

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (head float32 (n, head_dims), codes int8 (n, tail_dims)) for vectors x (n, dim)."""
        rotated = self.rotate(x)
        head = np.ascontiguousarray(rotated[:, : self.head_dims])
        return head, self.encode_tail(rotated[:, self.head_dims :])

    def encode_tail(self, tail: np.ndarray) -> np.ndarray:
        """Quantize already-rotated tail coordinates; values outside the fitted range are clipped."""
        q = np.rint((tail - self.offset) / self.scale)
        return np.clip(q, -LEVELS, LEVELS).astype(np.int8)

    def decode(self, head: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Return approximate original vectors (n, dim) from a head and its tail codes."""
        tail = codes.astype(np.float32) * self.scale + self.offset
        return np.concatenate([head, tail], axis=1) @ self.basis.T

    def prepare_queries(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (head (m, head_dims), tail weights (m, tail_dims), tail bias (m,)) for queries (m, dim).

        The tail score of a query against codes is `codes @ weights + bias`: q·(offset +
        scale·code) split so that codes are multiplied by a pre-scaled query, never decoded.
        """
        h, dim = self.head_dims, self.dim
        rotated = np.asarray(queries, dtype=np.float32) @ self._extended
        return rotated[:, :h], rotated[:, h:dim] * self.scale, rotated[:, dim]

    def head_energy(self) -> float:
        """Fraction of the fitted second moment the exact head keeps (1.0 = lossless graph)."""
        total = float(self.energy.sum())
        return float(self.energy[: self.head_dims].sum()) / total if total > 0 else 1.0

    def info(self) -> dict[str, Any]:
        """Summary for `VectorStore.stats()`."""
        return {
            "dim": self.dim,
            "head_dims": self.head_dims,
            "tail_dims": self.tail_dims,
            "fitted_n": self.fitted_n,
            "head_energy": round(self.head_energy(), 4),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays that `from_arrays` turns back into an equal quantizer (for np.savez)."""
        return {
            "basis": np.ascontiguousarray(self.basis),
            "energy": self.energy,
            "head_dims": np.array(self.head_dims, dtype=np.int64),
            "offset": self.offset,
            "scale": self.scale,
            "fitted_n": np.array(self.fitted_n, dtype=np.int64),
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
        ):
            raise IndexCorruptError("quantizer arrays have inconsistent shapes or values")
        return cls(np.ascontiguousarray(basis), energy, head, offset, scale, fitted_n)
