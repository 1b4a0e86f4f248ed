"""Ingest: bring an index up to date with a folder (new, changed, moved, duplicate, deleted files).

Pipeline: the main thread lists files and plans the work; a stage turns the files into what the model
needs and the model into vectors: by default (`LocalStage`) worker threads read, hash, decode and preprocess
(Pillow and the hash release the GIL) and the main thread embeds in batches; `retrieval.ingest.ray` has
a Ray cluster do it. Either way the main thread writes, in the files' order, through the same code.
Crash safety rests on one ordering: vectors are saved (atomically) before the database rows that
call them embedded are committed, and `reconcile` repairs the one gap a crash can leave.

Progress has two counts, as a user sees the work move: files decoded (reported by the stage as each file
finishes, from its threads) and files embedded (per batch, as the model returns). Thumbnails for the maps
and the web page are made in the decode threads from the pixels decoded for the model, and written once
their content has an id.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np

from retrieval import settings
from retrieval.embedders import Embedder
from retrieval.errors import ClusterError, DecodeError, UsageError
from retrieval.files.decoding import DecodedImage, HeaderInfo, check_file_size, decode_image, read_header
from retrieval.files.discovery import (
    FOLDER_NOT_READABLE,
    FoundFile,
    Skipped,
    discover,
    discover_paths,
    file_hash,
)
from retrieval.files.thumbnails import ThumbnailCache, thumbnails_of
from retrieval.metadata import Content, Failure, File, IngestWriter, MetadataStore, utcnow
from retrieval.vectors.base import Store


@dataclass(frozen=True)
class IngestProgress:
    """Reported through the caller's callback: `total` is None while still counting.

    In the "ingest" phase, of the `total` files to look at: `decoded` have been read (hashed, decoded and
    preprocessed, or found to hold known content, or failed), `done` recorded (saved at the next checkpoint,
    or when the ingest stops), `embedded` finished (their vectors are in the store, or they need none:
    linked to known content, failed). embedded <= done <= decoded, each only grows, all end at `total`.
    Other phases ("scan", "loading MODEL") count in `done` only.
    """

    phase: str
    done: int
    total: int | None
    decoded: int = 0
    embedded: int = 0


@dataclass
class IngestReport:
    """What an ingest did; `failed` and `skipped` list (path, reason); `unsupported` counts files that are
    not in an image format read here."""

    root: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    linked: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unsupported: int = 0
    #: Images whose metadata `--refresh-metadata` read again from their files (their vectors kept).
    refreshed: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


class IngestInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a KeyboardInterrupt from the progress callback) stopped an ingest; `report` says what was
    saved before it stopped. A KeyboardInterrupt, so that callers that stop on one still do."""

    def __init__(self, report: IngestReport) -> None:
        super().__init__()
        self.report = report


@dataclass
class Prepared:
    """One file ready to record: a failure (`error`), content already embedded (`known_id`), or new content
    whose `payload` the stage's `vectors` turns into its vector."""

    found: FoundFile
    hash: str
    known_id: int | None = None
    payload: Any = None
    width: int = 0
    height: int = 0
    format: str = ""
    captured_at: Any = None
    error: str | None = None
    thumbnails: dict[int, bytes] = field(default_factory=dict)
    #: What EXIF says beyond the capture time (a files.decoding.PhotoInfo), or None.
    photo: Any = None


ProgressFn = Callable[[IngestProgress], None]
#: What a stage calls as files finish decoding (the count that finished), from any thread.
DecodedFn = Callable[[int], None]

_NOT_UTF8 = "file name is not valid UTF-8; rename the file to index it"


def _path_key(path: Path) -> str:
    """A path as stored in the database: itself, or for a name that is not valid UTF-8 (which SQLite text
    cannot hold) its bytes with the bad ones written as \\xNN, so the file can still be named in failures."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def open_and_hash(path: Path, max_bytes: int) -> tuple[BinaryIO, str]:
    """Open an image file and hash it as a stream: (the file, open at its start for decoding, which the
    caller closes; its content hash). The file is read twice, to hash and to decode, rather than held in
    memory (read whole, a 1.5 GB file took 2.1 GB). One decoded from the same open file as it was hashed
    cannot be swapped in between. Raises DecodeError with the reason ingest records: cannot be read,
    vanished, or larger than `max_bytes`."""
    try:
        fp = path.open("rb")
    except FileNotFoundError:
        raise DecodeError(path, "file disappeared before it could be read") from None
    except OSError as exc:
        raise DecodeError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        check_file_size(path, os.fstat(fp.fileno()).st_size, max_bytes)
        digest = file_hash(fp)
        fp.seek(0)
    except OSError as exc:
        fp.close()
        raise DecodeError(path, f"cannot read: {exc.strerror or exc}") from None
    except BaseException:
        fp.close()
        raise
    return fp, digest


def read_and_hash(found: FoundFile, lookup: LookupFn, max_bytes: int) -> tuple[Prepared, BinaryIO | None]:
    """Identify a file's content: the Prepared of a file that cannot be read or is too large (error) or whose
    content is already embedded (known_id), else one that still needs embedding, with the file open for
    decoding (the caller closes it)."""
    try:
        check_file_size(found.path, found.size, max_bytes)  # as listed: refused before a byte is read
        fp, digest = open_and_hash(found.path, max_bytes)
    except DecodeError as exc:
        return Prepared(found, "", error=exc.reason), None
    known_id = lookup(digest)
    if known_id is not None:
        fp.close()
        return Prepared(found, digest, known_id=known_id), None
    return Prepared(found, digest), fp


def decode_for(embedder: Embedder, source: BinaryIO | bytes) -> tuple[Any, DecodedImage]:
    """Decode an open image file (or its bytes) and preprocess it for `embedder`: (what `embed_preprocessed`
    takes, the decoded image). Every failure is a DecodeError whose reason ingest records."""
    try:
        decoded = decode_image(source, min_side=embedder.input_size, keep_alpha=embedder.keeps_alpha)
        return embedder.preprocess(decoded.image), decoded
    except DecodeError:
        raise
    except Exception as exc:  # a decoder bug must not end a long ingest
        raise DecodeError("<bytes>", f"cannot decode: {type(exc).__name__}: {exc}") from exc


def default_workers() -> int:
    """Decode threads: one per core. On a GPU the cores only decode; on a CPU they share with torch's
    threads (which wait passively, see retrieval/__init__.py) and the bounded look-ahead keeps the
    decoders from running more than a batch ahead of the model."""
    return max(1, os.cpu_count() or 1)


def reconcile(meta: MetadataStore, store: Store, *, full: bool = False) -> tuple[int, int]:
    """Make the store and the database agree after a crash; return (vectors dropped, rows reset).

    Vectors whose rows were never committed are dropped; rows marked embedded whose vector is
    missing go back to pending, so the next ingest embeds them again. A crash can only leave vectors
    above the last committed id or under a row still pending (vectors are saved before rows commit), so
    only those are looked up, unless the counts then disagree (or `full`, as doctor asks): listing every
    id of a Milvus server takes ~14 s at 100k, and reading every embedded id from SQLite 0.35 s there
    (each batch of `watch` starts here).
    """
    dropped = 0
    if not full:
        last, pending = meta.last_and_pending_ids()
        dropped = store.remove(store.ids_above(last).tolist() + pending)
        if len(store) == meta.embedded_count():
            if dropped:
                store.save()
            return dropped, 0
    embedded = meta.embedded_ids()
    in_store = {int(i) for i in store.ids()}
    extra = in_store - embedded
    missing = embedded - in_store
    if extra:
        store.remove(sorted(extra))
    if missing:
        with meta.session() as s:
            meta.mark_not_embedded(s, missing)
    if extra or dropped:
        store.save()
    return dropped + len(extra), len(missing)


LookupFn = Callable[[str], int | None]


class PrepareStage(Protocol):
    """Where files become vectors. The ingestor lists and plans, then records what `prepared` yields, in
    order, and calls `vectors` once per batch of new content."""

    def prepared(
        self, todo: list[FoundFile], lookup: LookupFn, decoded: DecodedFn | None = None
    ) -> Generator[Prepared, None, None]:
        """One `Prepared` per file of `todo`, in `todo`'s order. `lookup(hash)` is the id of content already
        embedded (in the index or earlier in this run), so that its file is linked, not embedded again.
        `decoded(n)` is told as files finish, before they are yielded, from whichever thread did them."""
        ...

    def vectors(self, payloads: list[Any]) -> np.ndarray:
        """The (n, dim) float32 unit vectors of the `payload`s of n prepared files."""
        ...


@runtime_checkable
class SkipsEmbeddedContent(Protocol):
    """A stage that hashes where it decodes (on other machines, `retrieval.ingest.ray`) and so must know
    before it starts which content the index has embedded, to skip decoding it."""

    def use_embedded_hashes(self, hashes: Iterable[str]) -> None: ...


class LocalStage:
    """The default stage: decode threads on this machine, the model in the ingest's own thread. With
    `thumbnail_sides`, the decode threads also make JPEG thumbnails of those sides from the decoded pixels."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        workers: int,
        batch_size: int,
        max_file_bytes: int | None = None,
        thumbnail_sides: tuple[int, ...] = (),
    ) -> None:
        self.embedder = embedder
        self.workers = workers
        self.batch_size = batch_size
        self.max_file_bytes = settings.max_file_bytes() if max_file_bytes is None else max_file_bytes
        self.thumbnail_sides = thumbnail_sides

    def _prepare(self, found: FoundFile, lookup: LookupFn) -> Prepared:
        hashed, fp = read_and_hash(found, lookup, self.max_file_bytes)
        if fp is None:
            return hashed
        digest = hashed.hash
        try:
            with fp:
                payload, decoded = decode_for(self.embedder, fp)
        except DecodeError as exc:
            return Prepared(found, digest, error=exc.reason)
        thumbnails: dict[int, bytes] = {}
        if self.thumbnail_sides:
            # A thumbnail that cannot be made here (out of memory) is made on request instead.
            with suppress(Exception):
                full_size = (decoded.width, decoded.height)
                thumbnails = thumbnails_of(decoded.image, self.thumbnail_sides, full_size)
        return Prepared(
            found,
            digest,
            payload=payload,
            width=decoded.width,
            height=decoded.height,
            format=decoded.format,
            captured_at=decoded.captured_at,
            thumbnails=thumbnails,
            photo=decoded.info,
        )

    def _counted(self, found: FoundFile, lookup: LookupFn, decoded: DecodedFn) -> Prepared:
        prep = self._prepare(found, lookup)
        decoded(1)
        return prep

    def prepared(
        self, todo: list[FoundFile], lookup: LookupFn, decoded: DecodedFn | None = None
    ) -> Generator[Prepared, None, None]:
        tell = decoded or (lambda _n: None)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="retrieval-decode")
        try:
            window: deque[Future[Prepared]] = deque()
            ahead = self.workers * 2 + self.batch_size
            for found in todo:
                window.append(pool.submit(self._counted, found, lookup, tell))
                if len(window) >= ahead:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def vectors(self, payloads: list[Any]) -> np.ndarray:
        return self.embedder.embed_preprocessed(payloads)


class Ingestor:
    """One ingest run over one root; use `run()`. `stage` decodes and embeds (default: `LocalStage`)."""

    def __init__(
        self,
        meta: MetadataStore,
        store: Store,
        embedder: Embedder,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        checkpoint_every: int = 2000,
        checkpoint_seconds: float = 120.0,
        progress: ProgressFn | None = None,
        retry_failed: bool = False,
        stage: PrepareStage | None = None,
        thumbnails: Iterable[ThumbnailCache] = (),
        refresh_metadata: bool = False,
    ) -> None:
        self.meta = meta
        self.store = store
        self.embedder = embedder
        self.batch_size = batch_size
        self.workers = workers or default_workers()
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.progress = progress or (lambda _p: None)
        self.retry_failed = retry_failed
        self.thumbnails = {cache.side: cache for cache in thumbnails}
        self.stage = stage or LocalStage(
            embedder,
            workers=self.workers,
            batch_size=batch_size,
            thumbnail_sides=tuple(sorted(self.thumbnails)),
        )
        # The counts reported in the "ingest" phase; the lock keeps them and the callback in step when
        # decode threads and this one report at once (the callback is never called by two at a time).
        self._counts = threading.Lock()
        self._total = 0
        self._decoded = 0
        self._done = 0
        self._embedded = 0
        self._embedded_waiting = 0
        self._thumb_writer: ThreadPoolExecutor | None = None
        self.refresh_metadata = refresh_metadata
        self._embedded_now: set[int] = set()
        self._run_hashes: dict[str, int] = {}
        self._unembedded: dict[str, int] = {}
        self._pending_ids: list[int] = []
        self._pending_contents: list[Content] = []
        self._pending_payloads: list[Any] = []

    # -- stage side -------------------------------------------------------------------------------

    def _lookup_hash(self, digest: str) -> int | None:
        if digest in self._run_hashes:
            return self._run_hashes[digest]
        return self.meta.embedded_content_id(digest)

    def _report(self, decoded: int = 0, done: int = 0, embedded: int = 0) -> None:
        """Add to the counts and tell the caller; from any thread."""
        with self._counts:
            self._decoded += decoded
            self._done += done
            self._embedded += embedded
            self.progress(
                IngestProgress(
                    "ingest", self._done, self._total, decoded=self._decoded, embedded=self._embedded
                )
            )

    def _decoded_some(self, n: int) -> None:
        self._report(decoded=n)

    def _keep_thumbnails(self, content_id: int, prep: Prepared) -> None:
        """Write the thumbnails the stage made, now that their content has an id; in a thread of their own
        (a few small files per image), off the model's."""
        if not prep.thumbnails or not self.thumbnails:
            return
        if self._thumb_writer is None:
            self._thumb_writer = ThreadPoolExecutor(1, thread_name_prefix="retrieval-thumbs")
        for side, data in prep.thumbnails.items():
            cache = self.thumbnails.get(side)
            if cache is not None:
                self._thumb_writer.submit(cache.put, content_id, prep.hash, data)
        prep.thumbnails = {}

    # -- main thread ------------------------------------------------------------------------------

    def _flush_batch(self, w: IngestWriter) -> int:
        """Embed and store the pending batch; the number of files it held."""
        if not self._pending_ids:
            return 0
        count = len(self._pending_ids)
        vectors = self.stage.vectors(self._pending_payloads)
        ids = np.asarray(self._pending_ids, dtype=np.int64)
        self.store.add(ids, np.asarray(vectors, dtype=np.float32))
        w.mark_embedded(
            self._pending_contents
        )  # the batch's rows in one go; committed at the next checkpoint
        self._pending_ids.clear()
        self._pending_contents.clear()
        self._pending_payloads.clear()
        self._embedded_waiting += count
        return count

    def _checkpoint(self, w: IngestWriter) -> None:
        self._flush_batch(w)
        self.store.save()
        w.commit()
        self._run_hashes.clear()  # committed now: visible to workers through the database

    def _flushed(self) -> int:
        """The files embedded by flushes since the last call: reported between files, never inside a flush
        or a checkpoint (the caller's callback may raise to stop the ingest)."""
        count, self._embedded_waiting = self._embedded_waiting, 0
        return count

    def run(
        self, root: Path, *, prune: bool = True, paths: Iterable[Path | str] | None = None
    ) -> IngestReport:
        """Ingest `root`; with `paths`, only those paths under it (files, or folders and what lies under
        them), a watch batch's: what a rescan would do to them, the rest of the folder not looked at.

        Raises:
            IngestInterrupted: a KeyboardInterrupt stopped it; what was recorded is saved, as its report says.
        """
        try:
            return self._run(root, prune=prune, paths=paths)
        finally:
            if self._thumb_writer is not None:
                self._thumb_writer.shutdown(wait=True)
                self._thumb_writer = None

    def _run(self, root: Path, *, prune: bool, paths: Iterable[Path | str] | None) -> IngestReport:
        started = time.monotonic()
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UsageError(f"{root} is not a folder; pass the folder of photos to index")
        given = Path(os.path.abspath(root))
        root = root.resolve()
        if _path_key(root) != str(root):
            raise UsageError(f"{_path_key(root)}: folder name is not valid UTF-8; rename it to index it")
        report = IngestReport(root=str(root))

        found: list[FoundFile] = []
        unlisted: list[str] = []  # folders that could not be listed: their files are not taken as deleted
        named = None if paths is None else _named_under(root, given, paths)
        for item in discover(root) if named is None else discover_paths(root, named):
            if isinstance(item, Skipped) and item.unsupported:
                report.unsupported += 1
            elif isinstance(item, Skipped):
                report.skipped.append((_path_key(item.path), item.reason))
                if item.reason.startswith(FOLDER_NOT_READABLE):
                    unlisted.append(_path_key(item.path).rstrip("/") + "/")
            else:
                found.append(item)
            if len(found) % 1000 == 0:
                self.progress(IngestProgress("scan", len(found), None))
        if unlisted and unlisted[0] == str(root).rstrip("/") + "/":
            # Gone between the check above and the listing (an unmount): not every file deleted.
            reason = report.skipped[0][1].removeprefix(FOLDER_NOT_READABLE + ": ")
            raise UsageError(f"{root} cannot be listed ({reason}); nothing was changed")

        with IngestWriter(self.meta) as w:
            root_id = w.root_id(str(root))
            # Files under this folder that an ingest of a parent or a sub-folder recorded are this
            # ingest's to update and to prune too; they keep the root that found them first.
            if named is None:
                known_files = w.files_under(str(root))
                known_failures = w.failures_under(str(root))
            else:  # only the named paths' rows: what they held, and what lay under those that were folders
                keys = [_path_key(p) for p in named]
                folders = [key for key, p in zip(keys, named, strict=True) if not p.is_file()]
                known_files = w.files_at(keys, folders)
                known_failures = w.failures_at(keys, folders)
            self._unembedded = w.unembedded_contents()

            todo: list[FoundFile] = []
            for item in found:
                key = _path_key(item.path)
                current = known_files.get(key)
                if current is not None:
                    row, embedded = current
                    if embedded and row.size == item.size and row.mtime_ns == item.mtime_ns:
                        report.unchanged += 1
                        continue
                failure = known_failures.get(key)
                if (
                    failure is not None
                    and not self.retry_failed
                    and failure.size == item.size
                    and failure.mtime_ns == item.mtime_ns
                ):
                    report.failed.append((key, failure.reason))
                    continue
                if key != str(item.path):
                    failed = Prepared(item, "", error=_NOT_UTF8)
                    self._apply(w, failed, root_id, known_files, known_failures, report)
                    continue
                todo.append(item)

            self._total, self._decoded, self._done, self._embedded = len(todo), 0, 0, 0
            self._report()
            since_checkpoint = 0
            last_checkpoint = time.monotonic()
            if isinstance(self.stage, SkipsEmbeddedContent):
                self.stage.use_embedded_hashes(w.embedded_hashes())
            stream = self.stage.prepared(todo, self._lookup_hash, self._decoded_some)
            try:
                for prep in stream:
                    waiting = len(self._pending_ids)
                    self._apply(w, prep, root_id, known_files, known_failures, report)
                    # Linked or failed: no vector to wait for.
                    finished = int(len(self._pending_ids) == waiting)
                    if len(self._pending_ids) >= self.batch_size:
                        self._flush_batch(w)
                    since_checkpoint += 1
                    self._report(done=1, embedded=finished + self._flushed())
                    if (
                        since_checkpoint >= self.checkpoint_every
                        or time.monotonic() - last_checkpoint > self.checkpoint_seconds
                    ):
                        self._checkpoint(w)
                        since_checkpoint = 0
                        last_checkpoint = time.monotonic()
            except (KeyboardInterrupt, ClusterError) as exc:
                # Ctrl-C, or a cluster that lost its workers: save every file recorded so far, then stop.
                report.interrupted = True
                stream.close()
                self._checkpoint(w)
                report.seconds = time.monotonic() - started
                if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, IngestInterrupted):
                    raise IngestInterrupted(report) from None
                raise
            finally:
                stream.close()

            self._flush_batch(w)
            seen = {_path_key(f.path) for f in found}
            if self.refresh_metadata:
                report.refreshed = self._refresh(w, known_files, seen)
            if prune:
                self._prune(w, root_id, seen, tuple(unlisted), known_files, known_failures, report)
            orphans = w.delete_orphans()
            if orphans:
                self.store.remove(orphans)
            w.set_manifest(updated_at=utcnow().isoformat(timespec="seconds"))
            self._checkpoint(w)
        report.seconds = time.monotonic() - started
        with suppress(KeyboardInterrupt):  # everything is saved: a stop asked for now has nothing to stop
            self._report(embedded=self._flushed())
        return report

    def _apply(
        self,
        w: IngestWriter,
        prep: Prepared,
        root_id: int,
        known_files: dict[str, tuple[File, bool]],
        known_failures: dict[str, Failure],
        report: IngestReport,
    ) -> None:
        key = _path_key(prep.found.path)
        existing = known_files.get(key)
        if prep.error is not None:
            known_failures[key] = w.record_failure(
                known_failures.get(key),
                root_id=root_id,
                path=key,
                reason=prep.error,
                size=prep.found.size,
                mtime_ns=prep.found.mtime_ns,
            )
            if existing is not None:  # the file became unreadable: it no longer has a vector
                w.forget(existing[0])
                del known_files[key]
            report.failed.append((key, prep.error))
            return

        content_id = prep.known_id
        if content_id is None and prep.hash in self._run_hashes:
            content_id = self._run_hashes[prep.hash]
        if content_id is None:
            content = w.content(
                hash=prep.hash,
                stale_id=self._unembedded.pop(prep.hash, None),
                width=prep.width,
                height=prep.height,
                format=prep.format,
                captured_at=prep.captured_at,
                photo=prep.photo,
            )
            content_id = content.id
            self._keep_thumbnails(content_id, prep)
            self._embedded_now.add(content_id)
            self._run_hashes[prep.hash] = content_id
            self._pending_ids.append(content_id)
            self._pending_contents.append(content)
            self._pending_payloads.append(prep.payload)
            report.embedded += 1
        else:
            report.linked += 1

        size, mtime_ns = prep.found.size, prep.found.mtime_ns
        if existing is None:
            w.add_file(root_id=root_id, path=key, content_id=content_id, size=size, mtime_ns=mtime_ns)
            report.added += 1
        else:
            w.update_file(existing[0], content_id=content_id, size=size, mtime_ns=mtime_ns)
            report.updated += 1
        failure = known_failures.pop(key, None)
        if failure is not None:
            w.forget(failure)

    def _refresh(self, w: IngestWriter, known_files: dict[str, tuple[File, bool]], seen: set[str]) -> int:
        """Read the metadata of the images this run did not decode again from their files' headers (no pixel
        is decoded, no vector made): what an index from before a metadata column existed needs. Returns
        how many images were refreshed; a file that cannot be read now is left as it was."""
        first_path: dict[int, str] = {}
        for path in sorted(known_files):
            row, _ = known_files[path]
            if path not in seen:
                continue
            w.set_folder(row)
            if row.content_id not in self._embedded_now:
                first_path.setdefault(row.content_id, path)
        total = len(first_path)
        self.progress(IngestProgress("metadata", 0, total))
        refreshed = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="retrieval-header") as pool:
            headers = pool.map(_header_or_none, first_path.values())
            for done, (content_id, header) in enumerate(zip(first_path, headers, strict=True), 1):
                if header is not None:
                    w.refresh_content(
                        content_id,
                        width=header.width,
                        height=header.height,
                        format=header.format,
                        captured_at=header.captured_at,
                        photo=header.info,
                    )
                    refreshed += 1
                self.progress(IngestProgress("metadata", done, total))
        return refreshed

    def _prune(
        self,
        w: IngestWriter,
        root_id: int,
        seen: set[str],
        unlisted: tuple[str, ...],
        known_files: dict[str, tuple[File, bool]],
        known_failures: dict[str, Failure],
        report: IngestReport,
    ) -> None:
        gone = [path for path in known_files if path not in seen and not path.startswith(unlisted)]
        for path in gone:
            w.forget(known_files.pop(path)[0])
        report.removed += len(gone)
        w.forget_failures(p for p in known_failures if p not in seen and not p.startswith(unlisted))


def _named_under(root: Path, given: Path, paths: Iterable[Path | str]) -> list[Path] | None:
    """Named paths as paths under the resolved `root` (passed as `given`), each once, none under another
    (so that each file is listed once); those outside the root are dropped (a rescan never sees them).
    None when one names the root itself: that is a rescan."""
    named: set[Path] = set()
    for path in paths:
        path = Path(os.path.abspath(path))
        for base in (given, root):
            try:
                rel = path.relative_to(base)
            except ValueError:
                continue
            if rel == Path("."):
                return None
            named.add(root / rel)
            break
    kept: list[Path] = []
    for path in sorted(named):  # by parts: what lies under a folder sorts right after it
        if not kept or kept[-1] not in path.parents:
            kept.append(path)
    return kept


def _header_or_none(path: str) -> HeaderInfo | None:
    try:
        return read_header(path)
    except DecodeError:
        return None


def remove_paths(meta: MetadataStore, store: Store, paths: Iterable[Path]) -> list[Path]:
    """Forget files (not delete them from disk); vectors go when no copy is left. Returns the paths that
    were indexed (the others were not)."""
    asked = {_path_key(path): path for path in paths}
    with IngestWriter(meta) as w:
        removed = [asked[key] for key in w.forget_paths(asked)]
        orphans = w.delete_orphans()
        if orphans:
            store.remove(orphans)
            store.save()
        w.commit()
    return removed
