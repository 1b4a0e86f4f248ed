"""`Engine`: one index (metadata + vectors + its embedder) opened as a unit; what the CLI and server call.

Heavy parts load lazily and once: the database on construction, the vector store on the first
search, the model on the first query or ingest that needs it. Close it (or use `with`).
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from retrieval.embedders import Embedder, SupersededEmbedderWarning, create_embedder, parse_embedder_name
from retrieval.embedders.projections import KINDS, HeadParams, ProjectedEmbedder, Projection, fit_projection
from retrieval.errors import (
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexWriteError,
    QueryError,
    RetrievalError,
    UsageError,
)
from retrieval.files.decoding import decode_image
from retrieval.ingest.pipeline import (
    Ingestor,
    IngestProgress,
    IngestReport,
    PrepareStage,
    ProgressFn,
    reconcile,
    remove_paths,
)
from retrieval.maps.layout import NeighbourhoodMap, build_map
from retrieval.maps.render import VIEWER_FILES as MAP_VIEWER_FILES
from retrieval.maps.render import ColourBy, RenderedMap, render_map
from retrieval.maps.thumbnails import ThumbnailCache
from retrieval.metadata import DB_NAME, ImageRecord, MetadataStore, utcnow
from retrieval.quality.evaluation import (
    METHODS,
    EvalReport,
    embed_labelled,
    evaluate_folder,
    load_labelled_folder,
)
from retrieval.search.duplicates import (
    DEFAULT_NEIGHBOURS,
    DuplicateReport,
    default_threshold,
    find_duplicates,
)
from retrieval.search.queries import Query, QueryPart, SearchHit, query_vector, run_search
from retrieval.settings import DEFAULT_INDEX, DEFAULT_MAX_PIXELS, UPLOAD_MAX_PIXELS, index_dir
from retrieval.vectors import (
    Store,
    StoreSpec,
    check_available,
    create_store,
    open_store,
    parse_kind,
    rebuild_store,
    vectors_present,
)

__all__ = [
    "DEFAULT_INDEX",
    "DEFAULT_MODEL",
    "MAP_VIEWER_FILES",
    "DoctorReport",
    "Engine",
    "EvalReport",
    "ImageRecord",
    "IndexStats",
    "IndexStatus",
    "NeighbourhoodMap",
    "Query",
    "QueryPart",
    "SearchHit",
    "evaluate",
    "parse_cutoffs",
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
    vectors: int
    bytes_on_disk: dict[str, int]
    store: dict[str, Any]
    failures: list[tuple[str, str]]


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


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


@contextmanager
def _write_errors(folder: Path) -> Iterator[None]:
    """Turn a failed write (disk full, read-only folder, I/O error) into one IndexWriteError.

    Vectors are saved as a new generation and the database commits after them, so a write that
    fails leaves the previous version of the index whole.
    """
    try:
        yield
    except (OSError, OperationalError) as exc:
        reason = str(exc.orig) if isinstance(exc, OperationalError) else exc.strerror or str(exc)
        raise IndexWriteError(
            f"cannot write the index in {folder}: {reason}; the previous version is intact, "
            "make room (or fix the folder) and run the command again"
        ) from exc


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
        if requested.is_set():
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield checked
    finally:
        signal.signal(signal.SIGINT, previous)


class Engine:
    """An index by name under a home folder.

    Args:
        index: index name (a folder under the home).
        home: folder of all indexes; default $RETRIEVAL_HOME, else ./indexes.
        model: embedder name for a new index (default "clip"); for an existing index it must match.
        pretrained: weights tag, or None / "none" for random init (testing only).
        weights: local checkpoint file instead of downloadable weights.
        device: "cpu", "cuda" or "auto".
        store: vector store of a new index, "hnswlib" (default) or "milvus"; an index keeps the one it has.
        milvus_uri: Milvus server of a new Milvus index (default $RETRIEVAL_MILVUS_URI, else Milvus Lite
            inside the index folder).
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
    ) -> None:
        self.name = index
        self.dir = index_dir(index, home)
        self.device = device
        self.batch_size = batch_size
        self._model_arg = model
        self._pretrained_arg = pretrained
        self._weights_arg = Path(weights).expanduser().resolve() if weights else None
        if self._weights_arg is not None and not self._weights_arg.is_file():
            raise UsageError(f"weights file {self._weights_arg} does not exist")
        if store is not None:
            parse_kind(store)  # an unknown store is a usage error before any model loads
        self._store_arg, self._milvus_uri_arg = store, milvus_uri
        self._new_store_spec: StoreSpec | None = None
        self._embedder: Embedder | None = None
        self._store: Store | None = None
        self._meta: MetadataStore | None = None
        # Reads share the embedder, the vector store's reload and hnswlib's search settings, none of which
        # is made for concurrent use: a server's threads take turns through this lock.
        self._reads = threading.RLock()
        self._thumbs: dict[int, ThumbnailCache] = {}
        # Two requests making the same thumbnail would write the same temporary file: one lock per id stripe.
        self._thumb_locks = tuple(threading.Lock() for _ in range(64))
        if self.exists:
            self._meta = MetadataStore(self.dir / DB_NAME)
            self._refuse_emptied_database()
            self._check_model_matches()
            if "model" in self.manifest:
                self.store_spec.check_request(self.name, store, milvus_uri)

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.dir / DB_NAME).is_file()

    @property
    def meta(self) -> MetadataStore:
        if self._meta is None:
            raise IndexNotFoundError(
                f"no index named {self.name!r} in {self.dir.parent}; build one with `retrieval ingest DIR`"
            )
        return self._meta

    @property
    def manifest(self) -> dict[str, Any]:
        return self.meta.get_manifest()

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
            self.meta  # noqa: B018 - raises IndexNotFoundError for an index that does not exist
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
        if self._embedder is None:
            name, pretrained, weights = self._embedder_args()
            emb = create_embedder(
                name, pretrained=pretrained, weights=weights, device=self.device, batch_size=self.batch_size
            )
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

    def _embedder_args(self) -> tuple[str, str | None, Path | None]:
        manifest = self.manifest if self.exists else {}
        if "model" in manifest:
            weights = self._weights_arg or (Path(manifest["weights"]) if manifest.get("weights") else None)
            return _recorded_model(manifest), manifest.get("pretrained"), weights
        return self._model_arg or DEFAULT_MODEL, self._pretrained_arg, self._weights_arg

    def _refuse_emptied_database(self) -> None:
        """No model recorded but vectors saved: the database was truncated to nothing or replaced."""
        if "model" not in self.meta.get_manifest() and vectors_present(self.dir / "vectors"):
            path = self.meta.path
            self.close()
            raise IndexCorruptError(
                f"database {path} is empty but the index has vectors (the file was truncated or replaced); "
                f"restore it from a backup, or delete the index folder {self.dir} and ingest again"
            )

    def _check_model_matches(self) -> None:
        manifest = self.meta.get_manifest()
        if self._model_arg is None or "model" not in manifest:
            return
        asked = parse_embedder_name(self._model_arg, self._pretrained_arg)
        recorded = parse_embedder_name(_recorded_model(manifest), manifest.get("pretrained"))
        if asked != recorded:
            raise IndexMismatchError(
                f"index {self.name!r} was built with {manifest.get('embedder_id', manifest['model'])}, "
                f"not {self._model_arg}; drop --model or choose another --index"
            )

    def _drop_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _back_to_saved_version(self) -> None:
        """After a failed or interrupted write: forget unsaved changes, and drop vectors saved for rows the
        database never committed, which would crowd results out (best effort: the next writer does it too)."""
        self._drop_store()
        try:
            with open_store(self.store_spec, self.dir / "vectors", writable=True) as store:
                reconcile(self.meta, store)
        except (RetrievalError, OSError, SQLAlchemyError):
            pass

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._meta is not None:
            self._meta.close()
            self._meta = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir / "write.lock", timeout=0)

    def _acquire(self, lock: FileLock) -> None:
        try:
            lock.acquire()
        except Timeout:
            raise IndexBusyError(
                f"index {self.name!r} is busy: another process is writing to it ({self.dir}); "
                "wait for it to finish"
            ) from None

    def _open_for_writing(self) -> Store:
        """Create the index on first use, open its store writable and repair what a crash left."""
        emb = self.embedder
        if self._meta is None:
            self._meta = MetadataStore(self.dir / DB_NAME)
        manifest = self._meta.get_manifest()
        spec = self.store_spec
        if "model" not in manifest:
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
                    dim=emb.dim,
                    preprocess=emb.preprocess_id,
                    **spec.to_manifest(),
                    created_at=utcnow().isoformat(timespec="seconds"),
                )
        folder = self.dir / "vectors"
        self._drop_store()
        try:
            self._store = open_store(spec, folder, writable=True)
        except IndexNotFoundError:
            self._store = create_store(spec, folder, emb.dim)
            self._store.save()
        if self._store.dim != emb.dim:
            raise IndexMismatchError(f"vectors in {folder} have dim {self._store.dim}, model gives {emb.dim}")
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
    ) -> IngestReport:
        """Bring the index up to date with `root`: embed new and changed images, forget deleted ones.

        `ray_address` decodes and embeds on Ray (`retrieval.ingest.ray`; the `ray` extra): "local" starts a
        runtime on this machine, "auto" joins the one `ray start` runs here, "ray://HOST:10001" a cluster;
        `workers` then counts Ray actors (one model each) instead of decode threads.

        Raises:
            IndexBusyError: another process is writing to this index.
            IndexMismatchError: the index was built with another model.
            ClusterError: the Ray cluster cannot be reached or failed (what was recorded is saved).
        """
        lock = self._lock()
        self._acquire(lock)
        try:
            self.embedder  # noqa: B018 - loaded first: a model that fails to load is not a write error
            with (
                _stop_between_files(progress) as checked_progress,
                self._ray_stage(ray_address, workers, checked_progress) as stage,
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
                )
                return ingestor.run(Path(root), prune=prune)
        except BaseException:
            self._back_to_saved_version()
            raise
        finally:
            lock.release()

    @contextmanager
    def _ray_stage(
        self, address: str | None, workers: int | None, progress: ProgressFn | None
    ) -> Iterator[PrepareStage | None]:
        """The Ray stage for an ingest at `address`; None (the local stage) without one. Ray is imported only
        here, only when asked for."""
        if address is None:
            yield None
            return
        from retrieval.ingest.ray import EmbedderArgs, ray_stage

        name, pretrained, weights = self._embedder_args()
        emb = self.embedder
        base = emb.unprojected()  # the workers run the model; the projection is applied here
        args = EmbedderArgs(name, pretrained, str(weights) if weights else None, base.id)
        with ray_stage(
            address,
            emb,
            args,
            device=self.device,
            batch_size=self.batch_size,
            workers=workers,
            progress=progress,
        ) as stage:
            yield stage

    def remove(self, paths: list[Path | str]) -> int:
        """Forget these files (the files themselves stay on disk); returns how many were indexed."""
        lock = self._lock()
        self._acquire(lock)
        try:
            with _write_errors(self.dir):
                store = self._open_for_writing()
                return remove_paths(self.meta, store, [Path(p).expanduser().resolve() for p in paths])
        except BaseException:
            self._back_to_saved_version()
            raise
        finally:
            lock.release()

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
        if isinstance(source, Path) and not source.is_file():
            raise QueryError(f"query image {source} does not exist")
        # Bytes are an upload (the server's or a caller's): the lower pixel budget of untrusted input.
        limit = UPLOAD_MAX_PIXELS if isinstance(source, bytes) else DEFAULT_MAX_PIXELS
        emb = self.embedder
        decoded = decode_image(source, min_side=emb.input_size, max_pixels=limit, keep_alpha=emb.keeps_alpha)
        return emb.embed_images([decoded.image])[0]

    def _stored_vector(self, content_id: int) -> np.ndarray:
        if content_id not in self.store:
            raise QueryError(f"no image with id {content_id} in index {self.name!r}")
        return self.store.vectors([content_id])[0]

    def resolve_image_ref(self, ref: str | int | Path) -> QueryPart:
        """An indexed image by id or path, or else an image file to embed: the part for 'more like this'."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return QueryPart("id", int(ref))
        path = Path(ref).expanduser()
        content_id = self.meta.content_id_for_path(path.resolve()) if path.exists() else None
        if content_id is not None:
            return QueryPart("id", content_id)
        if not path.is_file():
            raise QueryError(f"{ref} is neither an indexed image id nor an image file")
        return QueryPart("image", path.resolve())

    def query_vector(self, query: Query) -> np.ndarray:
        return query_vector(
            query,
            embed_texts=self._embed_texts,
            embed_image=self._embed_image,
            stored_vector=self._stored_vector,
        )

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed_texts(texts)

    def search(
        self, query: Query, *, k: int = 10, min_score: float | None = None, ef: int | None = None
    ) -> list[SearchHit]:
        """Top-k images for a query of text/image/id parts, each added or subtracted."""
        with self._reads:
            self.store.reload_if_changed()
            vector = self.query_vector(query)
            return run_search(
                vector, self.store, self.meta, k=k, min_score=min_score, exclude=query.exclude_ids, ef=ef
            )

    def search_text(self, text: str, *, k: int = 10, min_score: float | None = None) -> list[SearchHit]:
        return self.search(Query.of(QueryPart("text", text)), k=k, min_score=min_score)

    def search_image(
        self, image: Path | bytes, *, k: int = 10, min_score: float | None = None
    ) -> list[SearchHit]:
        source = Path(image).expanduser() if isinstance(image, str | Path) else image
        return self.search(Query.of(QueryPart("image", source)), k=k, min_score=min_score)

    def similar(
        self, ref: str | int | Path, *, k: int = 10, min_score: float | None = None
    ) -> list[SearchHit]:
        """More like an indexed image (by id or path; the image itself is left out) or an image file."""
        return self.search(Query.of(self.resolve_image_ref(ref)), k=k, min_score=min_score)

    def map(
        self,
        query: Query,
        *,
        n: int = 200,
        expand: int = 0,
        seed: int = 0,
        perplexity: float | None = None,
        clusters: int | None = None,
    ) -> NeighbourhoodMap:
        """A t-SNE map of the query and its top-n results; with expand > 0, also each result's `expand`
        nearest neighbours. Draw it with `render_map`. See retrieval/maps/layout.py."""
        with self._reads:
            self.store.reload_if_changed()
            vector = self.query_vector(query)
            hits = run_search(vector, self.store, self.meta, k=n, exclude=query.exclude_ids)
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
            )

    def render_map(
        self, m: NeighbourhoodMap, out: Path | str, *, colour_by: ColourBy = "cluster"
    ) -> RenderedMap:
        """Write a map as .png, .svg or .html; thumbnails are made once into the index's `thumbs/` folder."""
        return render_map(m, out, ThumbnailCache(self.dir / "thumbs"), self.meta, colour_by=colour_by)

    def duplicates(
        self, *, threshold: float | None = None, neighbours: int = DEFAULT_NEIGHBOURS
    ) -> DuplicateReport:
        """Groups of near-duplicate images found through the index (each image's nearest neighbours);
        `threshold` is a cosine, by default the one measured for this index's model."""
        if threshold is None:
            threshold = default_threshold(self.manifest.get("embedder_id"))
        with self._reads:
            self.store.reload_if_changed()
            return find_duplicates(self.store, self.meta, threshold=threshold, k=neighbours)

    # -- serving: what a front end needs, each call safe from many threads -------------------------

    def warm_up(self) -> None:
        """Load what searches need (database, vector store, model) now rather than on the first request.

        Raises:
            IndexNotFoundError: the index does not exist or has no vectors yet.
            WeightsUnavailableError, IndexMismatchError: the model cannot be loaded.
        """
        with self._reads:
            self.meta  # noqa: B018 - each property loads its part once
            self.store  # noqa: B018
            if self.embedder.supports_text:
                self.embedder.embed_texts(["warm-up"])

    def refresh(self) -> bool:
        """Switch to the newest vector generation if another process (an ingest) saved one."""
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
        their thumbnails apart). (None, "") for an unknown id; (None, hash) when the file cannot be read."""
        record = self.record(image_id)
        if record is None:
            return None, ""
        digest = self.meta.content_hashes([image_id]).get(image_id, "")
        cache = self._thumbnail_cache(side)
        with self._thumb_locks[image_id % len(self._thumb_locks)]:
            return cache.get_many(self.meta, [(image_id, record.path)])[0], digest

    def _thumbnail_cache(self, side: int) -> ThumbnailCache:
        if side not in self._thumbs:
            folder = self.dir / "thumbs"
            default = ThumbnailCache(folder)
            self._thumbs[side] = default if default.side == side else ThumbnailCache(folder / str(side), side)
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

    def stats(self) -> IndexStats:
        manifest = self.manifest
        store_stats: dict[str, Any] = {}
        vectors = 0
        try:
            store_stats = self.store.stats()
            vectors = len(self.store)
        except IndexNotFoundError:
            pass
        db_bytes = sum(p.stat().st_size for p in self.dir.glob(DB_NAME + "*") if p.is_file())
        return IndexStats(
            name=self.name,
            path=str(self.dir),
            model=manifest.get("model"),
            embedder_id=manifest.get("embedder_id"),
            dim=manifest.get("dim"),
            counts=self.meta.counts(),
            vectors=vectors,
            bytes_on_disk={"database": db_bytes, "vectors": _folder_size(self.dir / "vectors")},
            store=store_stats,
            failures=self.meta.failures(limit=20),
        )

    def doctor(self, *, fix: bool = False) -> DoctorReport:
        """Check the vector index (its files open, every stored vector is intact) and its agreement with the
        database (every embedded row has one vector, every vector a row). With fix: rebuild a damaged vector
        index from the stored vectors, then make the database agree; images left without a vector are
        embedded again by the next ingest.

        A damaged database is refused when the engine opens (IndexCorruptError); it is not repaired here.
        """
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
                        dropped, reset = reconcile(self.meta, store)
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
            aside = folder.with_name(f"vectors.damaged-{utcnow():%Y%m%dT%H%M%S}")
            folder.rename(aside)
            repairs.append(f"nothing could be recovered ({exc}): moved the vector index to {aside.name}")
            return create_store(self.store_spec, folder, int(dim))
        repairs.append(f"rebuilt the vector index from {len(store)} stored vectors ({lost} lost)")
        return store


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
    ks: list[int] | None = None,
    split: float | None = None,
    seed: int = 0,
    compare: bool = False,
    projections: list[str] | None = None,
    dims: int | None = None,
    head_steps: int = HeadParams.steps,
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
            head=HeadParams(steps=head_steps),
            batch_size=batch_size,
            progress=progress,
        )
        if engine is not None and save_projection:
            engine.set_projection(report.projections[save_projection])
        return report
