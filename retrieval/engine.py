"""`Engine`: one index (metadata + vectors + its embedder) opened as a unit; what the CLI and server call.

Heavy parts load lazily and once: the database on construction, the vector store on the first
search, the model on the first query or ingest that needs it. Close it (or use `with`).
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import stat
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from retrieval.errors import (
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    QueryError,
    RetrievalError,
    StoreUnavailableError,
    UsageError,
)
from retrieval.metadata import DB_NAME, MetadataReader
from retrieval.search.batching import TextBatcher
from retrieval.settings import (
    DEFAULT_INDEX,
    DEFAULT_MAX_PIXELS,
    UPLOAD_MAX_PIXELS,
    index_dir,
    resolve_home,
)
from retrieval.settings import text_batch as default_text_batch
from retrieval.settings import text_batch_window as default_text_batch_window
from retrieval.storage import write_error, write_refusal
from retrieval.vectors import (
    Store,
    StoreSpec,
    check_available,
    create_store,
    open_store,
    parse_kind,
    rebuild_store,
    vectors_saved,
)

# The stages load when a method needs them, not with this module: `retrieval stats` or a classic search would
# otherwise pay for the maps, evaluation, ingest and every embedder's imports (BENCHMARKS.md, "CLI start").
if TYPE_CHECKING:
    import numpy as np
    from filelock import FileLock
    from PIL import Image

    from retrieval.embedders import Embedder
    from retrieval.embedders.projections import Projection
    from retrieval.export import ExportReport
    from retrieval.files.thumbnails import ThumbnailCache
    from retrieval.ingest.pipeline import IngestProgress, IngestReport, PrepareStage, ProgressFn
    from retrieval.ingest.watch import WatchBatch, Watcher, WatchResult
    from retrieval.maps.layout import MapProgressFn, NeighbourhoodMap
    from retrieval.maps.render import VIEWER_FILES as MAP_VIEWER_FILES
    from retrieval.maps.render import ColourBy, RenderedMap
    from retrieval.metadata import Filter, ImageRecord, IndexedFile, MetadataStore, parse_filter
    from retrieval.quality.evaluation import EvalReport
    from retrieval.search.duplicates import DuplicateReport
    from retrieval.search.queries import Query, QueryPart, SearchHit

#: Names this module re-exports, each loaded from its stage on first use (see `__getattr__`).
_REEXPORTS = {
    "MAP_VIEWER_FILES": ("retrieval.maps.render", "VIEWER_FILES"),
    "EvalReport": ("retrieval.quality.evaluation", "EvalReport"),
    "Filter": ("retrieval.metadata.filters", "Filter"),
    "ImageRecord": ("retrieval.metadata", "ImageRecord"),
    "NeighbourhoodMap": ("retrieval.maps.layout", "NeighbourhoodMap"),
    "Query": ("retrieval.search.queries", "Query"),
    "QueryPart": ("retrieval.search.queries", "QueryPart"),
    "SearchHit": ("retrieval.search.queries", "SearchHit"),
    "parse_filter": ("retrieval.metadata.filters", "parse_filter"),
}


def __getattr__(name: str) -> Any:
    if name not in _REEXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _REEXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_INDEX",
    "DEFAULT_MODEL",
    "MAP_VIEWER_FILES",
    "DoctorReport",
    "Engine",
    "EvalReport",
    "Filter",
    "ImageRecord",
    "IndexStats",
    "IndexStatus",
    "IndexSummary",
    "NeighbourhoodMap",
    "Query",
    "QueryPart",
    "RemoveReport",
    "SearchHit",
    "evaluate",
    "list_indexes",
    "parse_cutoffs",
    "parse_filter",
]

DEFAULT_MODEL = "clip"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class IndexStats:
    name: str
    path: str
    model: str | None
    embedder_id: str | None
    dim: int | None
    counts: dict[str, int]
    vectors: int | None  # None: the store's server did not answer (store["unavailable"] says why)
    bytes_on_disk: dict[str, int]
    store: dict[str, Any]
    failures: list[tuple[str, str]]
    folders: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IndexSummary:
    """One line of `retrieval list`: an index under the home, read from its database only (the vectors and
    the model are not loaded). `problem` says why an index could not be read; its other fields are then
    empty."""

    name: str
    path: str
    model: str | None
    images: int
    files: int
    bytes_on_disk: int
    folders: list[str]
    last_ingest: str | None
    problem: str | None = None


@dataclass(frozen=True)
class RemoveReport:
    """What `Engine.remove` did: the paths it forgot, and those the index did not hold."""

    removed: list[str]
    not_indexed: list[str]


@dataclass(frozen=True)
class IndexStatus:
    """What a front end shows about the index it serves: its stats, the vector generation being searched,
    whether text queries work and whether the model has random weights (results are then meaningless)."""

    stats: IndexStats
    generation: int
    text_search: bool
    random_weights: bool


@dataclass(frozen=True)
class DoctorReport:
    """The vector store's health and its agreement with the database; `ok` when nothing is off.

    `damage` says why the vector store is damaged (None when intact); `repairs` what --fix did.
    """

    embedded_rows: int
    vectors: int
    vectors_without_row: int
    rows_without_vector: int
    fixed: bool
    problems: list[str]
    damage: str | None = None
    repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _recorded_model(manifest: dict[str, Any]) -> str:
    """The model name an index was built with. A classic index names its version: "classic" alone now means
    a newer one than an old index holds."""
    embedder_id = str(manifest.get("embedder_id") or "")
    return embedder_id if embedder_id.startswith("classic:") else manifest["model"]


def _recorded_precision(manifest: dict[str, Any]) -> str:
    """The precision an index's vectors were made at; fp32 for indexes made before precisions existed."""
    from retrieval.embedders.precision import precision_of_id

    return str(manifest.get("precision") or precision_of_id(manifest.get("embedder_id")))


def _precision_name(precision: str | None) -> str | None:
    """A precision's canonical name, refused early when unknown (the device check comes with the model)."""
    if precision is None:
        return None
    from retrieval.embedders.precision import PRECISIONS

    name = precision.strip().lower()
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return name


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


@contextmanager
def _write_errors(folder: Path) -> Iterator[None]:
    """Turn a failed write (disk full, read-only folder, I/O error) into one IndexWriteError.

    Vectors are saved as a new generation and the database commits after them, so a write that
    fails leaves the previous version of the index whole. SQLite's vaguer reasons ("disk I/O error",
    "attempt to write a readonly database") give way to the OS's own when a probe write is refused.
    """
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except (OSError, OperationalError) as exc:
        if isinstance(exc, OperationalError):
            reason = str(exc.orig)
            if "full" not in reason:
                reason = write_refusal(folder) or reason
        else:
            reason = exc.strerror or str(exc)
        raise write_error(folder, reason) from exc


@contextmanager
def _stop_between_files(progress: ProgressFn | None) -> Iterator[ProgressFn | None]:
    """Make the first Ctrl-C a request to stop where the ingest can save cleanly.

    The request is acted on in the progress callback, which the ingestor calls between files: raising
    KeyboardInterrupt there makes it save what it has done and re-raise. A second Ctrl-C interrupts at
    once. Only the main thread owns signal handlers; elsewhere nothing changes.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield progress
        return
    requested = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        requested.set()
        signal.signal(signal.SIGINT, previous)

    def checked(p: IngestProgress) -> None:
        if progress is not None:
            progress(p)
        # Decode threads report too: only the ingest's own thread stops, where it can save.
        if requested.is_set() and threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield checked
    finally:
        signal.signal(signal.SIGINT, previous)


def _unchanged(file: IndexedFile) -> Path | None:
    """The real path of `file` if it is still the file that was indexed: inside its indexed folder once every
    symlink is resolved (a link put there later to /etc/passwd is not), a regular file, with the size and
    modification time the ingest recorded (a file swapped or edited since is not). None otherwise."""
    real = Path(os.path.realpath(file.path))
    if not real.is_relative_to(os.path.realpath(file.root)):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (file.size, file.mtime_ns):
        return None
    return real


def _whole_jpeg(data: bytes) -> bool:
    """Cheap check that cached thumbnail bytes are a whole JPEG (start and end markers): a write cut short by
    a crash or a full disk leaves a file without its end."""
    return data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")


class _TakingTurns:
    """The vector-store reads a map makes, each taking the engine's read lock: the layout (seconds of t-SNE)
    then runs outside the lock while its few reads still take turns with searches."""

    def __init__(self, store: Store, lock: threading.RLock) -> None:
        self._store, self._lock = store, lock

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        with self._lock:
            return self._store.vectors(ids)

    def search(
        self, queries: np.ndarray, k: int, *, ef: int | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._store.search(queries, k, ef=ef, allowed=allowed)


class Engine:
    """An index by name under a home folder.

    Args:
        index: index name (a folder under the home).
        home: folder of all indexes; default $RETRIEVAL_HOME, else the user data folder (resolve_home).
        model: embedder name for a new index (default "clip"); for an existing index it must match.
        pretrained: weights tag, or None / "none" for random init (testing only).
        weights: local checkpoint file instead of downloadable weights.
        device: "cpu", "cuda" or "auto".
        precision: "fp32", "int8" (CPU) or "fp16" (CUDA) for a new index (None: the default, fp32); an
            existing index uses the one it was built with, and refuses another.
        store: vector store of a new index, "hnswlib" (default) or "milvus"; an index keeps the one it has.
        milvus_uri: Milvus server of a new Milvus index (default $RETRIEVAL_MILVUS_URI, else Milvus Lite
            inside the index folder).
        text_batch: most texts of concurrent text queries embedded in one forward (`text_batcher`); 1 runs
            each query's own forward (default $RETRIEVAL_TEXT_BATCH, else 32).
        text_batch_window: seconds a shared forward may wait for more texts (default
            $RETRIEVAL_TEXT_BATCH_WINDOW_MS, else 0: none; a lone query never waits).
    """

    def __init__(
        self,
        index: str = DEFAULT_INDEX,
        *,
        home: Path | str | None = None,
        model: str | None = None,
        pretrained: str | None = "default",
        weights: Path | None = None,
        device: str = "auto",
        batch_size: int = 32,
        store: str | None = None,
        milvus_uri: str | None = None,
        precision: str | None = None,
        text_batch: int | None = None,
        text_batch_window: float | None = None,
    ) -> None:
        # First: close() uses them, and an engine refused below is closed.
        self._embedder: Embedder | None = None
        self._store: Store | None = None
        self._meta: MetadataStore | None = None
        self._reader: MetadataReader | None = None
        # Text queries of concurrent callers share forwards of the text tower, outside the read lock.
        self.text_batcher = TextBatcher(
            self._forward_texts,
            max_batch=default_text_batch() if text_batch is None else text_batch,
            window=default_text_batch_window() if text_batch_window is None else text_batch_window,
        )
        # Every forward of the model takes this lock (a text forward runs outside the read lock, alongside
        # searches): torch's thread count is process-wide and the embedders set it per forward.
        self._forwards = threading.Lock()
        self.name = index
        self.dir = index_dir(index, home)
        self.device = device
        self.batch_size = batch_size
        self._model_arg = model
        self._pretrained_arg = pretrained
        self._precision_arg = _precision_name(precision)
        self._weights_arg = Path(weights).expanduser().resolve() if weights else None
        if self._weights_arg is not None and not self._weights_arg.is_file():
            raise UsageError(f"weights file {self._weights_arg} does not exist")
        if store is not None:
            parse_kind(store)  # an unknown store is a usage error before any model loads
        self._store_arg, self._milvus_uri_arg = store, milvus_uri
        self._new_store_spec: StoreSpec | None = None
        # Reads share the embedder, the vector store's reload and hnswlib's search settings, none of which
        # is made for concurrent use: a server's threads take turns through this lock.
        self._reads = threading.RLock()
        self._thumbs: dict[int, ThumbnailCache] = {}
        # Two requests making the same thumbnail would write the same temporary file: one lock per id stripe.
        self._thumb_locks = tuple(threading.Lock() for _ in range(64))
        self._watcher: Watcher | None = None
        if self.exists:
            # A database at the current schema is read without SQLAlchemy until something needs more than
            # `stats` and `list` read (retrieval/metadata/reader.py); any other opens MetadataStore now.
            self._reader = MetadataReader.open(self.dir / DB_NAME)
            if self._reader is None:
                from retrieval.metadata import MetadataStore

                self._meta = MetadataStore(self.dir / DB_NAME)
            try:
                self._refuse_emptied_database()
                self._check_model_matches()
                if "model" in self.manifest:
                    self.store_spec.check_request(self.name, store, milvus_uri)
            except BaseException:  # refused: no caller gets this engine to close it
                self.close()
                raise
        else:
            self._refuse_lost_database()

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.dir / DB_NAME).is_file()

    @property
    def meta(self) -> MetadataStore:
        if self._meta is None and self._reader is not None:
            from retrieval.metadata import MetadataStore

            self._meta = MetadataStore(self.dir / DB_NAME)
        if self._meta is None:
            raise IndexNotFoundError(
                f"no index named {self.name!r} in {self.dir.parent}; build one with `retrieval ingest DIR`"
            )
        return self._meta

    @property
    def manifest(self) -> dict[str, Any]:
        return self._db.get_manifest()

    @property
    def _db(self) -> MetadataStore | MetadataReader:
        """Where the few reads of `stats`, `list` and a search's results go: the database store once it is
        open, else the reader."""
        return self._reader if self._meta is None and self._reader is not None else self.meta

    @property
    def store_spec(self) -> StoreSpec:
        """Which vector store the index uses: as its manifest records, or for a new index as asked."""
        manifest = self.manifest if self.exists else {}
        if "model" in manifest:
            return StoreSpec.from_manifest(manifest)
        if self._new_store_spec is None:
            self._new_store_spec = StoreSpec.for_new_index(self.name, self._store_arg, self._milvus_uri_arg)
        return self._new_store_spec

    @property
    def store(self) -> Store:
        if self._store is None:
            self.manifest  # noqa: B018 - raises IndexNotFoundError for an index that does not exist
            try:
                self._store = open_store(self.store_spec, self.dir / "vectors")
            except IndexNotFoundError:
                raise IndexNotFoundError(
                    f"index {self.name!r} has no vectors yet; run `retrieval ingest DIR`"
                ) from None
            except IndexCorruptError as exc:
                raise IndexCorruptError(
                    f"the vector index of {self.name!r} is damaged: {exc}; "
                    "`retrieval doctor --fix` rebuilds it from the stored vectors"
                ) from exc
        return self._store

    @property
    def embedder(self) -> Embedder:
        """The index's embedder, loaded on first use (from the manifest for an existing index)."""
        from retrieval.embedders import SupersededEmbedderWarning, create_embedder
        from retrieval.embedders.projections import ProjectedEmbedder, Projection

        if self._embedder is None:
            name, pretrained, weights = self._embedder_args()
            precision = self._precision()
            try:
                emb = create_embedder(
                    name,
                    pretrained=pretrained,
                    weights=weights,
                    device=self.device,
                    batch_size=self.batch_size,
                    precision=precision,
                )
            except UsageError as exc:
                if not (self.exists and "model" in self.manifest and precision in ("fp16", "int8")):
                    raise
                # An index's precision is fixed: the way out is another device, not another precision.
                where = "a CUDA device (--device cuda)" if precision == "fp16" else "the CPU (--device cpu)"
                raise UsageError(
                    f"index {self.name!r} was built at precision {precision}, which runs on {where} only: "
                    "open it there, or ingest into another --index at fp32"
                ) from exc
            recorded = self.manifest.get("embedder_id") if self.exists else None
            if recorded is not None and recorded != emb.id:
                emb.close()
                raise IndexMismatchError(
                    f"index {self.name!r} was built with {recorded}, not {emb.id}; "
                    f"use the same model/weights or another --index"
                )
            if recorded is not None and emb.superseded:
                warnings.warn(
                    SupersededEmbedderWarning(f"index {self.name!r} was built with {emb.superseded}"),
                    stacklevel=2,
                )
            projection = self.manifest.get("projection") if self.exists else None
            # An index with a projection embeds images (ingest) and queries through it.
            self._embedder = ProjectedEmbedder(emb, Projection.load(self.dir)) if projection else emb
        return self._embedder

    def _load_embedder(self, progress: ProgressFn | None) -> Embedder:
        """The embedder, loaded now; a model with weights is announced through `progress` (a phase named
        "loading MODEL", 0 of unknown, then 1 of 1), since loading one takes seconds before any file moves."""
        from retrieval.embedders import parse_embedder_name
        from retrieval.ingest.pipeline import IngestProgress

        name, pretrained, _ = self._embedder_args()
        spec = parse_embedder_name(name, pretrained)
        if self._embedder is not None or progress is None or spec.family == "classic":
            return self.embedder
        precision = self._precision()
        phase = f"loading {spec.name}" + (f" at {precision}" if precision not in (None, "fp32") else "")
        progress(IngestProgress(phase, 0, None))
        embedder = self.embedder
        progress(IngestProgress(phase, 1, 1))
        return embedder

    def _embedder_args(self) -> tuple[str, str | None, Path | None]:
        manifest = self.manifest if self.exists else {}
        if "model" in manifest:
            weights = self._weights_arg or (Path(manifest["weights"]) if manifest.get("weights") else None)
            return _recorded_model(manifest), manifest.get("pretrained"), weights
        return self._model_arg or DEFAULT_MODEL, self._pretrained_arg, self._weights_arg

    def _precision(self) -> str | None:
        """The index's recorded precision (a different one asked for was refused when it opened); for a new
        index the one asked for (None: the default)."""
        manifest = self.manifest if self.exists else {}
        return _recorded_precision(manifest) if "model" in manifest else self._precision_arg

    def _refuse_lost_database(self) -> None:
        """No database but vectors saved: the database was deleted. Starting afresh would take the default
        model and number new images with ids the saved vectors already carry."""
        if vectors_saved(self.dir / "vectors"):
            raise IndexCorruptError(
                f"database {self.dir / DB_NAME} is missing but the index has vectors (the file was deleted "
                f"or moved); restore it from a backup, or delete the index folder {self.dir} and ingest again"
            )

    def _refuse_emptied_database(self) -> None:
        """No model recorded but vectors saved: the database was truncated to nothing or replaced."""
        if "model" not in self.manifest and vectors_saved(self.dir / "vectors"):
            path = self.meta.path
            self.close()
            raise IndexCorruptError(
                f"database {path} is empty but the index has vectors (the file was truncated or replaced); "
                f"restore it from a backup, or delete the index folder {self.dir} and ingest again"
            )

    def _check_model_matches(self) -> None:
        manifest = self.manifest
        if "model" not in manifest:
            return
        if self._precision_arg is not None:
            self._check_precision_matches(manifest)
        if self._model_arg is None:
            return
        from retrieval.embedders import parse_embedder_name

        asked = parse_embedder_name(self._model_arg, self._pretrained_arg)
        recorded = parse_embedder_name(_recorded_model(manifest), manifest.get("pretrained"))
        if asked != recorded:
            raise IndexMismatchError(
                f"index {self.name!r} was built with {manifest.get('embedder_id', manifest['model'])}, "
                f"not {self._model_arg}; drop --model or choose another --index"
            )

    def _check_precision_matches(self, manifest: dict[str, Any]) -> None:
        """A precision asked for must be the index's own (checked only when one is asked for: the
        precision module loads the embedders package, numpy included, which `stats` does without)."""
        from retrieval.embedders.precision import effective_precision

        recorded_precision = _recorded_precision(manifest)
        family = str(manifest.get("embedder_id") or manifest["model"]).split(":")[0]
        wanted = self._precision_arg and effective_precision(family, cast(Any, self._precision_arg))
        if wanted and wanted != recorded_precision:
            raise IndexMismatchError(
                f"index {self.name!r} was built at precision {recorded_precision}, not {wanted} "
                f"({manifest.get('embedder_id', manifest['model'])}); drop --precision or choose another "
                "--index"
            )

    def _drop_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _back_to_saved_version(self) -> None:
        """After a failed or interrupted write: forget unsaved changes, and drop vectors saved for rows the
        database never committed, which would crowd results out (best effort: the next writer does it too)."""
        from sqlalchemy.exc import SQLAlchemyError

        from retrieval.ingest.pipeline import reconcile

        self._drop_store()
        try:
            with open_store(self.store_spec, self.dir / "vectors", writable=True) as store:
                reconcile(self.meta, store)
        except (RetrievalError, OSError, SQLAlchemyError):
            pass

    def close(self) -> None:
        self.text_batcher.close()  # queued text queries fail; a forward under way finishes first
        if self._embedder is not None:
            with self._forwards:
                self._embedder.close()
            self._embedder = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._meta is not None:
            self._meta.close()
            self._meta = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self) -> FileLock:
        """The write lock of this index. Every writer takes it first, so a database that could only be opened
        read-only (a full disk, a read-only mount) refuses the write here, before any model loads."""
        from filelock import FileLock

        if self._meta is not None or self._reader is not None:
            self.meta.require_writable()
        with _write_errors(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir / "write.lock", timeout=0)

    def _acquire(self, lock: FileLock) -> None:
        from filelock import Timeout

        try:
            lock.acquire()
        except Timeout:  # an OSError too: caught first
            raise IndexBusyError(
                f"index {self.name!r} is busy: another process is writing to it ({self.dir}); "
                "wait for it to finish"
            ) from None
        except OSError as exc:  # the lock file cannot be made: a read-only mount, no permission
            raise write_error(self.dir, exc.strerror or str(exc)) from exc

    def _open_for_writing(self) -> Store:
        """Create the index on first use, open its store writable and repair what a crash left.

        Only a new index loads the model (for its id and dim); `remove` and `doctor --fix` on an existing
        one work from the manifest, without torch."""
        from retrieval.ingest.pipeline import reconcile
        from retrieval.metadata import MetadataStore, utcnow

        if self._meta is None:
            self._meta = MetadataStore(self.dir / DB_NAME)
        manifest = self._meta.get_manifest()
        spec = self.store_spec
        if "model" not in manifest:
            emb = self.embedder
            check_available(spec)
            name, pretrained, weights = self._embedder_args()
            with self._meta.session() as s:
                self._meta.set_manifest(
                    s,
                    format=MANIFEST_FORMAT,
                    model=name,
                    pretrained=pretrained,
                    weights=str(weights) if weights else None,
                    embedder_id=emb.id,
                    precision=emb.unprojected().precision,
                    dim=emb.dim,
                    preprocess=emb.preprocess_id,
                    **spec.to_manifest(),
                    created_at=utcnow().isoformat(timespec="seconds"),
                )
            manifest = self._meta.get_manifest()
        dim = int(manifest["dim"])
        folder = self.dir / "vectors"
        self._drop_store()
        try:
            self._store = open_store(spec, folder, writable=True)
        except IndexNotFoundError:
            self._store = create_store(spec, folder, dim)
            self._store.save()
        if self._store.dim != dim:
            raise IndexMismatchError(f"vectors in {folder} have dim {self._store.dim}, the model gives {dim}")
        reconcile(self._meta, self._store)
        return self._store

    # -- writing ----------------------------------------------------------------------------------

    def ingest(
        self,
        root: Path | str,
        *,
        prune: bool = True,
        progress: ProgressFn | None = None,
        workers: int | None = None,
        retry_failed: bool = False,
        ray_address: str | None = None,
        thumbnails: bool = True,
        refresh_metadata: bool = False,
        paths: Sequence[Path | str] | None = None,
    ) -> IngestReport:
        """Bring the index up to date with `root`: embed new and changed images, forget deleted ones.

        `paths` (a watch batch's) looks only at those paths under `root`, files or folders, by the same
        rules; the rest of the folder is neither listed nor read from the database.

        With `thumbnails` (the default), the thumbnails that maps and the web page show are made from the
        pixels decoded for the model (on Ray, by the workers), so that they never wait for them; without,
        they are made on first request.

        `ray_address` decodes and embeds on Ray (`retrieval.ingest.ray`; the `ray` extra): "local" starts a
        runtime on this machine, "auto" joins the one `ray start` runs here, "ray://HOST:10001" a cluster;
        `workers` then counts Ray actors (one model each) instead of decode threads.

        `refresh_metadata` reads every image's metadata (EXIF, size, folder) again from its file's header,
        keeping its vector: what an index made before a metadata column existed needs once.

        A new index whose first ingest fails before it records a file (a missing folder, weights that
        cannot be had, a bad model) is not left behind: its folder and lock are removed.

        Raises:
            IngestInterrupted: Ctrl-C stopped it (a KeyboardInterrupt); its `report` says what was saved.
            UsageError: `root` is not a folder; a bad model name or weights file.
            IndexBusyError: another process is writing to this index.
            IndexMismatchError: the index was built with another model.
            ClusterError: the Ray cluster cannot be reached or failed (what was recorded is saved).
        """
        from retrieval.files.thumbnails import SIDES
        from retrieval.ingest.pipeline import Ingestor

        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder; pass the folder of photos to index")
        fresh = not self.dir.exists()
        failed = False
        lock = self._lock()
        self._acquire(lock)
        try:
            self._load_embedder(progress)  # first: a model that fails to load is not a write error
            with (
                _stop_between_files(progress) as checked_progress,
                self._ray_stage(ray_address, workers, checked_progress, thumbnails) as stage,
                _write_errors(self.dir),
            ):
                store = self._open_for_writing()
                ingestor = Ingestor(
                    self.meta,
                    store,
                    self.embedder,
                    batch_size=self.batch_size,
                    workers=workers,
                    progress=checked_progress,
                    retry_failed=retry_failed,
                    stage=stage,
                    thumbnails=[self._thumbnail_cache(side) for side in SIDES] if thumbnails else (),
                    refresh_metadata=refresh_metadata,
                )
                return ingestor.run(folder, prune=prune, paths=paths)
        except BaseException:
            failed = True
            self._back_to_saved_version()
            raise
        finally:
            lock.release()
            if fresh and failed:
                self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """Delete the folder of an index that holds no file (its first ingest failed before recording one)."""
        if self._meta is not None and self._meta.counts()["files"]:
            return
        self._drop_store()
        if self._meta is not None:
            self._meta.close()
            self._meta = None
        shutil.rmtree(self.dir, ignore_errors=True)

    @contextmanager
    def _ray_stage(
        self, address: str | None, workers: int | None, progress: ProgressFn | None, thumbnails: bool = True
    ) -> Iterator[PrepareStage | None]:
        """The Ray stage for an ingest at `address`; None (the local stage) without one. Ray is imported only
        here, only when asked for."""
        if address is None:
            yield None
            return
        from retrieval.files.thumbnails import SIDES
        from retrieval.ingest.ray import EmbedderArgs, ray_stage

        name, pretrained, weights = self._embedder_args()
        emb = self.embedder
        base = emb.unprojected()  # the workers run the model; the projection is applied here
        args = EmbedderArgs(name, pretrained, str(weights) if weights else None, base.id, base.precision)
        with ray_stage(
            address,
            emb,
            args,
            device=self.device,
            batch_size=self.batch_size,
            workers=workers,
            progress=progress,
            thumbnail_sides=SIDES if thumbnails else (),
        ) as stage:
            yield stage

    def remove(self, paths: Sequence[Path | str]) -> RemoveReport:
        """Forget these files (the files themselves stay on disk).

        Raises:
            IndexNotFoundError: there is no such index (none is created).
        """
        from retrieval.ingest.pipeline import remove_paths

        self.meta  # noqa: B018 - raises IndexNotFoundError before a lock or folder is made
        wanted = [Path(p).expanduser().resolve() for p in paths]
        lock = self._lock()
        self._acquire(lock)
        try:
            with _write_errors(self.dir):
                store = self._open_for_writing()
                removed = set(remove_paths(self.meta, store, wanted))
                return RemoveReport(
                    removed=[str(p) for p in wanted if p in removed],
                    not_indexed=[str(p) for p in wanted if p not in removed],
                )
        except BaseException:
            self._back_to_saved_version()
            raise
        finally:
            lock.release()

    def watch(
        self,
        root: Path | str,
        *,
        quiet: float = 2.0,
        max_delay: float = 60.0,
        poll_interval: float = 5.0,
        polling: bool | None = None,
        on_batch: Callable[[WatchBatch], None] | None = None,
        progress: ProgressFn | None = None,
        workers: int | None = None,
    ) -> WatchResult:
        """Keep the index up to date with `root` until Ctrl-C (or `stop_watching`): a catch-up ingest now,
        then one incremental ingest per batch of file changes (see `retrieval.ingest.watch`). Each batch is
        passed to `on_batch`. A folder that goes away is waited for; its files are not forgotten.

        Raises:
            as `ingest`, for what waiting cannot mend (another model, a damaged index).
        """
        from retrieval.ingest.watch import Watcher

        folder = Path(os.path.abspath(Path(root).expanduser()))
        watcher = Watcher(
            folder,
            lambda p: self.ingest(folder, progress=p, workers=workers),
            ingest_paths=lambda p, named: self.ingest(folder, progress=p, workers=workers, paths=named),
            indexed_files=lambda: self.meta.count_files_under(str(folder.resolve())) if self.exists else 0,
            quiet=quiet,
            max_delay=max_delay,
            poll_interval=poll_interval,
            polling=polling,
            ignore=[self.dir],
            on_batch=on_batch,
            progress=progress,
        )
        self._watcher = watcher
        try:
            return watcher.run()
        finally:
            self._watcher = None

    def stop_watching(self) -> None:
        """End a `watch` running in another thread (a batch in progress saves what it has done)."""
        watcher = self._watcher
        if watcher is not None:
            watcher.stop()

    @contextmanager
    def watching(self, root: Path | str, **options: Any) -> Iterator[None]:
        """`watch` in a background thread while the block runs (`serve --watch`); stopped at its end, a batch
        in progress saving what it has done. Use its own Engine: the watcher writes while this one is free
        to be searched (a serving engine picks up each new vector generation)."""
        from retrieval.ingest.watch import WatchBatch

        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.watch(root, **options)
            except BaseException as exc:  # told now, raised when the block ends
                failure.append(exc)
                if options.get("on_batch") is not None:
                    options["on_batch"](WatchBatch("failed", note=f"stopped watching: {exc}"))

        thread = threading.Thread(target=run, name="retrieval-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            while thread.is_alive():
                self.stop_watching()
                thread.join(0.1)
        if failure:
            raise failure[0]

    def _refuse_existing(self) -> None:
        if self.exists:
            raise UsageError(
                f"index {self.name!r} already exists; a projection changes every vector, so it starts "
                "a new index: choose another --index"
            )

    def set_projection(self, projection: Projection) -> None:
        """Start this new index with `projection`: its images and its queries are embedded through it.

        Raises:
            UsageError: the index exists already (a projection only starts a new index).
            IndexMismatchError: the projection was fitted on another model's vectors.
        """
        from retrieval.embedders.projections import ProjectedEmbedder

        self._refuse_existing()
        base = self.embedder
        fitted_on = projection.info.get("embedder_id")
        if fitted_on != base.id or projection.input_dim != base.dim:
            raise IndexMismatchError(
                f"this {projection.kind} projection was fitted on {fitted_on} vectors "
                f"({projection.input_dim}-dim), not {base.id} ({base.dim}-dim)"
            )
        lock = self._lock()
        self._acquire(lock)
        try:
            self._refuse_existing()
            projection.save(self.dir)
            from retrieval.metadata import MetadataStore

            self._meta = MetadataStore(self.dir / DB_NAME)
            with self._meta.session() as s:
                self._meta.set_manifest(s, projection=projection.describe())
            self._embedder = ProjectedEmbedder(base, projection)
            self._open_for_writing()
        finally:
            lock.release()

    def fit_projection(
        self,
        folder: Path | str,
        kind: str,
        *,
        dims: int | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Projection:
        """Fit a `kind` projection ("pca", "lda", "head") on a labelled folder (one sub-folder per class)
        with this index's model, then start this new index with it (see `set_projection`)."""
        from retrieval.embedders.projections import fit_projection
        from retrieval.quality.evaluation import embed_labelled, load_labelled_folder

        self._refuse_existing()
        embedded = embed_labelled(
            load_labelled_folder(folder), self.embedder, batch_size=self.batch_size, progress=progress
        )
        projection = fit_projection(
            kind,
            embedded.vectors,
            embedded.labels,
            dims=dims,
            seed=seed,
            embedder_id=embedded.embedder_id,
            classes=embedded.classes,
        )
        self.set_projection(projection)
        return projection

    # -- reading ----------------------------------------------------------------------------------

    def _embed_image(self, source: Path | bytes) -> np.ndarray:
        from retrieval.files.decoding import decode_image

        if isinstance(source, Path) and not source.is_file():
            raise QueryError(f"query image {source} does not exist")
        # Bytes are an upload (the server's or a caller's): the lower pixel budget of untrusted input.
        limit = UPLOAD_MAX_PIXELS if isinstance(source, bytes) else DEFAULT_MAX_PIXELS
        emb = self.embedder
        decoded = decode_image(source, min_side=emb.input_size, max_pixels=limit, keep_alpha=emb.keeps_alpha)
        with self._forwards:
            return emb.embed_images([decoded.image])[0]

    def _stored_vector(self, content_id: int) -> np.ndarray:
        if content_id not in self.store:
            raise QueryError(f"no image with id {content_id} in index {self.name!r}")
        return self.store.vectors([content_id])[0]

    def resolve_image_ref(self, ref: str | int | Path) -> QueryPart:
        """An indexed image by id or path, or else an image file to embed: the part for 'more like this'."""
        from retrieval.search.queries import QueryPart

        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return QueryPart("id", int(ref))
        path = Path(ref).expanduser()
        content_id = self.meta.content_id_for_path(path.resolve()) if path.exists() else None
        if content_id is not None:
            return QueryPart("id", content_id)
        if not path.is_file():
            raise QueryError(f"{ref} is neither an indexed image id nor an image file")
        return QueryPart("image", path.resolve())

    def _allowed(self, filter: Filter | None) -> np.ndarray | None:
        """The ids `filter` allows, or None for no filter (an empty Filter limits nothing)."""
        return None if filter is None or filter.is_empty else self.meta.allowed_ids(filter)

    def query_vector(
        self, query: Query, *, embed_texts: Callable[[list[str]], np.ndarray] | None = None
    ) -> np.ndarray:
        from retrieval.search.queries import query_vector

        return query_vector(
            query,
            embed_texts=embed_texts or self._embed_texts,
            embed_image=self._embed_image,
            stored_vector=self._stored_vector,
        )

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._forward_texts(texts)

    def _forward_texts(self, texts: list[str]) -> np.ndarray:
        """One forward of the text tower (the batcher's), taking turns with the model's other forwards.

        A forward of several texts (queries sharing it, or one query's parts) runs on one CPU thread: other
        requests are then under way, and their searches want the other cores. On 2 busy cores, 8 short
        texts took 11 ms on one thread and 260 ms on two (BENCHMARKS.md, "Serving")."""
        if self._embedder is None:  # made under the read lock, as every reader makes it
            with self._reads:
                self.embedder  # noqa: B018
        embedder = self.embedder
        with self._forwards:
            if len(texts) < 2 or not embedder.supports_text or embedder.device != "cpu":
                return embedder.embed_texts(texts)
            from retrieval.embedders.base import torch_threads

            with torch_threads(1):
                return embedder.embed_texts(texts)

    def _texts_embedded(self, query: Query) -> Callable[[list[str]], np.ndarray]:
        """What embeds the query's texts once the read lock is taken: their vectors, made beforehand by the
        text batcher (without holding the lock, so that concurrent queries can share a forward), or the
        plain forward for a query that `query_vector` refuses before embedding (empty texts) or has none.
        The vector store is opened first, so that an index without vectors says so before a model loads."""
        texts = [str(part.value) for part in query.parts if part.kind == "text"]
        if not texts or any(not text.strip() for text in texts):
            return self._embed_texts
        if self._store is None:
            with self._reads:
                self.store  # noqa: B018
        vectors = self.text_batcher.embed(texts)

        def embedded(asked: list[str]) -> np.ndarray:
            assert asked == texts, "query_vector embeds the query's texts in order"
            return vectors

        return embedded

    def search(
        self,
        query: Query,
        *,
        k: int = 10,
        min_score: float | None = None,
        ef: int | None = None,
        filter: Filter | None = None,
    ) -> list[SearchHit]:
        """Top-k images for a query of text/image/id parts, each added or subtracted; with `filter`, among
        the images it allows only (none allowed: no results)."""
        from retrieval.search.queries import run_search

        # A filter's SQL is MetadataStore's; an unfiltered search reads its rows through the reader.
        meta = self._db if filter is None or filter.is_empty else self.meta
        texts = self._texts_embedded(query)
        with self._reads:
            self.store.reload_if_changed()
            vector = self.query_vector(query, embed_texts=texts)
            return run_search(
                vector,
                self.store,
                meta,
                k=k,
                min_score=min_score,
                exclude=query.exclude_ids,
                ef=ef,
                filter=filter,
            )

    def search_text(
        self, text: str, *, k: int = 10, min_score: float | None = None, filter: Filter | None = None
    ) -> list[SearchHit]:
        from retrieval.search.queries import Query, QueryPart

        return self.search(Query.of(QueryPart("text", text)), k=k, min_score=min_score, filter=filter)

    def search_image(
        self,
        image: Path | bytes,
        *,
        k: int = 10,
        min_score: float | None = None,
        filter: Filter | None = None,
    ) -> list[SearchHit]:
        from retrieval.search.queries import Query, QueryPart

        source = Path(image).expanduser() if isinstance(image, str | Path) else image
        return self.search(Query.of(QueryPart("image", source)), k=k, min_score=min_score, filter=filter)

    def similar(
        self,
        ref: str | int | Path,
        *,
        k: int = 10,
        min_score: float | None = None,
        filter: Filter | None = None,
    ) -> list[SearchHit]:
        """More like an indexed image (by id or path; the image itself is left out) or an image file."""
        from retrieval.search.queries import Query

        return self.search(Query.of(self.resolve_image_ref(ref)), k=k, min_score=min_score, filter=filter)

    def map(
        self,
        query: Query,
        *,
        n: int = 200,
        expand: int = 0,
        seed: int = 0,
        perplexity: float | None = None,
        clusters: int | None = None,
        filter: Filter | None = None,
        progress: MapProgressFn | None = None,
    ) -> NeighbourhoodMap:
        """A t-SNE map of the query and its top-n results; with expand > 0, also each result's `expand`
        nearest neighbours; with `filter`, results and neighbours both from the images it allows. Draw it
        with `render_map`. See retrieval/maps/layout.py. `progress` is told when the layout starts (the
        search and t-SNE take seconds)."""
        from retrieval.maps.layout import MapProgress, build_map
        from retrieval.search.queries import run_search

        if progress is not None:
            progress(MapProgress("layout"))
        texts = self._texts_embedded(query)
        with self._reads:
            self.store.reload_if_changed()
            vector = self.query_vector(query, embed_texts=texts)
            allowed = self._allowed(filter)
            hits = run_search(
                vector, self.store, self.meta, k=n, exclude=query.exclude_ids, filter=filter, allowed=allowed
            )
            return build_map(
                query,
                vector,
                hits,
                self.store,
                self.meta,
                expand=expand,
                seed=seed,
                perplexity=perplexity,
                clusters=clusters,
                allowed=allowed,
            )

    def render_map(
        self,
        m: NeighbourhoodMap,
        out: Path | str,
        *,
        colour_by: ColourBy = "cluster",
        progress: MapProgressFn | None = None,
    ) -> RenderedMap:
        """Write a map as .png, .svg or .html; thumbnails missing from the index's `thumbs/` folder (ingest
        makes them) are made once there. `progress` is told of the stages (thumbnails, drawing)."""
        from retrieval.files.thumbnails import THUMB_SIDE, thumbnail_cache
        from retrieval.maps.render import render_map

        cache = thumbnail_cache(self.dir / "thumbs", THUMB_SIDE)
        return render_map(m, out, cache, self.meta, colour_by=colour_by, progress=progress)

    def duplicates(
        self,
        *,
        threshold: float | None = None,
        neighbours: int | None = None,
        filter: Filter | None = None,
    ) -> DuplicateReport:
        """Groups of near-duplicate images found through the index (each image's nearest neighbours);
        `threshold` is a cosine, by default the one measured for this index's model; `neighbours` by default
        DEFAULT_NEIGHBOURS of retrieval.search.duplicates; with `filter`, only the images it allows are
        grouped."""
        from retrieval.search.duplicates import DEFAULT_NEIGHBOURS, default_threshold, find_duplicates

        if threshold is None:
            threshold = default_threshold(self.manifest.get("embedder_id"))
        with self._reads:
            self.store.reload_if_changed()
            allowed = self._allowed(filter)
            k = DEFAULT_NEIGHBOURS if neighbours is None else neighbours
            return find_duplicates(self.store, self.meta, threshold=threshold, k=k, allowed=allowed)

    def export(self, out: Path | str, *, row_group: int | None = None) -> ExportReport:
        """Write the index to a Parquet file: one row per image (id, path, root, copies, every metadata
        column) with its float32 vector as a fixed-size list column, streamed one row group at a time.

        Raises:
            UsageError: pyarrow is missing (the `export` extra); `out` cannot be written.
            IndexNotFoundError: there is no such index.
        """
        import numpy as np

        from retrieval.export import ROW_GROUP, check_output, write_parquet

        check_output(Path(out))  # before the vectors load
        dim = int(self.manifest.get("dim") or 0)
        rows = self.meta.export_rows(row_group or ROW_GROUP)
        first = next(rows, None)  # the database snapshot is taken: the vectors are read from no older one

        def chunks() -> Iterator[list[dict[str, Any]]]:
            if first is not None:
                yield first
                yield from rows

        def vectors(ids: list[int]) -> tuple[list[int], np.ndarray]:
            with self._reads:
                try:
                    return ids, self.store.vectors(ids)
                except UsageError:  # an ingest removed some since the snapshot: look them up one by one
                    kept = [i for i in ids if i in self.store]
                    return kept, self.store.vectors(kept) if kept else np.zeros((0, dim), np.float32)

        if first is not None:
            with self._reads:
                self.store.reload_if_changed()
        try:
            return write_parquet(Path(out), self.meta.export_columns(), chunks(), vectors, dim)
        finally:
            rows.close()

    # -- serving: what a front end needs, each call safe from many threads -------------------------

    #: Largest picture, in pixels as its header declares them, decoded from a client's upload (ingest takes
    #: up to DEFAULT_MAX_PIXELS). 40 MP holds any phone photo and keeps one upload's decode within ~120 MB.
    upload_pixel_budget: int = UPLOAD_MAX_PIXELS

    def warm_up(self) -> None:
        """Load what searches need (database, vector store, model) now rather than on the first request.

        Raises:
            IndexNotFoundError: the index does not exist or has no vectors yet.
            WeightsUnavailableError, IndexMismatchError: the model cannot be loaded.
        """
        with self._reads:
            self.meta  # noqa: B018 - each property loads its part once
            self.store.warm_up()
            if self.embedder.supports_text:
                self._forward_texts(["warm-up"])

    def refresh(self, *, warm: bool = False) -> bool:
        """Switch to the newest vector generation if another process (an ingest) saved one.

        With `warm` (a server's background refresh), build what its first searches would first, outside the
        read lock: searches go on with the current generation meanwhile, and the first after the switch
        does not wait (at 1M vectors, ~2 s to copy the new graph's links). A store this engine writes (its
        own ingest) is left to its writer and its searches: a reload beside the ingest's adds could lose them.
        """
        if warm:
            store = self._store
            if store is None or store.writable:
                return False
            return store.reload_if_changed(warm=True)
        with self._reads:
            return self.store.reload_if_changed()

    def record(self, image_id: int) -> ImageRecord | None:
        """The indexed image `image_id` (its first path, size, format, copies), or None."""
        return self.meta.records([image_id]).get(image_id)

    def records(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        """`record` for many ids at once; unknown ids are left out."""
        return self.meta.records(list(ids))

    def has_vector(self, image_id: int) -> bool:
        """Whether `image_id` can be searched from ("more like this"), in the newest generation."""
        with self._reads:
            self.store.reload_if_changed()
            return image_id in self.store

    def thumbnail(self, image_id: int, side: int) -> tuple[bytes | None, str]:
        """A JPEG thumbnail of an indexed image at most `side` pixels across, made once and cached in the
        index's `thumbs/` folder, and its content hash (ids of deleted images are reused: the hash tells
        their thumbnails apart). (None, "") for an unknown id; (None, hash) when the file cannot be read or
        is no longer the one indexed (see `original`). A damaged cached thumbnail is made again."""
        record = self.record(image_id)
        if record is None:
            return None, ""
        digest = self.meta.content_hashes([image_id]).get(image_id, "")
        cache = self._thumbnail_cache(side)
        cached = cache.path_for(image_id, digest)
        # Checked even when the thumbnail is cached (ingest makes them): a picture is shown only while
        # its file is still the one indexed, as an original is.
        source = self.original(image_id)
        if source is None:
            return None, digest
        with self._thumb_locks[image_id % len(self._thumb_locks)]:
            try:
                data = cached.read_bytes()
            except FileNotFoundError:
                data = None
            if data is not None and _whole_jpeg(data):
                return data, digest
            cached.unlink(missing_ok=True)
            return cache.get_many(self.meta, [(image_id, str(source))])[0], digest

    def original(self, image_id: int) -> Path | None:
        """The file to send for an indexed image: the real path of its first file (in path order) that is
        still the file indexed, inside its indexed folder (see `_unchanged`); None when none is, because the
        files have gone, changed, or were replaced by links to elsewhere (`retrieval ingest` catches up)."""
        for file in self.meta.files_of(image_id):
            real = _unchanged(file)
            if real is not None:
                return real
        return None

    def serve_search(self, query: Query, *, k: int = 10, filter: Filter | None = None) -> list[SearchHit]:
        """`search` for a server: the query's uploaded images are decoded before the read lock is taken,
        within `upload_pixel_budget`, so one large upload does not hold up everyone else's searches."""
        from retrieval.search.queries import run_search

        uploads = self._decode_uploads(query)
        texts = self._texts_embedded(query)
        with self._reads:
            self.store.reload_if_changed()
            vector = self._served_vector(query, uploads, texts)
            return run_search(vector, self.store, self.meta, k=k, exclude=query.exclude_ids, filter=filter)

    def serve_map(
        self, query: Query, *, n: int = 200, expand: int = 0, seed: int = 0, filter: Filter | None = None
    ) -> NeighbourhoodMap:
        """`map` for a server: uploads decoded as in `serve_search`, and the layout made outside the read
        lock, its store reads taking turns with searches. Should an ingest elsewhere drop some of the images
        mid-layout, the map fails with UsageError (400) rather than showing a mix of two generations."""
        from retrieval.maps.layout import build_map
        from retrieval.search.queries import run_search

        uploads = self._decode_uploads(query)
        texts = self._texts_embedded(query)
        with self._reads:
            self.store.reload_if_changed()
            vector = self._served_vector(query, uploads, texts)
            allowed = self._allowed(filter)
            hits = run_search(
                vector, self.store, self.meta, k=n, exclude=query.exclude_ids, filter=filter, allowed=allowed
            )
            store = cast(Store, _TakingTurns(self.store, self._reads))
        return build_map(query, vector, hits, store, self.meta, expand=expand, seed=seed, allowed=allowed)

    def _decode_uploads(self, query: Query) -> dict[bytes, Image.Image]:
        from retrieval.files.decoding import decode_image

        with self._reads:
            min_side = self.embedder.input_size
        return {
            part.value: decode_image(part.value, min_side=min_side, max_pixels=self.upload_pixel_budget).image
            for part in query.parts
            if part.kind == "image" and isinstance(part.value, bytes)
        }

    def _served_vector(
        self,
        query: Query,
        uploads: dict[bytes, Image.Image],
        embed_texts: Callable[[list[str]], np.ndarray],
    ) -> np.ndarray:
        from retrieval.search.queries import query_vector

        def embed_image(source: Path | bytes) -> np.ndarray:
            if isinstance(source, bytes) and source in uploads:
                emb = self.embedder
                with self._forwards:
                    return emb.embed_images([uploads[source]])[0]
            return self._embed_image(source)

        return query_vector(
            query, embed_texts=embed_texts, embed_image=embed_image, stored_vector=self._stored_vector
        )

    def _thumbnail_cache(self, side: int) -> ThumbnailCache:
        from retrieval.files.thumbnails import thumbnail_cache

        if side not in self._thumbs:
            self._thumbs[side] = thumbnail_cache(self.dir / "thumbs", side)
        return self._thumbs[side]

    def status(self) -> IndexStatus:
        """Stats of the index as served now (after switching to its newest vector generation)."""
        with self._reads:
            self.store.reload_if_changed()
            return IndexStatus(
                stats=self.stats(),
                generation=self.store.generation,
                text_search=bool(self.embedder.supports_text),
                random_weights=self.embedder.spec.random_weights,
            )

    def stats(self, *, failures: int | None = 20) -> IndexStats:
        """Counts, model and sizes of the index, with its first `failures` failed files by path (None: all;
        `counts["failures"]` always has how many there are)."""
        from retrieval.vectors import saved_stats

        manifest = self.manifest
        store_stats: dict[str, Any] = {}
        vectors: int | None = 0
        try:
            # The default store answers from its manifest (what it last saved): a million-vector graph is
            # not loaded (seconds, hundreds of MB) to count it.
            saved = saved_stats(self.store_spec, self.dir / "vectors")
            store_stats = saved if saved is not None else self.store.stats()
            vectors = int(store_stats["n"]) if saved is not None else len(self.store)
        except IndexNotFoundError:
            pass
        except IndexCorruptError as exc:
            raise IndexCorruptError(
                f"the vector index of {self.name!r} is damaged: {exc}; "
                "`retrieval doctor --fix` rebuilds it from the stored vectors"
            ) from exc
        except StoreUnavailableError as exc:  # the local part is still worth showing
            store_stats, vectors = {"kind": self.store_spec.kind, "unavailable": str(exc)}, None
        db_bytes = sum(p.stat().st_size for p in self.dir.glob(DB_NAME + "*") if p.is_file())
        return IndexStats(
            name=self.name,
            path=str(self.dir),
            model=manifest.get("model"),
            embedder_id=manifest.get("embedder_id"),
            dim=manifest.get("dim"),
            counts=self._db.counts(),
            vectors=vectors,
            bytes_on_disk={"database": db_bytes, "vectors": _folder_size(self.dir / "vectors")},
            store=store_stats,
            failures=self._db.failures(limit=failures),
            folders=self._db.roots(),
        )

    def summary(self) -> IndexSummary:
        """What `retrieval list` shows of this index, from its database alone.

        Raises:
            IndexNotFoundError: there is no such index.
        """
        manifest = self.manifest
        counts = self._db.counts()
        return IndexSummary(
            name=self.name,
            path=str(self.dir),
            model=manifest.get("embedder_id") or manifest.get("model"),
            images=counts["images"],
            files=counts["files"],
            bytes_on_disk=_folder_size(self.dir),
            folders=self._db.roots(),
            last_ingest=manifest.get("updated_at"),
        )

    def doctor(self, *, fix: bool = False) -> DoctorReport:
        """Check the vector index (its files open, every stored vector is intact) and its agreement with the
        database (every embedded row has one vector, every vector a row). With fix: rebuild a damaged vector
        index from the stored vectors, then make the database agree; images left without a vector are
        embedded again by the next ingest.

        A damaged database is refused (IndexCorruptError): when the engine opens one of up to
        QUICK_CHECK_MAX_BYTES, here for one of any size. It is not repaired here.
        """
        from retrieval.ingest.pipeline import reconcile

        self.meta.check()
        folder = self.dir / "vectors"
        embedded = self.meta.embedded_ids()
        in_store: set[int] = set()
        damage: str | None = None
        try:
            in_store = {int(i) for i in self.store.ids()}
            garbled = self.store.garbled_ids()
            if len(garbled):
                damage = f"{len(garbled)} stored vectors are garbled (not unit length)"
        except IndexCorruptError as exc:
            damage = str(exc.__cause__ or exc)
        extra, missing = (in_store - embedded, embedded - in_store) if damage is None else (set(), set())
        problems = []
        if damage is not None:
            problems.append(f"the vector index is damaged: {damage}; --fix rebuilds it from its vectors")
        if extra:
            problems.append(f"{len(extra)} vectors have no database row (left by an interrupted write)")
        if missing:
            problems.append(
                f"{len(missing)} images marked embedded have no vector (they will be re-embedded)"
            )
        fixed, repairs = False, list[str]()
        if fix and problems:
            lock = self._lock()
            self._acquire(lock)
            try:
                with _write_errors(self.dir):
                    self._drop_store()
                    store = (
                        self._rebuilt(repairs)
                        if damage
                        else open_store(self.store_spec, folder, writable=True)
                    )
                    try:
                        dropped, reset = reconcile(self.meta, store, full=True)
                    finally:
                        store.close()
                if dropped:
                    repairs.append(f"dropped {dropped} vectors that had no database row")
                if reset:
                    repairs.append(f"{reset} images lost their vector: the next ingest embeds them again")
                fixed = True
            finally:
                lock.release()
        return DoctorReport(
            embedded_rows=len(embedded),
            vectors=len(in_store),
            vectors_without_row=len(extra),
            rows_without_vector=len(missing),
            fixed=fixed,
            problems=problems,
            damage=damage,
            repairs=repairs,
        )

    def _rebuilt(self, repairs: list[str]) -> Store:
        """The damaged vector store rebuilt from its stored vectors or, when none can be trusted, set aside
        and replaced by an empty one (every image is then embedded again)."""
        folder = self.dir / "vectors"
        dim = self.manifest.get("dim")
        try:
            store, lost = rebuild_store(self.store_spec, folder, dim=dim)
        except IndexCorruptError as exc:
            if dim is None:
                raise
            from retrieval.metadata import utcnow

            aside = folder.with_name(f"vectors.damaged-{utcnow():%Y%m%dT%H%M%S}")
            folder.rename(aside)
            repairs.append(f"nothing could be recovered ({exc}): moved the vector index to {aside.name}")
            return create_store(self.store_spec, folder, int(dim))
        repairs.append(f"rebuilt the vector index from {len(store)} stored vectors ({lost} lost)")
        return store


def list_indexes(home: Path | str | None = None) -> list[IndexSummary]:
    """Every index under the home (default: see `retrieval.settings.resolve_home`), by name. An index that
    cannot be opened (damaged, written by a newer retrieval) is listed with its `problem`."""
    folder = resolve_home(home)
    found = []
    candidates = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in candidates:
        if not (path / DB_NAME).is_file():
            continue  # not an index: the demo's photos, a stray folder
        try:
            with Engine(path.name, home=folder) as engine:
                found.append(engine.summary())
        except RetrievalError as exc:
            size = _folder_size(path)
            found.append(IndexSummary(path.name, str(path), None, 0, 0, size, [], None, problem=str(exc)))
    return found


def parse_cutoffs(text: str) -> list[int]:
    """The k's of `eval -k 1,5,10`.

    Raises:
        UsageError: anything but comma-separated positive integers.
    """
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"-k takes comma-separated integers such as 1,5,10, not {text!r}") from None
    if not ks or min(ks) < 1:
        raise UsageError(f"-k takes comma-separated integers of at least 1, not {text!r}")
    return ks


def evaluate(
    folder: Path | str,
    *,
    model: str | None = None,
    pretrained: str | None = "default",
    weights: Path | None = None,
    device: str = "auto",
    precision: str | None = None,
    ks: list[int] | None = None,
    split: float | None = None,
    seed: int = 0,
    compare: bool = False,
    projections: list[str] | None = None,
    dims: int | None = None,
    head_steps: int | None = None,
    save_projection: str | None = None,
    index: str | None = None,
    home: Path | str | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Measure retrieval on a labelled folder (one sub-folder per class): what `retrieval eval` runs.

    With `compare`, PCA, LDA and the triplet head are measured beside the raw vectors; `projections` adds
    some of them. With `save_projection` ("pca", "lda" or "head"), that projection is fitted on the
    training part and starts the new index `index` (see `Engine.set_projection`).

    Raises:
        UsageError: an unknown projection, --save-projection without a new index name, or bad cut-offs.
        WeightsUnavailableError, IndexMismatchError: as `Engine`.
    """
    from retrieval.embedders import create_embedder
    from retrieval.embedders.projections import KINDS, HeadParams
    from retrieval.quality.evaluation import METHODS, evaluate_folder

    methods = ["raw", *(METHODS[1:] if compare else []), *(projections or [])]
    unknown = [m for m in [*methods, *([save_projection] if save_projection else [])] if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown projection {unknown[0]!r}: choose one of {', '.join(KINDS)}")
    if save_projection and save_projection not in KINDS:
        raise UsageError(f"--save-projection takes one of {', '.join(KINDS)}, not {save_projection!r}")
    if save_projection and index is None:
        raise UsageError("--save-projection starts a new index: name it with --index NAME")
    with ExitStack() as stack:
        engine: Engine | None = None
        if save_projection:
            assert index is not None
            engine = stack.enter_context(
                Engine(
                    index,
                    home=home,
                    model=model,
                    pretrained=pretrained,
                    weights=weights,
                    device=device,
                    batch_size=batch_size,
                    precision=precision,
                )
            )
            if engine.exists:
                raise UsageError(f"index {index!r} already exists; --save-projection starts a new index")
            embedder = engine.embedder
            methods.append(save_projection)
        else:
            embedder = stack.enter_context(
                create_embedder(
                    model or DEFAULT_MODEL,
                    pretrained=pretrained,
                    weights=weights,
                    device=device,
                    batch_size=batch_size,
                    precision=precision,
                )
            )
        report = evaluate_folder(
            folder,
            embedder,
            ks=ks or [1, 5, 10],
            test_fraction=split,
            seed=seed,
            methods=list(dict.fromkeys(methods)),
            dims={"pca": dims, "head": dims} if dims else None,
            head=HeadParams() if head_steps is None else HeadParams(steps=head_steps),
            batch_size=batch_size,
            progress=progress,
        )
        if engine is not None and save_projection:
            engine.set_projection(report.projections[save_projection])
        return report
