"""Quantized, crash-safe vector store: HNSW over a PCA head, int8 re-rank, float32 re-score.

Search runs in three stages (see retrieval/quantizer.py for the transform):

1. a walk of an HNSW graph (built by hnswlib, space "ip", over the float32 *head* of
   each rotated vector, completed to unit length) returns `ef` candidates with their
   head scores. A large saved store (`filtered.COMPILED_MIN_N` vectors) walks the
   saved graph's links itself (`walk.Links`, compiled), scoring int8 *head codes*
   (`filtered.HeadCodes`) from the best of a sample of start nodes; a query from
   another distribution (text against images: little energy where the data lies)
   scans instead where that costs little enough (SCAN_BYTES): every slot's
   signs (`signs`), then the best of those on their head codes. Smaller
   stores, and writers holding unsaved changes, ask hnswlib;
2. each candidate's score is completed with the int8 *tail* codes held in RAM;
3. the best `rescore` candidates (COMPILED_RESCORE times that after int8 head scores)
   are scored exactly against the float32 originals, which stay on disk and are
   memory-mapped (the Qdrant/Milvus "rescore" step). Where that is every candidate,
   stage 2 is skipped (`tuning.EVERY`: cheaper where the tail is long).

How many candidates a large store's search collects (`ef`) and how many it scores
exactly are chosen by its saves, from probe queries drawn from the store itself
(`tuning`): collections differ by a factor of ten in the ef they need.

A reader of a large store holds about a byte per dimension (head and tail codes)
plus the graph's links in RAM; it loads hnswlib's copy of the graph (a float32 head
per vector) only where a walk reaches too few live vectors (heavy deletes) and
hnswlib answers instead (BENCHMARKS.md has the figures).

A store is a folder written by one writer and read by any number of processes:

    MANIFEST.json            names the current generation; replaced atomically
    originals-000000.f32     float32 originals, append-only; valid rows recorded in the manifest
    g00000007.slots          int64 id of each slot (-1 = removed)
    g00000007.codes          int8 tail codes, one row per slot
    g00000007.graph          hnswlib index over the heads; labels are slots
    g00000007.head           int8 head codes (their step and offset, then a row per slot), large stores
    g00000007.quantizer.npz  rotation and int8 ranges

`save()` writes every file of generation g under a temporary name, fsyncs and
renames it, then replaces MANIFEST.json. Generation g-1 stays on disk so that a
reader which has just read the old pointer can still open it; older ones are
deleted. A crash at any moment leaves the last complete generation usable.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import hnswlib
import numpy as np

from retrieval.errors import (
    IndexCorruptError,
    RetrievalError,
    UsageError,
)
from retrieval.vectors.hnsw import fileformat, filtered, tuning
from retrieval.vectors.hnsw.fileformat import MANIFEST
from retrieval.vectors.hnsw.originals import Originals as _Originals
from retrieval.vectors.hnsw.quantizer import Quantizer

if TYPE_CHECKING:  # numba loads only when a large store is first searched
    from retrieval.vectors.hnsw.signs import Signs
    from retrieval.vectors.hnsw.walk import Level0, Links

#: The quantizer is refitted (and the graph rebuilt) when the collection reaches
#: REFIT_GROWTH times the size it was fitted on, until it was fitted on FIT_SAMPLE_CAP.
FIT_SAMPLE_CAP = 50_000
REFIT_GROWTH = 2
_ROW_BLOCK = 16384
#: A query with less than LOW_HEAD_SHARE of its energy where the data lies (`Quantizer.head_share`: text
#: queries against image embeddings 0.33-0.40, images 0.74-0.96 on the CLIP-like generator) is steered by
#: a small part of itself in the graph walk, so by default it gets LOW_HEAD_BOOST times the candidates, or
#: the scan below (BENCHMARKS.md, search section).
LOW_HEAD_SHARE = 0.5
LOW_HEAD_BOOST = 2
#: A filtered search collects FILTER_EF allowed candidates per query by default (times LOW_HEAD_BOOST as
#: above) for the re-rank, fewer than an unfiltered one (the post-filter's width and the walk's cost grow
#: with it). At 1M the walk on a folder of half the store reached recall@10 0.970 with 128, 0.987 with
#: 192, 0.990 with 256 (a separate run, before the scan's first stage and the post-filter).
FILTER_EF = 192
#: Read-only allowed arrays whose slots, mask, lead codes and walk set are kept (at 1M, a set of half the
#: store keeps ~22 MB). One slot thrashed when filtered sessions took turns: every switch rebuilt the set
#: (~10 ms at 1M) and forgot that its queries tend to miss (the probe below).
FILTER_SETS = 4
#: A compiled search (`_compiled_search`) starts from the best SEEDS of a fixed sample of live slots, and
#: re-scores COMPILED_RESCORE times `rescore` candidates exactly: its head scores are int8, not float32
#: (CLIP-like data at 100k, image queries, ef 512: the walk's candidates held 0.984 of the true top-10,
#: re-scoring 32 kept 0.982, 48 kept 0.984).
#: A query from another distribution scans instead where one scan costs at most SCAN_BYTES of head rows,
#: keeping SCAN_CANDS for the re-rank: CLIP-like data at 100k (444-dim heads, 44 MB), text queries reached
#: recall@10 0.998 in 13.7 ms (0.979 keeping 128, 0.994 keeping 256) against 0.92 by the walk at ef 768.
#: Every graph walks such queries badly: their best matches are spread over the images' clusters. At 1M
#: (444 MB of codes, on two cores) the scan reached 0.994 at 32 q/s, the walk 0.840 at ef 3072 (117 q/s),
#: faiss HNSWFlat M=32 and usearch f16 at most 0.855 by ef 3072. A scan of a large store scores every
#: slot's signs and only the best rows by them on their head codes (`_scan`, `signs.scan_reads`): up to
#: ~3M CLIP-like vectors (a scan then takes ~50 ms on two cores, as one of every head of 1.15M did before
#: the sign stage); at 3M (the scan's steps without a graph, 200 queries) it kept recall@10 0.996 for image
#: and 0.992 for text queries, 0.994 / 0.990 at 1M.
#: An image-like query ranks the sample on its first SEED_DIMS head coordinates: as good a start there
#: (CLIP-like data at 100k: recall@10 0.687 / 0.881 / 0.980 at ef 32 / 128 / 512 against 0.691 / 0.885 /
#: 0.980 on all 444; `vectors` the same to the 4th digit) for a seventh of the bytes read. A text-like
#: query's energy lies outside the leading directions, so it ranks on all (0.806 against 0.874 at ef 512).
SEEDS = 16
SEED_DIMS = 64
COMPILED_RESCORE = 3
SCAN_BYTES = 512 << 20
SCAN_CANDS = 512
_OPEN_ATTEMPTS = 5
#: Ids map to slots through a table indexed by id (8 bytes per id up to the largest, one gather per lookup)
#: while the largest id is at most DENSE_IDS times the number stored, else by binary search in sorted
#: arrays (16 bytes per id): a filter's 500k ids take ~2 ms from the table, ~170 ms by binary search at 1M.
DENSE_IDS = 2


@dataclass(frozen=True)
class StoreParams:
    """Index settings; the defaults are the measured choice in BENCHMARKS.md.

    graph_dims: length of the graph's vectors: graph_dims - 1 PCA dims kept exact plus one that
        completes them to unit length (None = all dims exact, no int8 tail).
    m, ef_construction: hnswlib graph degree and build beam. m 20: on the CLIP-like generator at 100k
        (image queries, compiled search, interleaved) m 20 reached recall@10 0.982 at ef 512 and 393 q/s,
        m 16 0.980 only at ef 768 and 354 q/s, m 12 0.967 at ef 768.
    ef_search: default number of graph candidates per query (the speed/recall knob) where no save has
        chosen one (`tune_ef`): 640 keeps the CLIP-like image queries at 100k above 0.98 (0.987 there;
        0.979-0.982 at 512, by graph).
    rescore: how many best candidates are re-scored against the float32 originals (0 = none).
    adapt_head: let each fit lengthen the head where the data needs it (`quantizer.adapted_head`): with
        graph_dims as its shortest, a sample of 5,000 vectors or more chooses it.
    tune_ef: let each save of a store the compiled search answers choose the default ef from probe
        queries drawn from the store (`tuning`), in place of ef_search.
    """

    graph_dims: int | None = 112
    m: int = 20
    ef_construction: int = 200
    ef_search: int = 640
    rescore: int = 16
    adapt_head: bool = True
    tune_ef: bool = True

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
    """id → slot lookups without a Python dict entry (~100 bytes) per id: a table indexed by id where ids are
    dense (as a database's are), else sorted arrays; plus the changes since it was built."""

    def __init__(self, slot_ids: np.ndarray) -> None:
        alive = np.flatnonzero(slot_ids >= 0)
        keys = slot_ids[alive]
        top = int(keys.max()) + 1 if len(keys) else 0
        self._table: np.ndarray | None = None
        self._keys = self._slots = np.empty(0, dtype=np.int64)
        if top <= DENSE_IDS * len(keys) + 1024:
            self._table = np.full(top, -1, dtype=np.int64)
            self._table[keys] = alive
        else:
            order = np.argsort(keys, kind="stable")
            self._keys = keys[order]
            self._slots = alive[order]
        self._n = len(keys)
        self._recent: dict[int, int] = {}  # changes since the arrays were built; -1 = removed

    @property
    def stale(self) -> bool:
        return len(self._recent) > max(4096, self._n // 4)

    @property
    def nbytes(self) -> int:
        table = self._table.nbytes if self._table is not None else 0
        return table + self._keys.nbytes + self._slots.nbytes + 100 * len(self._recent)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where absent."""
        out = np.full(len(ids), -1, dtype=np.int64)
        if self._table is not None:
            inside = np.flatnonzero((ids >= 0) & (ids < len(self._table)))
            out[inside] = self._table[ids[inside]]
        elif len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, ids), len(self._keys) - 1)
            hit = self._keys[pos] == ids
            out[hit] = self._slots[pos[hit]]
        if self._recent and len(ids) <= len(self._recent):
            for i, key in enumerate(ids.tolist()):
                slot = self._recent.get(key)
                if slot is not None:
                    out[i] = slot
        elif self._recent:  # a large lookup (a filter's ids): the changes as sorted arrays, not a loop per id
            keys = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
            slots = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
            order = np.argsort(keys)
            keys, slots = keys[order], slots[order]
            pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
            hit = keys[pos] == ids
            out[hit] = slots[pos[hit]]
        return out

    def update(self, ids: Iterable[int], slots: Iterable[int]) -> None:
        self._recent.update(zip(ids, slots, strict=True))


@dataclass(eq=False)
class _State:
    """Everything one generation holds in memory; swapped as a whole by reload_if_changed()."""

    generation: int
    quantizer: Quantizer | None
    loaded_graph: hnswlib.Index | None  # see `graph`
    codes: np.ndarray  # (capacity, tail_dims) int8; rows [:n_slots] are valid
    slot_ids: np.ndarray  # (capacity,) int64; -1 = removed
    n_slots: int
    n_alive: int
    originals: _Originals
    originals_epoch: int
    id_index: _IdIndex | None  # built on first lookup by id: search-only readers never pay for it
    files: dict[str, dict[str, Any]]  # this generation's files as recorded in the manifest
    head_codes: filtered.HeadCodes | None = None  # saved with a large generation, else built by a first scan
    signs: Signs | None = None  # the full scan's first stage, built from the codes by the first such scan
    level0: Level0 | Literal[False] | None = (
        None  # the saved graph's bottom layer once a walk needs it; False: none
    )
    links: Links | Literal[False] | None = None  # its links by slot, for the compiled search; False: none
    seeds: np.ndarray | None = None  # live slots a compiled search starts from the best of
    seed_codes: np.ndarray | None = None  # their head codes
    seed_lead: np.ndarray | None = None  # the first SEED_DIMS columns of those
    graph_file: Path | None = None  # the saved graph a reader loads into hnswlib on first need
    tuned: tuning.Tuning | None = None  # the default ef and re-score depth its save chose

    @property
    def has_graph(self) -> bool:
        return self.loaded_graph is not None or self.graph_file is not None

    @property
    def graph(self) -> hnswlib.Index | None:
        """The hnswlib graph, loaded on first use in a reader: a large store's unfiltered searches walk the
        saved file's links (`walk.Links`) and never need it, and it holds a float32 head per vector."""
        if self.loaded_graph is None and self.graph_file is not None:
            assert self.quantizer is not None
            self.loaded_graph = _load_graph(self.graph_file, self.quantizer.graph_dims, self.n_slots)
            self.graph_file = None
        return self.loaded_graph

    @graph.setter
    def graph(self, graph: hnswlib.Index | None) -> None:
        self.loaded_graph, self.graph_file = graph, None

    def head_codes_now(self) -> filtered.HeadCodes:
        """The int8 heads of every slot, built or extended to the current slots."""
        assert self.quantizer is not None
        if self.head_codes is None or self.head_codes.quantizer is not self.quantizer:
            self.head_codes = filtered.HeadCodes.build(self.quantizer, self.originals, self.n_slots)
        else:
            self.head_codes.extend(self.originals, self.n_slots)
        return self.head_codes

    def signs_now(self) -> Signs:
        """The signs of every slot's rotated coordinates (`signs.Signs`), built or extended to the current
        slots."""
        from retrieval.vectors.hnsw.signs import Signs

        head = self.head_codes_now()
        if self.signs is None or self.signs.head is not head:
            self.signs = Signs.build(head, self.codes, self.n_slots)
        else:
            self.signs.extend(self.codes, self.n_slots)
        return self.signs

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


@dataclass(eq=False)
class _Allowed:
    """An allowed set's live slots, ascending, with what filtered searches build from them once."""

    slots: np.ndarray
    mask: bytes | None = None  # one byte per slot, for the filtered walks and the post-filter
    lead: filtered.Lead | None = None  # for the two-stage scan
    walk: filtered.WalkSet | None = None  # for the compiled walk over the graph file
    seeds: tuple[np.ndarray, np.ndarray] | None = None  # a sample of its slots and their lead codes
    tries: int = 0  # post-filtered searches of this set so far,
    misses: int = 0  # and how many of them held too few allowed nodes


class VectorStore:
    """Int64 id → L2-normalised float32 vector, searched by inner product; see the module docstring.

    Not thread-safe for writes; searches may run concurrently with `reload_if_changed()`, and go on with the
    current generation while a reload warms the next (`reload_if_changed(warm=True)`).
    """

    def __init__(self, folder: Path, dim: int, params: StoreParams, state: _State, *, writable: bool):
        self.folder = folder
        self.dim = dim
        self.params = params
        self.writable = writable
        self._state: _State | None = state
        self._dirty = False
        # (allowed array, state, n_slots, what searches keep of it): see _allowed_slots; dropped by removals
        # the last FILTER_SETS read-only allowed arrays searched, newest last, with what was built for them
        self._filter_cache: list[tuple[np.ndarray, _State, int, _Allowed]] = []
        self._reloading = threading.Lock()  # one reload at a time; others keep the current generation

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
            loaded_graph=None,
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
        self._filter_cache.clear()  # their slots may include these
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
                st.quantizer = Quantizer.fit(
                    st.originals.get(sample), self.params.graph_dims, adapt=self.params.adapt_head
                )
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
        st.head_codes = st.signs = None  # slots renumbered or a new rotation
        self._filter_cache.clear()

    # ---- search ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Build now what the first searches would build: the graph's links in RAM, the scan's signs, the
        compiled kernels loaded. A server calls it at start (`Engine.warm_up`): at 1M CLIP-like vectors the
        first text query after opening took 3.7 s with the files cached (links 2.0 s, signs 1.5 s, kernels
        0.2 s), 11 s from a cold start, the next ones ~20 ms."""
        self._warm(self._live())

    def _warm(self, st: _State) -> None:
        """`warm_up` for generation `st`, live or about to be."""
        if st.n_alive == 0 or st.quantizer is None:
            return
        slot = int(np.flatnonzero(st.slot_ids[: st.n_slots] >= 0)[0])
        stored = st.originals.get(np.array([slot]))  # an image-like query: the walk
        # no energy where the data lies, as a text query's against images: the scan, where one would run
        elsewhere = st.quantizer.basis[:, -1][None]
        self._search(st, np.vstack([stored, elsewhere]).astype(np.float32), 1, None, None)

    def search(
        self, queries: np.ndarray, k: int, *, ef: int | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for each query row.

        queries: (m, dim) or (dim,), the latter answered as m = 1. ef: graph candidates per
        query (default: the one this store's last save chose, `tuning`, scaled by k / 10 for more than
        10 results, else params.ef_search; times LOW_HEAD_BOOST for a query whose energy lies mostly
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
        return self._search(st, q, k, ef, allowed)

    def _search(
        self, st: _State, q: np.ndarray, k: int, ef: int | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` in generation `st` of checked (m, dim) float32 queries."""
        if st.n_alive == 0 or len(q) == 0:
            return np.full((len(q), k), -1, dtype=np.int64), np.full((len(q), k), -np.inf, dtype=np.float32)
        if allowed is not None:
            return self._filtered_search(st, q, k, ef, allowed)
        # Python ints and lists for the per-query bookkeeping: a numpy call costs ~2 µs whatever its size,
        # and a small query little more than 100 (`vectors` data at 100k, ef 32: ~120-130 µs warm)
        widest = max(ef or self._default_ef(st, k), k)
        cands = np.full(len(q), widest)
        found = None
        if st.quantizer is not None:
            # the compiled search's query rows hold the share's coordinates; hnswlib's path makes its own
            links = self._links(st)
            # without the tail weights: _compiled_search adds them where a row needs them
            prepared = st.quantizer.prepare_queries(q, tail=False) if links is not None else None
            low = st.quantizer.head_share(q, None if prepared is None else prepared[0]) < LOW_HEAD_SHARE
            if ef is None:
                if any(low.tolist()):
                    cands[low] *= LOW_HEAD_BOOST
                    widest *= LOW_HEAD_BOOST
                tuned = self._tuned(st)
                if tuned is not None and tuned.scan:
                    low[:] = True  # this store's graph does not reach the target at any ef: scan
            if links is not None and prepared is not None and st.n_alive > widest:
                found = self._compiled_search(st, links, q, prepared, k, cands, low & (ef is None))
        if found is not None:
            slots, scores = found
        elif not st.has_graph or st.n_alive <= widest:
            slots, scores = self._exact_search(st, q, k)
        else:
            try:
                if len(q) == 1:  # the usual single query: no grouping by candidate count
                    slots, scores = self._graph_search(st, q, k, int(cands[0]))
                else:
                    slots = np.empty((len(q), k), dtype=np.int64)
                    scores = np.empty((len(q), k), dtype=np.float32)
                    for c in np.unique(cands):
                        rows = np.flatnonzero(cands == c)
                        slots[rows], scores[rows] = self._graph_search(st, q[rows], k, int(c))
            except RuntimeError:  # hnswlib reached fewer than `cands` live nodes (heavy deletes)
                slots, scores = self._exact_search(st, q, k)
        self._refuse_garbled(st, q, scores)
        return self._padded(st, slots, scores, k)

    def default_ef(self, k: int = tuning.K) -> int:
        """Graph candidates a query for k results gets unless it asks for its own `ef`."""
        return self._default_ef(self._live(), k)

    def _default_ef(self, st: _State, k: int) -> int:
        tuned = self._tuned(st)
        if tuned is None:
            return self.params.ef_search
        return max(tuned.ef, -(-tuned.ef * k // tuning.K))

    def _tuned(self, st: _State) -> tuning.Tuning | None:
        """The choice searches follow: the last save's, unless params.tune_ef is off."""
        return st.tuned if self.params.tune_ef else None

    @staticmethod
    def _padded(st: _State, slots: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots to ids, padded to k columns with id -1 and score -inf (fewer than k stored or allowed)."""
        ids = st.slot_ids[slots]
        if slots.shape[1] < k:
            pad = k - slots.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return ids, scores

    def _graph_search(self, st: _State, q: np.ndarray, k: int, cands: int) -> tuple[np.ndarray, np.ndarray]:
        quantizer, graph = st.quantizer, st.graph
        assert quantizer is not None and graph is not None
        graph_query, weights, bias = quantizer.prepare_queries(q)
        graph.set_ef(cands)
        labels, dist = graph.knn_query(graph_query, k=cands)
        labels = labels.view(np.int64)  # labels are slots, far below 2**63
        # hnswlib's "ip" distance is 1 - q·x: the exact head score.
        scores = (bias + 1.0)[:, None] - dist
        if len(q) == 1:
            found, best = self._rerank(st, q[0], labels[0], scores[0], weights[0], k)
            return found[None], best[None]
        out_slots = np.empty((len(q), k), dtype=np.int64)
        out_scores = np.empty((len(q), k), dtype=np.float32)
        # One row at a time with 2-D operations: fewer and cheaper numpy calls than 3-D batches
        # for the usual single query, and bounded temporaries for large batches.
        for i in range(len(q)):
            out_slots[i], out_scores[i] = self._rerank(st, q[i], labels[i], scores[i], weights[i], k)
        return out_slots, out_scores

    def _compiled_search(
        self,
        st: _State,
        links: Links,
        q: np.ndarray,
        prepared: tuple[np.ndarray, np.ndarray, np.ndarray],
        k: int,
        cands: np.ndarray,
        low: np.ndarray,
        hidden: np.ndarray | None = None,
        rescore: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The graph search of a large saved store, compiled (`walk.Links`): a best-first walk over the saved
        graph's links that scores int8 head codes, from the best SEEDS of SEED_SAMPLE live slots, then the
        re-rank, all in one compiled call (`onepass`). `prepared`: the queries' `prepare_queries`, whose
        tail weights may be left out (`tail=False`): they are added where a query needs them. A `low`
        query (little energy where the data lies: text against images) scans instead (`_scan`) where that
        costs at most SCAN_BYTES (`_scannable`). `hidden`: a slot per query that its walk never visits
        (-1: none; tuning's probes). `rescore`: how many candidates are scored exactly (default: the last
        save's choice, per 10 results, else COMPILED_RESCORE × params.rescore). None where the walk reached
        fewer than k live slots (heavy deletes)."""
        from retrieval.vectors.hnsw import scan

        head = st.head_codes_now()
        graph_query, weights, bias = prepared
        originals = st.originals.mapped
        quantizer = st.quantizer
        assert quantizer is not None
        n_rescore = max(self._compiled_rescore(st, k) if rescore is None else rescore, k)
        n_rescore = n_rescore if self.params.rescore else 0
        fused = n_rescore > 0 and originals is not None  # else the numpy re-rank, which needs the tail
        scans = self._scannable(st)
        # the tail ranks candidates for the exact re-score: not needed where every candidate gets it
        if weights.shape[1] != quantizer.tail_dims and (
            not fused or (scans and any(low.tolist())) or max(cands.tolist()) > n_rescore
        ):
            graph_query, weights, bias = quantizer.prepare_queries(q)
        out_slots = np.empty((len(q), k), dtype=np.int64)
        out_scores = np.empty((len(q), k), dtype=np.float32)
        for i in range(len(q)):
            c = int(cands[i])
            if low[i] and scans:
                slots, scores = self._scan(
                    st, head, q[i], graph_query[i], k, -1 if hidden is None else hidden[i]
                )
            elif fused and originals is not None:  # the usual walked query: one compiled call
                found, exact = self._one_pass(
                    st,
                    links,
                    (graph_query[i], weights[i], float(bias[i])),
                    q[i],
                    c,
                    n_rescore,
                    k,
                    lead=not low[i],
                    hidden=-1 if hidden is None else int(hidden[i]),
                )
                if len(found) < k:
                    return None
                if len(q) == 1:
                    return found[None], exact[None]
                out_slots[i], out_scores[i] = found, exact
                continue
            else:
                slots, scores = self._walk_links(
                    st, links, graph_query[i], c, -1 if hidden is None else hidden[i], lead=not low[i]
                )
            live = st.slot_ids[slots] >= 0
            if live.sum() < k:
                return None
            if not live.all():
                slots, scores = slots[live], scores[live]
            if originals is not None and n_rescore:
                out_slots[i], out_scores[i] = scan.rerank(
                    slots, scores + bias[i], st.codes, weights[i], originals, q[i], n_rescore, k
                )
            else:
                out_slots[i], out_scores[i] = self._rerank(
                    st, q[i], slots, scores + bias[i], weights[i], k, COMPILED_RESCORE
                )
        return out_slots, out_scores

    @staticmethod
    def _scan(
        st: _State, head: filtered.HeadCodes, q: np.ndarray, graph_query: np.ndarray, k: int, hidden: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best max(SCAN_CANDS, k) live slots by their whole int8 head score (not a walk's approximate
        order: as many whatever the ef), with those scores, for the re-rank. Of a large store, only the
        best rows by sign score (`signs`) are scored on their head; `hidden` (a slot, or -1) is left out."""
        from retrieval.vectors.hnsw import scan, signs

        assert st.quantizer is not None
        c = min(max(SCAN_CANDS, k), st.n_slots)
        head_weights, shift = head.weights(graph_query)
        keep = signs.keep_for(st.n_alive, 4 * c)
        if keep is not None:
            pool = signs.best(st.signs_now(), st.quantizer.rotate(q[None])[0], keep)
            pool = pool[(st.slot_ids[pool] >= 0) & (pool != hidden)]
            scores = scan.head_scores(head.rows, pool, head_weights) + shift
        else:
            pool = np.arange(st.n_slots)
            scores = scan.all_scores(head.rows[: st.n_slots], head_weights) + shift
            scores[st.slot_ids[: st.n_slots] < 0] = -np.inf
            if hidden >= 0:
                scores[hidden] = -np.inf
        c = min(c, len(pool))
        top = np.argpartition(scores, len(scores) - c)[len(scores) - c :]
        return pool[top], scores[top]

    @staticmethod
    def _scannable(st: _State) -> bool:
        """Whether one scan of the store costs at most SCAN_BYTES (`signs.scan_reads`)."""
        from retrieval.vectors.hnsw import signs

        q = st.quantizer
        assert q is not None
        return signs.scan_reads(st.n_slots, st.n_alive, q.head_dims, q.dim, 4 * SCAN_CANDS) <= SCAN_BYTES

    def _compiled_rescore(self, st: _State, k: int) -> int:
        """Candidates a compiled search scores exactly for k results: the last save's choice per 10 results,
        else COMPILED_RESCORE × params.rescore."""
        tuned = self._tuned(st)
        if tuned is not None:
            return -(-tuned.rescore * max(k, tuning.K) // tuning.K)
        return COMPILED_RESCORE * self.params.rescore

    @staticmethod
    def _one_pass(
        st: _State,
        links: Links,
        prepared: tuple[np.ndarray, np.ndarray, float],
        q: np.ndarray,
        width: int,
        n_rescore: int,
        k: int,
        *,
        lead: bool,
        hidden: int = -1,
        allowed: bytes | None = None,
        limit: int = 0,
        through: bool = False,
        least: int = 0,
        seeds: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One query's walk and re-rank in one compiled call (`onepass.answer`): its best k slots and exact
        scores, or none (heavy deletes; or `limit` expansions reached). `prepared`: the query's graph row,
        tail weights and bias; `allowed`: a byte per slot, only those kept (a filter), or stepped onto
        (`through`), and none where fewer than `least` of the start slots are; `seeds`: slots to start from
        and their leading head codes (default: the generation's sample, `_seed_sample`)."""
        from retrieval.vectors.hnsw import onepass, walk

        head = st.head_codes_now()
        graph_row, tail_weights, bias = prepared
        starts, start_codes = VectorStore._seed_sample(st, lead=lead) if seeds is None else seeds
        seen, mark = links.marks(hidden)
        return onepass.answer(
            graph_row,
            head.step,
            head.offset,
            starts,
            start_codes,
            SEEDS,
            links.offsets,
            links.flat,
            links.longest,
            head.rows,
            seen,
            mark,
            width,
            walk.EVERY if allowed is None else np.frombuffer(allowed, dtype=np.uint8),
            limit,
            through,
            least,
            st.slot_ids,
            st.codes,
            tail_weights,
            bias,
            st.originals.mapped,
            q,
            n_rescore,
            k,
        )

    @staticmethod
    def _walk_links(
        st: _State, links: Links, graph_query: np.ndarray, width: int, hidden: int = -1, *, lead: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best `width` slots the compiled walk reaches for one query (its graph row), with their head
        scores from the int8 codes, starting from the best SEEDS of a fixed sample of live slots (ranked on
        their first SEED_DIMS coordinates for a `lead` query: one that lies where the data does); it never
        visits slot `hidden`."""
        from retrieval.vectors.hnsw import scan

        head = st.head_codes_now()
        sample, sample_codes = VectorStore._seed_sample(st, lead=lead)
        weights, shift = head.weights(graph_query)
        first = scan._lead_scores(sample_codes, weights[: sample_codes.shape[1]])
        seeds = sample[np.argpartition(first, len(first) - SEEDS)[len(first) - SEEDS :]]
        slots, scores = links.search(head.rows, weights, seeds, width, hidden)
        return slots, scores + shift

    @staticmethod
    def _seed_sample(st: _State, *, lead: bool) -> tuple[np.ndarray, np.ndarray]:
        """The fixed sample of live slots walks start from, and their head codes to rank them by: the first
        SEED_DIMS columns for a `lead` query, else all (drawn once per generation)."""
        if st.seeds is None or st.seed_codes is None or st.seed_lead is None:
            st.seeds = filtered.start_sample(st.alive_slots())
            st.seed_codes = st.head_codes_now().codes[st.seeds]  # contiguous: one sequential read per query
            st.seed_lead = np.ascontiguousarray(st.seed_codes[:, :SEED_DIMS])
        return st.seeds, st.seed_lead if lead else st.seed_codes

    def _links(self, st: _State) -> Links | None:
        """The saved graph's links by slot (`_level0`'s conditions), copied once per generation; None also
        where the generation has no head codes at hand (saved before they were kept: encoding them here
        would hold up a query for a pass over every original, ~10 s at 1M; its next save writes them)."""
        if st.head_codes is None:
            return None
        level0 = self._level0(st)
        if level0 is None:
            return None
        if st.links is None:
            try:
                st.links = level0.links(st.n_slots)
            except (OSError, ValueError):  # the file changed under us or holds a link past its nodes
                st.links = False
        return st.links or None

    def _rerank(
        self,
        st: _State,
        q: np.ndarray,
        slots: np.ndarray,
        head: np.ndarray,
        weights: np.ndarray,
        k: int,
        widen: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best k of one query's candidates (`slots`, at least k, with their head scores plus the tail
        bias): head + int8 tail, then the best `widen`·`rescore` of those scored exactly from the originals
        (widened where the head scores are int8 too)."""
        assert st.quantizer is not None
        cands = len(slots)
        n_rescore = min(max(widen * self.params.rescore, k), cands) if self.params.rescore else 0
        row = head
        if st.quantizer.tail_dims:
            row = row + st.codes.take(slots, axis=0) @ weights
        if n_rescore:
            if n_rescore < cands:
                slots = slots[np.argpartition(row, cands - n_rescore)[cands - n_rescore :]]
            row = st.originals.get(slots) @ q
        order = np.argsort(row)[::-1][:k]
        return slots[order], row[order]

    def _filtered_search(
        self, st: _State, q: np.ndarray, k: int, ef: int | None, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among the allowed ids, by the way `filtered.choose` finds cheapest for their number."""
        entry = self._allowed_slots(st, allowed)
        slots = entry.slots
        m = len(slots)
        if m == 0:
            return np.full((len(q), k), -1, dtype=np.int64), np.full((len(q), k), -np.inf, dtype=np.float32)
        cands = np.full(len(q), max(ef or FILTER_EF, k))
        quantizer = st.quantizer
        widest = int(cands[0]) * (LOW_HEAD_BOOST if ef is None else 1)
        if (
            quantizer is None
            or filtered.choose(m, st.n_slots, st.n_alive, widest, graph=st.has_graph) == "exact"
        ):
            found, scores = self._exact_search(st, q, k, slots)
            self._refuse_garbled(st, q, scores)
            return self._padded(st, found, scores, k)
        graph_query, weights, bias = quantizer.prepare_queries(q)
        low = np.zeros(len(q), dtype=bool)
        if ef is None:
            low = quantizer.head_share(q, graph_query) < LOW_HEAD_SHARE
            cands[low] *= LOW_HEAD_BOOST
        way, other, walk_width = self._filter_ways(st, m, k, ef, int(cands.max()))
        width = min(k, m)  # fewer allowed than k: padded below
        walking = way == "graph"
        way = other
        links = self._links(st) if walking else None
        out_slots = np.empty((len(q), width), dtype=np.int64)
        out_scores = np.empty((len(q), width), dtype=np.float32)
        if (way == "post" or walking) and entry.mask is None:
            entry.mask = self._slot_mask(st, slots)
        for i in range(len(q)):
            c = min(int(cands[i]), m)
            post = None
            if walking and not low[i] and links is not None:
                answered = self._graph_filtered(
                    st,
                    links,
                    entry,
                    (graph_query[i], weights[i], float(bias[i])),
                    q[i],
                    (walk_width, c),
                    width,
                )
                if answered is not None:
                    out_slots[i], out_scores[i] = answered
                    continue
            elif way == "post":
                assert entry.mask is not None
                near = None  # the share of the query's nearest nodes that is allowed, where probed
                if entry.misses * filtered.MISS_RATE > entry.tries:
                    near = self._probe(st, graph_query[i], entry)
                if near is None or near >= filtered.PROBE_KEEP * m / st.n_alive:
                    post = self._post_filtered(st, graph_query[i], c, m, entry.mask, near)
                entry.tries += 1
                if post is None or len(post[0]) < width:
                    entry.misses += 1
                    post = self._walk(st, entry, graph_query[i], c)
            if post is not None and len(post[0]) >= width:
                picked, head = post
                head = head + (bias[i] + 1.0)
            else:  # the scan, or a post-filtered query that found too few allowed nodes
                head_codes = st.head_codes_now()
                compiled = filtered.compiled(st.n_alive)
                if entry.lead is None or entry.lead.head is not head_codes or entry.lead.compiled != compiled:
                    entry.lead = filtered.Lead.build(head_codes, slots, compiled=compiled)
                picked, head = entry.lead.candidates(graph_query[i], c)
                head = head + bias[i]
            out_slots[i], out_scores[i] = self._rerank(st, q[i], picked, head, weights[i], width)
        self._refuse_garbled(st, q, out_scores)
        return self._padded(st, out_slots, out_scores, k)

    def _filter_ways(self, st: _State, m: int, k: int, ef: int | None, cands: int) -> tuple[str, str, int]:
        """How a search of m allowed vectors goes (`filtered.choose`): the way for a query that lies where
        the data does, the way for others (text against images: they keep off the graph walk, as unfiltered
        ones do) and the compiled filtered walk's width (the unfiltered width), for `cands` candidates."""
        if st.quantizer is None:
            return "exact", "exact", 0
        other = filtered.choose(m, st.n_slots, st.n_alive, cands, graph=st.has_graph)
        width = max(ef or self._default_ef(st, k), k)
        tuned = self._tuned(st)
        if (
            other == "exact"
            or (tuned is not None and tuned.scan)  # this graph does not reach the target at any ef
            or st.originals.mapped is None
            or not self.params.rescore
            or self._links(st) is None
        ):
            return other, other, width
        way = filtered.choose(m, st.n_slots, st.n_alive, cands, graph=st.has_graph, walk=width)
        return way, other if way == "graph" else way, width

    def _graph_filtered(
        self,
        st: _State,
        links: Links,
        entry: _Allowed,
        prepared: tuple[np.ndarray, np.ndarray, float],
        q: np.ndarray,
        widths: tuple[int, int],
        k: int,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """One query's compiled filtered walk and re-rank (`filtered.GRAPH_NODE`): its best k allowed slots
        and exact scores, or None where the scan costs less. `widths`: the walk's (the unfiltered width)
        and the scan's candidates. A query whose best start slots are almost all disallowed, or whose walk
        gives up (a folder away from it), walks through allowed nodes only, from the best of a sample of
        them (`filtered.fallback`)."""
        mask = entry.mask
        assert mask is not None
        m, n = len(entry.slots), st.n_alive
        width, cands = widths
        n_rescore = max(self._compiled_rescore(st, k), k)
        found, exact = self._one_pass(
            st,
            links,
            prepared,
            q,
            width,
            n_rescore,
            k,
            lead=True,
            allowed=mask,
            limit=filtered.graph_limit(width, m, n),
            least=filtered.graph_least(SEEDS, m, n),
        )
        if len(found) >= k:
            return found, exact
        if filtered.fallback(m, n, cands, compiled=True, codes=True) == "scan":
            return None
        if entry.seeds is None:
            sample = filtered.start_sample(entry.slots)
            entry.seeds = sample, np.ascontiguousarray(st.head_codes_now().codes[sample, :SEED_DIMS])
        found, exact = self._one_pass(
            st,
            links,
            prepared,
            q,
            int(filtered.WALK_WIDTH * cands),
            n_rescore,
            k,
            lead=True,
            allowed=mask,
            through=True,
            seeds=entry.seeds,
        )
        return (found, exact) if len(found) >= k else None

    def _probe(self, st: _State, graph_query: np.ndarray, entry: _Allowed) -> float | None:
        """The share of the query's nearest PROBE nodes that is allowed (None: the graph reached too few):
        whether a post-filter is worth its cost, and how wide it must be."""
        mask = entry.mask
        assert mask is not None
        links = self._links(st)
        if links is not None:
            near, _ = self._walk_links(st, links, graph_query, filtered.PROBE)
            return float(np.frombuffer(mask, dtype=np.bool_)[near].mean())
        graph = st.graph
        assert graph is not None
        graph.set_ef(filtered.PROBE)
        try:
            labels, _ = graph.knn_query(graph_query[None], k=filtered.PROBE)
        except RuntimeError:  # fewer live nodes reachable than asked for (heavy deletes)
            return None
        return float(np.frombuffer(mask, dtype=np.bool_)[labels[0].view(np.int64)].mean())

    def _post_filtered(
        self, st: _State, graph_query: np.ndarray, cands: int, m: int, mask: bytes, near: float | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """An unfiltered graph search wide enough to hold about `cands` allowed nodes where allowed nodes
        are as common near the query as in the store (or as `near`, the probed share, says), kept to the
        allowed ones (their slots, and head score minus 1); None where fewer than POST_KEEP·cands are
        allowed (a folder away from the query)."""
        wide = filtered.post_width(cands, m, st.n_alive, near)
        links = self._links(st)
        if links is not None:  # a large saved store: the compiled walk, as its unfiltered searches
            found, head = self._walk_links(st, links, graph_query, wide)
            less_one = head - 1.0
        else:
            graph = st.graph
            assert graph is not None
            graph.set_ef(wide)
            try:
                labels, dist = graph.knn_query(graph_query[None], k=wide)
            except RuntimeError:  # fewer live nodes reachable than asked for (heavy deletes)
                return None
            found, less_one = labels[0].view(np.int64), -dist[0]
        keep = np.frombuffer(mask, dtype=np.bool_)[found]
        if keep.sum() < max(filtered.POST_KEEP * cands, 1):
            return None
        return found[keep], less_one[keep]

    def _walk(
        self, st: _State, entry: _Allowed, graph_query: np.ndarray, cands: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """A walk of the graph with the filter applied during the walk, for a query whose unfiltered
        neighbourhood held too few allowed nodes: their slots and head scores minus 1, or None where the
        scan costs less (`filtered.fallback`) or too few are reachable (heavy deletes)."""
        mask = entry.mask
        assert mask is not None
        level0 = self._level0(st)
        if filtered.fallback(len(entry.slots), st.n_alive, cands, compiled=level0 is not None) == "scan":
            return None
        if level0 is not None:
            if entry.walk is None or entry.walk.level0 is not level0:
                entry.walk = filtered.WalkSet.build(level0, mask, entry.slots)
            return entry.walk.candidates(graph_query, cands)
        graph = st.graph
        assert graph is not None
        graph.set_ef(cands)  # hnswlib's walk: it carries on through disallowed nodes
        try:
            labels, dist = graph.knn_query(graph_query[None], k=cands, filter=mask.__getitem__)
        except RuntimeError:
            return None
        return labels[0].view(np.int64), -dist[0]

    def _level0(self, st: _State) -> Level0 | None:
        """The saved graph's bottom layer for the compiled walk (a `walk.Level0`), or None: while this store
        holds unsaved changes (the file is not the graph in memory), below `filtered.COMPILED_MIN_N` vectors,
        or where numba or the file is missing."""
        if self._dirty or st.quantizer is None or "graph" not in st.files:
            return None
        if not filtered.compiled(st.n_alive):
            return None
        if st.level0 is None:
            st.level0 = False
            from retrieval.vectors.hnsw import walk  # numba: ~0.5 s to import, so only here

            try:
                level0 = walk.Level0.open(
                    self.folder / st.files["graph"]["name"], st.quantizer.graph_dims, st.n_slots
                )
            except (OSError, ValueError):  # removed by a writer since (two generations on), or unmappable
                return None
            st.level0 = level0 if level0 is not None else False
        return st.level0 or None

    def _allowed_slots(self, st: _State, allowed: np.ndarray) -> _Allowed:
        """The live slots of the allowed ids, ascending. An allowed array that is not writeable is taken
        to stay as it is: its slots (and what searches build from them: the scan's lead coordinates, the
        post-filter's mask) are kept for the next search given the same array (every query of a filtered
        session, a page of results), for the last FILTER_SETS such arrays (sessions with their own filters
        taking turns)."""
        for i, cached in enumerate(self._filter_cache):
            if cached[0] is allowed:
                if cached[1] is st and cached[2] == st.n_slots:
                    self._filter_cache.append(self._filter_cache.pop(i))
                    return cached[3]
                del self._filter_cache[i]
                break
        ids = np.asarray(allowed).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise UsageError(f"allowed must hold integer ids, got dtype {ids.dtype}")
        slots = st.lookup(ids.astype(np.int64, copy=False))
        slots = slots[slots >= 0]
        mask = None
        if 32 * len(slots) > st.n_slots:  # many: ascending from the mask (O(n)) beats sorting them
            mask = self._slot_mask(st, slots)
            slots = np.flatnonzero(np.frombuffer(mask, dtype=np.uint8))
        else:
            slots = np.sort(slots)
        entry = _Allowed(slots, mask)
        if isinstance(allowed, np.ndarray) and not allowed.flags.writeable:
            self._filter_cache.append((allowed, st, st.n_slots, entry))
            del self._filter_cache[:-FILTER_SETS]
        return entry

    @staticmethod
    def _slot_mask(st: _State, slots: np.ndarray) -> bytes:
        """One byte per slot, 1 where allowed."""
        mask = np.zeros(st.n_slots, dtype=np.uint8)
        mask[slots] = 1
        return mask.tobytes()

    def _refuse_garbled(self, st: _State, q: np.ndarray, scores: np.ndarray) -> None:
        """Unit vectors score within ±|q|: a score beyond (or NaN) comes from a garbled original."""
        if len(q) == 1:  # the usual single query: scalars (array operations cost ~20 µs here)
            fine = float(np.abs(scores).max(initial=0.0)) <= 1.1 * float(np.sqrt(np.dot(q[0], q[0]))) + 1e-6
        else:
            norms = np.sqrt((q * q).sum(axis=1, keepdims=True))  # np.linalg.norm costs several times more
            fine = bool((np.abs(scores) <= 1.1 * norms + 1e-6).all())
        if not fine:
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
        if st.quantizer is not None and st.has_graph:
            buf = io.BytesIO()
            np.savez(buf, **st.quantizer.to_arrays())  # type: ignore[arg-type]  # numpy's stub: **kw as allow_pickle
            files["quantizer"] = fileformat.write_file(
                self.folder, fileformat.gen_name(gen, "quantizer.npz"), buf.getbuffer()
            )
            codes = np.ascontiguousarray(st.codes[: st.n_slots])
            # A store whose vectors fit entirely in the graph head has an empty int8 tail.
            code_bytes = codes.data.cast("B") if codes.size else memoryview(b"")
            files["codes"] = fileformat.write_file(self.folder, fileformat.gen_name(gen, "codes"), code_bytes)
            graph = st.graph
            assert graph is not None
            files["graph"] = fileformat.write_graph(self.folder, fileformat.gen_name(gen, "graph"), graph)
            if st.head_codes is not None or filtered.compiled(st.n_alive):
                head = st.head_codes_now()
                files["head"] = fileformat.write_blocks(
                    self.folder, fileformat.gen_name(gen, "head"), head.parts(st.n_slots)
                )
        tuned, level0, links = self._tune(st, files)
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
        if tuned is not None:
            body["tuning"] = tuned.to_dict()
        fileformat.write_manifest(self.folder, body)
        st.generation, st.files, st.tuned = gen, files, tuned
        st.level0, st.links = level0, links  # the new graph file is the graph in memory
        st.seeds = st.seed_codes = st.seed_lead = None
        self._dirty = False
        fileformat.remove_unreferenced(self.folder, st.file_names() | previous)
        return gen

    def _tune(
        self, st: _State, files: dict[str, dict[str, Any]]
    ) -> tuple[tuning.Tuning | None, Level0 | None, Links | None]:
        """The default ef and re-score depth of the generation being saved (`tuning`), with the links of its
        graph file where they were read for it: the last save's choice while it holds, else chosen again by
        probe queries; None where the compiled search will not answer this generation (or its originals are
        garbled)."""
        quantizer = st.quantizer
        ladder = tuple(ef for ef in tuning.LADDER if 2 * ef <= st.n_alive)
        if (
            not self.params.tune_ef
            or quantizer is None
            or not {"graph", "head", "quantizer"} <= files.keys()
            or not filtered.compiled(st.n_alive)
            or not ladder
        ):
            return None, None, None
        crc = int(files["quantizer"]["crc32"])
        if st.tuned is not None and st.tuned.holds(st.n_alive, crc):
            return st.tuned, None, None
        from retrieval.vectors.hnsw import walk

        start = time.perf_counter()
        # the seeds are drawn again from the slots live now, as a reader will draw them
        st.seeds = st.seed_codes = st.seed_lead = None
        try:
            level0 = walk.Level0.open(self.folder / files["graph"]["name"], quantizer.graph_dims, st.n_slots)
            links = level0.links(st.n_slots) if level0 is not None else None
        except (OSError, ValueError):
            return None, None, None
        if level0 is None or links is None:
            return None, None, None
        probes = tuning.probe_slots(st.alive_slots())
        q = st.originals.get(probes)
        try:
            best, _ = self._exact_search(st, q, tuning.K + 1)
        except IndexCorruptError:  # garbled originals: `doctor` is told at the next search
            return None, level0, links
        truth = np.stack([row[row != p][: tuning.K] for row, p in zip(best, probes, strict=True)])
        prepared = quantizer.prepare_queries(q)
        image_like = np.zeros(len(q), dtype=bool)

        def search(ef: int, rescore: int) -> np.ndarray:
            cands = np.full(len(q), ef)
            found = self._compiled_search(
                st, links, q, prepared, tuning.K, cands, image_like, probes, rescore
            )
            return found[0] if found is not None else np.full_like(truth, -1)

        ef, rescore, reached = tuning.choose_with_rescore(
            search, truth, ladder, tail_dims=quantizer.tail_dims
        )
        scans = False
        if reached < tuning.TARGET and self._scannable(st):
            everywhere = np.ones(len(q), dtype=bool)
            found = self._compiled_search(
                st, links, q, prepared, tuning.K, np.full(len(q), SCAN_CANDS), everywhere, probes, rescore
            )
            scanned = tuning.recall(found[0], truth) if found is not None else 0.0
            if scanned > reached:
                scans, reached = True, scanned
        tuned = tuning.Tuning(
            ef=ef,
            rescore=rescore,
            recall=round(reached, 4),
            n_alive=st.n_alive,
            quantizer_crc=crc,
            probes=len(probes),
            seconds=round(time.perf_counter() - start, 2),
            scan=scans,
        )
        return tuned, level0, links

    def reload_if_changed(self, *, warm: bool = False) -> bool:
        """Switch to a newer generation written by another process; returns whether it did.

        With `warm`, build what the new generation's first searches would (`warm_up`) before switching to it:
        searches meanwhile go on with the current one, and a reload asked for while another is under way
        returns False at once rather than wait (a server's request, while its background refresh warms:
        at 1M vectors the links alone take ~2 s).

        Raises:
            UsageError: this store holds unsaved changes.
            IndexCorruptError: the newer generation is damaged (the current one stays in use).
        """
        if not self._reloading.acquire(blocking=False):
            return False
        try:
            return self._reload(warm)
        finally:
            self._reloading.release()

    def _reload(self, warm: bool) -> bool:
        st = self._live()
        if fileformat.read_manifest(self.folder)["generation"] == st.generation:
            return False
        if self._dirty:
            raise UsageError(
                f"the vector store in {self.folder} has unsaved changes; save() before reloading"
            )
        manifest, state = _load_current(self.folder, writable=self.writable)
        self.params = StoreParams.from_dict(manifest["params"])
        same = ("crc32", "size")
        if (
            st.head_codes is not None
            and state.head_codes is None
            and state.quantizer is not None
            and st.originals_epoch == state.originals_epoch  # slots keep their vectors: no compaction
            and {k: st.files.get("quantizer", {}).get(k) for k in same}
            == {k: state.files.get("quantizer", {}).get(k) for k in same}
        ):  # the same rotation over the same slots: the next scan only encodes the slots added since
            # new objects over the same rows: extending them leaves the current generation's, which searches
            # may be reading meanwhile, as they are
            head = replace(st.head_codes, quantizer=state.quantizer)
            state.head_codes = head
            if st.signs is not None and st.signs.head is st.head_codes:
                state.signs = replace(st.signs, head=head)  # from those codes and the same slots' tail codes
        if warm:
            self._warm(state)
        if self._state is None:  # closed meanwhile
            return False
        self._state = state
        return True

    def stats(self) -> dict[str, Any]:
        """Sizes and settings for status displays and benchmarks."""
        st = self._live()
        disk = sum(int(entry["size"]) for entry in st.files.values()) + st.n_slots * self.dim * 4
        graph_bytes = 0
        graph = st.loaded_graph
        if graph is not None:
            graph_bytes = _graph_ram(graph.element_count, graph.get_max_elements(), graph.dim, self.params.m)
        if st.links:
            graph_bytes += st.links.nbytes
        ram = (
            graph_bytes
            + st.codes.nbytes
            + st.slot_ids.nbytes
            + (st.id_index.nbytes if st.id_index is not None else 0)
            + st.originals.pending_bytes
            + (st.quantizer.basis.nbytes if st.quantizer is not None else 0)
            + (st.head_codes.nbytes if st.head_codes is not None else 0)
            + (st.signs.nbytes if st.signs is not None else 0)
        )
        return {
            "n": st.n_alive,
            "dim": self.dim,
            "params": self.params.to_dict(),
            "default_ef": self.default_ef(),
            "tuning": st.tuned.to_dict() if st.tuned is not None else None,
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
    quantizer, graph, graph_file, head_codes = None, None, None, None
    codes = np.empty((0, 0), dtype=np.int8)
    n_alive = int((slot_ids >= 0).sum())
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
        if writable or "head" not in files or not filtered.compiled(n_alive):
            graph = _load_graph(graph_path, quantizer.graph_dims, n_slots)
        else:  # a large store's reader: its searches walk the file's links (see `_State.graph`)
            graph_file = graph_path
        if "head" in files:
            head_path = fileformat.verified(folder, files["head"])
            try:
                head_codes = filtered.HeadCodes.read(quantizer, head_path, n_slots)
            except ValueError as exc:
                raise IndexCorruptError(f"{head_path.name} is unreadable: {exc}") from None
    originals = _Originals(folder / originals_entry["name"], dim, n_slots, writable=writable)
    return _State(
        generation=generation,
        quantizer=quantizer,
        loaded_graph=graph,
        codes=codes,
        slot_ids=slot_ids,
        n_slots=n_slots,
        n_alive=n_alive,
        originals=originals,
        originals_epoch=int(originals_entry.get("epoch", 0)),
        id_index=None,
        files=files,
        head_codes=head_codes,
        graph_file=graph_file,
        tuned=tuning.Tuning.from_dict(manifest.get("tuning")),
    )


def _load_graph(path: Path, dims: int, n_slots: int) -> hnswlib.Index:
    """Load a generation's hnswlib graph file.

    Raises:
        IndexCorruptError: hnswlib cannot read it, it is gone (a reader left two generations behind), or it
            holds more nodes than the store has slots.
    """
    graph = hnswlib.Index(space="ip", dim=dims)
    try:
        graph.load_index(str(path))
    except RuntimeError as exc:
        if not path.exists():
            raise IndexCorruptError(
                f"{path.name} was replaced by a newer generation of {path.parent}; open the store again"
            ) from None
        raise IndexCorruptError(f"{path.name} is unreadable: {exc}") from None
    if graph.element_count > n_slots:
        raise IndexCorruptError(f"{path.name} holds more nodes than the store has slots")
    return graph
