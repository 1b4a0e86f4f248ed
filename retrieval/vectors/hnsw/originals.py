"""The float32 originals of the default store: one append-only file, memory-mapped for exact re-scoring."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from retrieval.errors import IndexCorruptError

#: New originals wait in RAM until save() or until they exceed this many bytes.
PENDING_FLUSH_BYTES = 64 << 20


class Originals:
    """Float32 rows in an append-only file, memory-mapped; appended rows wait in RAM until flush()."""

    def __init__(self, path: Path, dim: int, rows: int, *, writable: bool) -> None:
        self.path = path
        self.dim = dim
        self._row_bytes = dim * 4
        size = path.stat().st_size  # FileNotFoundError: the caller decides (retry or corrupt)
        expected = rows * self._row_bytes
        if size < expected:
            raise IndexCorruptError(
                f"{path.name} is truncated: {size} bytes, the manifest needs at least {expected}"
            )
        if writable and size > expected:
            # Rows appended by a session that never saved: no generation refers to them.
            os.truncate(path, expected)
        self._disk_rows = rows
        self._map = self._mapped(rows)
        self._pending = np.empty((0, dim), dtype=np.float32)
        self._pending_rows = 0

    @classmethod
    def create(cls, path: Path, dim: int) -> Originals:
        path.write_bytes(b"")
        return cls(path, dim, 0, writable=True)

    def _mapped(self, rows: int) -> np.ndarray:
        if rows == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        # A plain ndarray view: indexing np.memmap itself costs extra Python work per call.
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(rows, self.dim)).view(np.ndarray)

    @property
    def rows(self) -> int:
        return self._disk_rows + self._pending_rows

    @property
    def mapped(self) -> np.ndarray | None:
        """Every row as one array (the memory map) where none is pending, for compiled code; else None."""
        return self._map if self._pending_rows == 0 else None

    @property
    def pending_bytes(self) -> int:
        return self._pending.nbytes

    def append(self, x: np.ndarray) -> None:
        need = self._pending_rows + len(x)
        if need > len(self._pending):
            grown = np.empty((max(need, 2 * len(self._pending), 256), self.dim), dtype=np.float32)
            grown[: self._pending_rows] = self._pending[: self._pending_rows]
            self._pending = grown
        self._pending[self._pending_rows : need] = x
        self._pending_rows = need
        if self._pending_rows * self._row_bytes >= PENDING_FLUSH_BYTES:
            self.flush()

    def get(self, slots: np.ndarray) -> np.ndarray:
        """Rows for `slots` (any shape); returns slots.shape + (dim,)."""
        if self._pending_rows == 0:
            return self._map.take(slots, axis=0)  # take: several times faster than fancy indexing
        out = np.empty((*slots.shape, self.dim), dtype=np.float32)
        on_disk = slots < self._disk_rows
        out[on_disk] = self._map[slots[on_disk]]
        out[~on_disk] = self._pending[slots[~on_disk] - self._disk_rows]
        return out

    def flush(self) -> None:
        """Write pending rows after the valid part of the file, fsync, and map them."""
        if self._pending_rows == 0:
            return
        with open(self.path, "r+b") as f:
            f.seek(self._disk_rows * self._row_bytes)
            f.write(self._pending[: self._pending_rows].data)
            f.flush()
            os.fsync(f.fileno())
        self._disk_rows += self._pending_rows
        self._pending = np.empty((0, self.dim), dtype=np.float32)
        self._pending_rows = 0
        self._map = self._mapped(self._disk_rows)
