"""Quantized, crash-safe vector store: HNSW over a PCA head, int8 tail re-rank, float32 re-score.

Search runs in three stages (see retrieval/quantizer.py for the transform):

1. an hnswlib graph (space "ip") over the exact float32 *head* of each rotated
   vector (completed to unit length) returns `ef` candidates together with their
   exact head scores;
2. each candidate's score is completed with the int8 *tail* codes held in RAM;
3. the best `rescore` candidates are scored exactly against the float32 originals,
   which stay on disk and are memory-mapped (the Qdrant/Milvus "rescore" step).

Only the graph and the tail codes live in RAM: just under half of a plain float32
hnswlib index at 512 dims (BENCHMARKS.md has the figures).

A store is a folder written by one writer and read by any number of processes:

    MANIFEST.json            names the current generation; replaced atomically
    originals-000000.f32     float32 originals, append-only; valid rows recorded in the manifest
    g00000007.slots          int64 id of each slot (-1 = removed)
    g00000007.codes          int8 tail codes, one row per slot
    g00000007.graph          hnswlib index over the heads; labels are slots
    g00000007.quantizer.npz  rotation and int8 ranges

`save()` writes every file of generation g under a temporary name, fsyncs and
renames it, then replaces MANIFEST.json. Generation g-1 stays on disk so that a
reader which has just read the old pointer can still open it; older ones are
deleted. A crash at any moment leaves the last complete generation usable.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import hnswlib
import numpy as np

from retrieval.errors import (
    IndexCorruptError,
    RetrievalError,
    UsageError,
)
from retrieval.vectors.hnsw import fileformat
from retrieval.vectors.hnsw.fileformat import MANIFEST
from retrieval.vectors.hnsw.originals import Originals as _Originals
from retrieval.vectors.hnsw.quantizer import Quantizer

#: The quantizer is refitted (and the graph rebuilt) when the collection reaches
#: REFIT_GROWTH times the size it was fitted on, until it was fitted on FIT_SAMPLE_CAP.
FIT_SAMPLE_CAP = 50_000
REFIT_GROWTH = 2
_ROW_BLOCK = 16384
#: A query with less than LOW_HEAD_SHARE of its energy in the PCA head (text queries against image
#: embeddings: ~15-25%, images ~75-90%) is steered by a small part of itself in the graph walk, so
#: by default it gets LOW_HEAD_BOOST times the candidates (BENCHMARKS.md, search section).
LOW_HEAD_SHARE = 0.5
LOW_HEAD_BOOST = 2
_OPEN_ATTEMPTS = 5


@dataclass(frozen=True)
class StoreParams:
    """Index settings; the defaults are the measured choice in BENCHMARKS.md.

    graph_dims: length of the graph's vectors: graph_dims - 1 PCA dims kept exact plus one that
        completes them to unit length (None = all dims exact, no int8 tail).
    m, ef_construction: hnswlib graph degree and build beam.
    ef_search: default number of graph candidates per query (the speed/recall knob).
    rescore: how many best candidates are re-scored against the float32 originals (0 = none).
    """

    graph_dims: int | None = 112
    m: int = 12
    ef_construction: int = 200
    ef_search: int = 384
    rescore: int = 16

    def __post_init__(self) -> None:
        if self.graph_dims is not None and self.graph_dims < 2:
            raise UsageError(f"graph_dims must be None or >= 2, got {self.graph_dims}")
        if not 2 <= self.m <= 256:
            raise UsageError(f"m must be in 2..256, got {self.m}")
        if self.ef_construction < 1 or self.ef_search < 1:
            raise UsageError(
                f"ef_construction and ef_search must be >= 1, got {self.ef_construction}, {self.ef_search}"
            )
        if self.rescore < 0:
            raise UsageError(f"rescore must be >= 0, got {self.rescore}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreParams:
        """Build from `to_dict` output; missing keys take defaults, unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown store parameters {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class _IdIndex:
    """id → slot lookups without a Python dict entry (~100 bytes) per id: sorted arrays + recent changes."""

    def __init__(self, slot_ids: np.ndarray) -> None:
        alive = np.flatnonzero(slot_ids >= 0)
        keys = slot_ids[alive]
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._slots = alive[order]
        self._recent: dict[int, int] = {}  # changes since the arrays were built; -1 = removed

    @property
    def stale(self) -> bool:
        return len(self._recent) > max(4096, len(self._keys) // 4)

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._slots.nbytes + 100 * len(self._recent)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where absent."""
        out = np.full(len(ids), -1, dtype=np.int64)
        if len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, ids), len(self._keys) - 1)
            hit = self._keys[pos] == ids
            out[hit] = self._slots[pos[hit]]
        if self._recent:
            for i, key in enumerate(ids.tolist()):
                slot = self._recent.get(key)
                if slot is not None:
                    out[i] = slot
        return out

    def update(self, ids: Iterable[int], slots: Iterable[int]) -> None:
        self._recent.update(zip(ids, slots, strict=True))


@dataclass(eq=False)
class _State:
    """Everything one generation holds in memory; swapped as a whole by reload_if_changed()."""

    generation: int
    quantizer: Quantizer | None
    graph: hnswlib.Index | None
    codes: np.ndarray  # (capacity, tail_dims) int8; rows [:n_slots] are valid
    slot_ids: np.ndarray  # (capacity,) int64; -1 = removed
    n_slots: int
    n_alive: int
    originals: _Originals
    originals_epoch: int
    id_index: _IdIndex | None  # built on first lookup by id: search-only readers never pay for it
    files: dict[str, dict[str, Any]]  # this generation's files as recorded in the manifest

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where absent."""
        if self.id_index is None:
            self.id_index = _IdIndex(self.slot_ids[: self.n_slots])
        return self.id_index.lookup(ids)

    def record(self, ids: np.ndarray, slots: Sequence[int]) -> None:
        """Tell the id index (if built) that `ids` moved to `slots` (-1 = removed)."""
        if self.id_index is not None:
            self.id_index.update(ids.tolist(), slots)

    def alive_slots(self) -> np.ndarray:
        return np.flatnonzero(self.slot_ids[: self.n_slots] >= 0)

    def file_names(self) -> set[str]:
        return {entry["name"] for entry in self.files.values()} | {self.originals.path.name}


class VectorStore:
    """Int64 id → L2-normalised float32 vector, searched by inner product; see the module docstring.

    Not thread-safe for writes; searches may run concurrently with `reload_if_changed()`.
    """

    def __init__(self, folder: Path, dim: int, params: StoreParams, state: _State, *, writable: bool):
        self.folder = folder
        self.dim = dim
        self.params = params
        self.writable = writable
        self._state: _State | None = state
        self._dirty = False

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, dim: int, params: StoreParams | None = None) -> VectorStore:
        """Create an empty store in `folder` (made if needed) and return it open for writing.

        Raises:
            UsageError: `folder` already holds a store, or `dim` < 1.
        """
        folder = Path(folder)
        if dim < 1:
            raise UsageError(f"dim must be >= 1, got {dim}")
        if cls.exists(folder):
            raise UsageError(f"{folder} already holds a vector store; open it instead")
        folder.mkdir(parents=True, exist_ok=True)
        params = params or StoreParams()
        originals = _Originals.create(folder / fileformat.originals_name(0), dim)
        state = _State(
            generation=-1,
            quantizer=None,
            graph=None,
            codes=np.empty((0, 0), dtype=np.int8),
            slot_ids=np.empty(0, dtype=np.int64),
            n_slots=0,
            n_alive=0,
            originals=originals,
            originals_epoch=0,
            id_index=None,
            files={},
        )
        store = cls(folder, dim, params, state, writable=True)
        store._dirty = True
        store.save()  # generation 0: an empty store that readers can open
        return store

    @classmethod
    def open(cls, folder: Path, *, writable: bool = False) -> VectorStore:
        """Open the current generation of the store in `folder`.

        Raises:
            IndexNotFoundError: `folder` holds no store.
            IndexCorruptError: a file is missing, truncated or garbled (the message names it).
            SchemaTooNewError: the store was written by a newer version.
        """
        folder = Path(folder)
        manifest, state = _load_current(folder, writable=writable)
        try:
            params = StoreParams.from_dict(manifest["params"])
        except (UsageError, TypeError, KeyError) as exc:
            raise IndexCorruptError(f"{folder / MANIFEST} has invalid params: {exc}") from exc
        return cls(folder, int(manifest["dim"]), params, state, writable=writable)

    @classmethod
    def rebuild(cls, folder: Path, *, dim: int | None = None) -> tuple[VectorStore, int]:
        """Rebuild a damaged store from its ids and float32 originals: see `repair.rebuild`."""
        from retrieval.vectors.hnsw.repair import rebuild

        return rebuild(folder, dim=dim)

    @staticmethod
    def exists(folder: Path) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    @staticmethod
    def saved_count(folder: Path) -> int | None:
        """How many vectors the store in `folder` last saved, from its manifest alone; None when there is
        no store or its manifest cannot be trusted."""
        try:
            return int(fileformat.read_manifest(Path(folder))["n_alive"])
        except (RetrievalError, KeyError, TypeError, ValueError):
            return None

    def close(self) -> None:
        """Drop the graph, codes and memory maps; unsaved changes are lost."""
        self._state = None

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def generation(self) -> int:
        return self._live().generation

    def _live(self) -> _State:
        if self._state is None:
            raise UsageError(f"the vector store in {self.folder} is closed")
        return self._state

    def _writable_state(self) -> _State:
        if not self.writable:
            raise UsageError(
                f"the vector store in {self.folder} was opened read-only; open it with writable=True"
            )
        return self._live()

    # ---- contents --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live().n_alive

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, int | np.integer):
            return False
        return bool(self._live().lookup(np.array([id], dtype=np.int64))[0] >= 0)

    def ids(self) -> np.ndarray:
        """All stored ids, ascending."""
        st = self._live()
        return np.sort(st.slot_ids[st.alive_slots()])

    def ids_above(self, after: int) -> np.ndarray:
        """The stored ids greater than `after`, ascending (what a crash after id `after` can have left)."""
        ids = self.ids()
        return ids[ids > after]

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The float32 originals of `ids`, in order.

        Raises:
            UsageError: some ids are not stored (the first few are named).
        """
        st = self._live()
        wanted = _as_ids(ids)
        slots = st.lookup(wanted)
        missing = wanted[slots < 0]
        if len(missing):
            raise UsageError(f"{len(missing)} ids are not in the store, e.g. {missing[:5].tolist()}")
        return st.originals.get(slots)

    def garbled_ids(self) -> np.ndarray:
        """Ids whose stored original is not finite or not unit length: damage inside the originals file,
        which opening does not read. Reads every vector; `rebuild()` drops these."""
        st = self._live()
        alive = st.alive_slots()
        bad = [block[_unusable(st.originals.get(block))] for block in _blocks(alive, _ROW_BLOCK)]
        return np.sort(st.slot_ids[np.concatenate(bad)]) if bad else np.empty(0, dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under caller-chosen ids; an id already present is replaced.

        May refit the quantizer and rebuild the graph when the collection has grown
        REFIT_GROWTH-fold since the last fit (amortised: fits stop at FIT_SAMPLE_CAP).

        Raises:
            UsageError: shapes disagree, ids are negative or vectors are not finite.
        """
        st = self._writable_state()
        ids = _as_ids(ids)
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape != (len(ids), self.dim):
            raise UsageError(f"vectors must have shape ({len(ids)}, {self.dim}), got {vecs.shape}")
        if len(ids) == 0:
            return
        if not np.isfinite(vecs).all():
            raise UsageError("vectors contain NaN or infinite values")
        uniq, last = np.unique(ids[::-1], return_index=True)
        if len(uniq) < len(ids):  # the last occurrence of a repeated id wins
            keep = np.sort(len(ids) - 1 - last)
            ids, vecs = ids[keep], vecs[keep]

        self._drop_slots(st, st.lookup(ids))
        start, k = st.n_slots, len(ids)
        slots = np.arange(start, start + k, dtype=np.int64)
        st.originals.append(vecs)
        st.slot_ids = _grow(st.slot_ids, start + k, fill=-1)
        st.slot_ids[slots] = ids
        st.n_slots += k
        st.n_alive += k
        st.record(ids, slots.tolist())
        self._dirty = True
        if st.quantizer is not None and not self._refit_due(st):
            head, codes = st.quantizer.encode(vecs)
            st.codes = _grow(st.codes, st.n_slots)
            st.codes[slots] = codes
            _graph_add(st.graph, head, slots)
        self._maintain(st)

    def remove(self, ids: Iterable[int]) -> int:
        """Remove ids; returns how many were present (absent ids are ignored)."""
        st = self._writable_state()
        wanted = np.unique(_as_ids(list(ids)))
        slots = st.lookup(wanted)
        removed = self._drop_slots(st, slots)
        if removed:
            self._dirty = True
        return removed

    def _drop_slots(self, st: _State, slots: np.ndarray) -> int:
        present = slots[slots >= 0]
        if not len(present):
            return 0
        ids = st.slot_ids[present]
        st.slot_ids[present] = -1
        st.n_alive -= len(present)
        st.record(ids, [-1] * len(present))
        if st.graph is not None:
            for slot in present.tolist():
                st.graph.mark_deleted(slot)
        return len(present)

    # ---- maintenance -----------------------------------------------------------------------

    def _refit_due(self, st: _State) -> bool:
        if st.n_alive == 0:
            return False
        q = st.quantizer
        return q is None or (q.fitted_n < FIT_SAMPLE_CAP and st.n_alive >= REFIT_GROWTH * q.fitted_n)

    def _maintain(self, st: _State) -> None:
        """Refit after growth, compact when removed slots dominate, refresh the id index."""
        dead = st.n_slots - st.n_alive
        compact = dead > 0 and 2 * dead > st.n_slots
        refit = self._refit_due(st)
        if compact or refit:
            self._rebuild(st, refit=refit, compact=compact)
        if st.id_index is not None and st.id_index.stale:
            st.id_index = None

    def _rebuild(self, st: _State, *, refit: bool, compact: bool) -> None:
        """Re-encode every live vector from the originals and rebuild the graph."""
        alive = st.alive_slots()
        if compact:
            epoch = st.originals_epoch + 1
            fresh = _Originals.create(self.folder / fileformat.originals_name(epoch), self.dim)
            for block in _blocks(alive, _ROW_BLOCK):
                fresh.append(st.originals.get(block))
            fresh.flush()
            st.slot_ids = st.slot_ids[alive].copy()
            st.originals, st.originals_epoch = fresh, epoch
            st.n_slots = len(alive)
            alive = np.arange(len(alive), dtype=np.int64)
        if st.n_alive == 0:
            st.quantizer, st.graph = None, None
            st.codes = np.empty((0, 0), dtype=np.int8)
        else:
            if refit or st.quantizer is None:
                rng = np.random.default_rng(st.n_alive)
                take = min(len(alive), FIT_SAMPLE_CAP)
                sample = np.sort(rng.choice(alive, size=take, replace=False))
                st.quantizer = Quantizer.fit(st.originals.get(sample), self.params.graph_dims)
            quantizer = st.quantizer
            st.codes = np.zeros((max(st.n_slots, 1), quantizer.tail_dims), dtype=np.int8)
            graph = hnswlib.Index(space="ip", dim=quantizer.graph_dims)
            graph.init_index(
                max_elements=max(len(alive), 1), M=self.params.m, ef_construction=self.params.ef_construction
            )
            for block in _blocks(alive, _ROW_BLOCK):
                head, codes = quantizer.encode(st.originals.get(block))
                st.codes[block] = codes
                graph.add_items(head, block)
            st.graph = graph
        st.id_index = None

    # ---- search ----------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, *, ef: int | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for each query row.

        queries: (m, dim) or (dim,), the latter answered as m = 1. ef: graph candidates per
        query (default params.ef_search, times LOW_HEAD_BOOST for a query whose energy lies mostly
        outside the PCA head; more is slower and more exact). allowed: the only ids results may come
        from (a filter), scored exactly. Returns (ids (m, k) int64, scores (m, k) float32), best
        first, padded with id -1 and score -inf when the store (or `allowed`) holds fewer than k vectors.
        """
        st = self._live()
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise UsageError(f"queries must have shape (m, {self.dim}) or ({self.dim},), got {q.shape}")
        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        if ef is not None and ef < 1:
            raise UsageError(f"ef must be >= 1, got {ef}")
        if st.n_alive == 0 or len(q) == 0:
            return np.full((len(q), k), -1, dtype=np.int64), np.full((len(q), k), -np.inf, dtype=np.float32)
        if allowed is not None:
            slots = st.lookup(np.asarray(allowed, dtype=np.int64).reshape(-1))
            slots, scores = self._exact_search(st, q, k, np.sort(slots[slots >= 0]))
            return self._padded(st, slots, scores, k)
        cands = np.full(len(q), max(ef or self.params.ef_search, k))
        if ef is None and st.quantizer is not None and st.quantizer.tail_dims:
            cands[self._head_share(st, q) < LOW_HEAD_SHARE] *= LOW_HEAD_BOOST
        if st.graph is None or st.n_alive <= cands.max():
            slots, scores = self._exact_search(st, q, k)
        else:
            try:
                slots = np.empty((len(q), k), dtype=np.int64)
                scores = np.empty((len(q), k), dtype=np.float32)
                for c in np.unique(cands):
                    rows = np.flatnonzero(cands == c)
                    slots[rows], scores[rows] = self._graph_search(st, q[rows], k, int(c))
            except RuntimeError:  # hnswlib reached fewer than `cands` live nodes (heavy deletes)
                slots, scores = self._exact_search(st, q, k)
        self._refuse_garbled(st, q, scores)
        return self._padded(st, slots, scores, k)

    @staticmethod
    def _padded(st: _State, slots: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots to ids, padded to k columns with id -1 and score -inf (fewer than k stored or allowed)."""
        ids = st.slot_ids[slots]
        if slots.shape[1] < k:
            pad = k - slots.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return ids, scores

    @staticmethod
    def _head_share(st: _State, q: np.ndarray) -> np.ndarray:
        """Fraction of each query's energy in the graph's PCA head (the rest only the re-rank sees)."""
        assert st.quantizer is not None
        head = q @ st.quantizer.basis[:, : st.quantizer.head_dims]
        return np.einsum("ij,ij->i", head, head) / np.maximum(np.einsum("ij,ij->i", q, q), 1e-12)

    def _graph_search(self, st: _State, q: np.ndarray, k: int, cands: int) -> tuple[np.ndarray, np.ndarray]:
        quantizer, graph = st.quantizer, st.graph
        assert quantizer is not None and graph is not None
        graph_query, weights, bias = quantizer.prepare_queries(q)
        graph.set_ef(cands)
        labels, dist = graph.knn_query(graph_query, k=cands)
        labels = labels.view(np.int64)  # labels are slots, far below 2**63
        # hnswlib's "ip" distance is 1 - q·x: the exact head score.
        scores = (bias + 1.0)[:, None] - dist
        n_rescore = min(max(self.params.rescore, k), cands) if self.params.rescore else 0
        out_slots = np.empty((len(q), k), dtype=np.int64)
        out_scores = np.empty((len(q), k), dtype=np.float32)
        # One row at a time with 2-D operations: fewer and cheaper numpy calls than 3-D batches
        # for the usual single query, and bounded temporaries for large batches.
        for i in range(len(q)):
            slots, row = labels[i], scores[i]
            if quantizer.tail_dims:
                row = row + st.codes.take(slots, axis=0) @ weights[i]
            if n_rescore:
                if n_rescore < cands:
                    slots = slots[np.argpartition(row, cands - n_rescore)[cands - n_rescore :]]
                row = st.originals.get(slots) @ q[i]
            order = np.argsort(row)[::-1][:k]
            out_slots[i], out_scores[i] = slots[order], row[order]
        return out_slots, out_scores

    def _refuse_garbled(self, st: _State, q: np.ndarray, scores: np.ndarray) -> None:
        """Unit vectors score within ±|q|: a score beyond (or NaN) comes from a garbled original."""
        if not (np.abs(scores) <= 1.1 * np.linalg.norm(q, axis=1, keepdims=True) + 1e-6).all():
            raise IndexCorruptError(
                f"{st.originals.path.name} in {self.folder} holds garbled vectors; "
                "`retrieval doctor --fix` drops them and the next ingest embeds those images again"
            )

    def _exact_search(
        self, st: _State, q: np.ndarray, k: int, slots: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every live slot, or over `slots` (ascending: the originals are read in order)."""
        best_slots = np.empty((len(q), 0), dtype=np.int64)
        best_scores = np.empty((len(q), 0), dtype=np.float32)
        for block in _blocks(st.alive_slots() if slots is None else slots, _ROW_BLOCK):
            scores = q @ st.originals.get(block).T
            self._refuse_garbled(st, q, scores)  # a NaN would otherwise sort out of sight
            slots = np.broadcast_to(block, scores.shape)
            best_slots = np.concatenate([best_slots, slots], axis=1)
            best_scores = np.concatenate([best_scores, scores], axis=1)
            order = _top(best_scores, min(k, best_scores.shape[1]))
            best_slots = np.take_along_axis(best_slots, order, axis=1)
            best_scores = np.take_along_axis(best_scores, order, axis=1)
        return best_slots, best_scores

    # ---- persistence -----------------------------------------------------------------------

    def save(self) -> int:
        """Write a new generation atomically and return it (the current one if nothing changed)."""
        st = self._writable_state()
        if not self._dirty:
            return st.generation
        self._maintain(st)
        st.originals.flush()
        gen = st.generation + 1
        files: dict[str, dict[str, Any]] = {}
        files["slots"] = fileformat.write_file(
            self.folder,
            fileformat.gen_name(gen, "slots"),
            np.ascontiguousarray(st.slot_ids[: st.n_slots]).data,
        )
        if st.quantizer is not None and st.graph is not None:
            buf = io.BytesIO()
            np.savez(buf, **st.quantizer.to_arrays())  # type: ignore[arg-type]  # numpy's stub: **kw as allow_pickle
            files["quantizer"] = fileformat.write_file(
                self.folder, fileformat.gen_name(gen, "quantizer.npz"), buf.getbuffer()
            )
            codes = np.ascontiguousarray(st.codes[: st.n_slots])
            # A store whose vectors fit entirely in the graph head has an empty int8 tail.
            code_bytes = codes.data.cast("B") if codes.size else memoryview(b"")
            files["codes"] = fileformat.write_file(self.folder, fileformat.gen_name(gen, "codes"), code_bytes)
            files["graph"] = fileformat.write_graph(self.folder, fileformat.gen_name(gen, "graph"), st.graph)
        fileformat.fsync_dir(self.folder)
        previous = st.file_names() if st.generation >= 0 else set()
        body = {
            "generation": gen,
            "dim": self.dim,
            "params": self.params.to_dict(),
            "n_slots": st.n_slots,
            "n_alive": st.n_alive,
            "originals": {"name": st.originals.path.name, "rows": st.n_slots, "epoch": st.originals_epoch},
            "files": files,
            "previous": sorted(previous),
        }
        fileformat.write_manifest(self.folder, body)
        st.generation, st.files = gen, files
        self._dirty = False
        fileformat.remove_unreferenced(self.folder, st.file_names() | previous)
        return gen

    def reload_if_changed(self) -> bool:
        """Switch to a newer generation written by another process; returns whether it did.

        Raises:
            UsageError: this store holds unsaved changes.
            IndexCorruptError: the newer generation is damaged (the current one stays in use).
        """
        st = self._live()
        if fileformat.read_manifest(self.folder)["generation"] == st.generation:
            return False
        if self._dirty:
            raise UsageError(
                f"the vector store in {self.folder} has unsaved changes; save() before reloading"
            )
        manifest, state = _load_current(self.folder, writable=self.writable)
        self.params = StoreParams.from_dict(manifest["params"])
        self._state = state
        return True

    def stats(self) -> dict[str, Any]:
        """Sizes and settings for status displays and benchmarks."""
        st = self._live()
        disk = sum(int(entry["size"]) for entry in st.files.values()) + st.n_slots * self.dim * 4
        graph_bytes = 0
        if st.graph is not None:
            graph_bytes = _graph_ram(
                st.graph.element_count, st.graph.get_max_elements(), st.graph.dim, self.params.m
            )
        ram = (
            graph_bytes
            + st.codes.nbytes
            + st.slot_ids.nbytes
            + (st.id_index.nbytes if st.id_index is not None else 0)
            + st.originals.pending_bytes
            + (st.quantizer.basis.nbytes if st.quantizer is not None else 0)
        )
        return {
            "n": st.n_alive,
            "dim": self.dim,
            "params": self.params.to_dict(),
            "generation": st.generation,
            "slots": st.n_slots,
            "bytes_on_disk": disk,
            "ram_bytes_estimate": ram,
            "quantizer": st.quantizer.info() if st.quantizer is not None else None,
        }


# ---- helpers -------------------------------------------------------------------------------


def _as_ids(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise UsageError(f"ids must be a 1-D sequence of integers, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise UsageError(f"ids must be >= 0 (-1 marks padding), got {int(arr.min())}")
    return arr


def _grow(arr: np.ndarray, rows: int, fill: int = 0) -> np.ndarray:
    """Return `arr` with room for `rows` rows, doubling to keep appends amortised O(1)."""
    if rows <= len(arr):
        return arr
    grown = np.full((max(rows, 2 * len(arr), 64), *arr.shape[1:]), fill, dtype=arr.dtype)
    grown[: len(arr)] = arr
    return grown


def _blocks(arr: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(arr), size):
        yield arr[start : start + size]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first."""
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _unusable(vectors: np.ndarray) -> np.ndarray:
    """Rows that cannot be stored vectors (unit length, or zero): damage no generation checksum covers."""
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
    return ~(np.isfinite(norms) & ((np.abs(norms - 1) < 1e-3) | (norms < 1e-6)))


def _graph_add(graph: hnswlib.Index | None, head: np.ndarray, slots: np.ndarray) -> None:
    assert graph is not None
    need = graph.element_count + len(slots)
    if need > graph.get_max_elements():
        graph.resize_index(max(need, 2 * graph.get_max_elements()))
    graph.add_items(head, slots)


def _graph_ram(count: int, capacity: int, dims: int, m: int) -> int:
    """hnswlib's resident bytes: level-0 records, upper links, and per-slot bookkeeping."""
    level0 = dims * 4 + 4 + 2 * m * 4 + 8  # vector, link count + links, label
    upper = (4 + m * 4) / max(m - 1, 1)  # expected upper-level link lists per node
    bookkeeping = 40 + 8 + 4 + 2  # mutex, link-list pointer, level, visited-list entry
    label_map = 40  # unordered_map node per label
    label_locks = 65536 * 40  # fixed table of mutexes
    return int(count * (level0 + upper + label_map) + capacity * bookkeeping + label_locks)


def _load_current(folder: Path, *, writable: bool) -> tuple[dict[str, Any], _State]:
    """Read the pointer and load its generation, retrying if a writer deletes it meanwhile."""
    for _ in range(_OPEN_ATTEMPTS):
        manifest = fileformat.read_manifest(folder)
        try:
            return manifest, _load_state(folder, manifest, writable=writable)
        except FileNotFoundError as exc:
            if fileformat.read_manifest(folder)["generation"] == manifest["generation"]:
                raise IndexCorruptError(f"{Path(exc.filename).name} is missing from {folder}") from None
    raise IndexCorruptError(f"{folder} changes faster than it can be opened; retry")


def _load_state(folder: Path, manifest: dict[str, Any], *, writable: bool) -> _State:
    try:
        files: dict[str, dict[str, Any]] = manifest["files"]
        dim = int(manifest["dim"])
        n_slots = int(manifest["n_slots"])
        originals_entry = manifest["originals"]
        generation = int(manifest["generation"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexCorruptError(f"{folder / MANIFEST} lacks {exc}") from None
    slots_path = fileformat.verified(folder, files["slots"])
    slot_ids = np.fromfile(slots_path, dtype=np.int64)
    if len(slot_ids) != n_slots:
        raise IndexCorruptError(f"{slots_path.name} holds {len(slot_ids)} slots, the manifest says {n_slots}")
    quantizer, graph = None, None
    codes = np.empty((0, 0), dtype=np.int8)
    if "quantizer" in files:
        q_path = fileformat.verified(folder, files["quantizer"])
        try:
            with np.load(q_path, allow_pickle=False) as arrays:
                quantizer = Quantizer.from_arrays(arrays)
        except (OSError, ValueError, IndexCorruptError) as exc:
            raise IndexCorruptError(f"{q_path.name} is unreadable: {exc}") from None
        if quantizer.dim != dim:
            raise IndexCorruptError(f"{q_path.name} is for dim {quantizer.dim}, the manifest says {dim}")
        codes_path = fileformat.verified(folder, files["codes"])
        codes = np.fromfile(codes_path, dtype=np.int8)
        if codes.size != n_slots * quantizer.tail_dims:
            raise IndexCorruptError(f"{codes_path.name} has {codes.size} bytes, expected {n_slots} rows")
        codes = codes.reshape(n_slots, quantizer.tail_dims)
        graph_path = fileformat.verified(folder, files["graph"])
        graph = hnswlib.Index(space="ip", dim=quantizer.graph_dims)
        try:
            graph.load_index(str(graph_path))
        except RuntimeError as exc:
            raise IndexCorruptError(f"{graph_path.name} is unreadable: {exc}") from None
        if graph.element_count > n_slots:
            raise IndexCorruptError(f"{graph_path.name} holds more nodes than the store has slots")
    originals = _Originals(folder / originals_entry["name"], dim, n_slots, writable=writable)
    n_alive = int((slot_ids >= 0).sum())
    return _State(
        generation=generation,
        quantizer=quantizer,
        graph=graph,
        codes=codes,
        slot_ids=slot_ids,
        n_slots=n_slots,
        n_alive=n_alive,
        originals=originals,
        originals_epoch=int(originals_entry.get("epoch", 0)),
        id_index=None,
        files=files,
    )
