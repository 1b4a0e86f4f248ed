"""`IngestWriter`: what one ingest (or removal) reads and writes, over one session.

The ingest pipeline decides what happens to each file; this class is how it reaches the database, so
that the SQL stays in this package. Nothing is committed until `commit()`: the pipeline commits only
after the vectors the rows call embedded are saved.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from retrieval.metadata.models import Content, Failure, File, Root, utcnow
from retrieval.metadata.reader import chunked
from retrieval.metadata.store import MetadataStore, relative_folder, under_folder

#: The EXIF columns of `contents` that `content(photo=...)` and `refresh_content` fill (see
#: files.decoding.PhotoInfo, whose fields have these names).
PHOTO_COLUMNS = ("camera_make", "camera_model", "lens", "gps_lat", "gps_lon")


class IngestWriter:
    """One session over `meta`; use as a context manager (closing it drops what was not committed)."""

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta
        self.session = Session(meta.engine, expire_on_commit=False)
        self._root_paths: dict[int, str] = {}
        # New contents are numbered here, from the highest id when the run starts (see `content`).
        try:
            self._last_id: int = self.session.scalar(select(func.max(Content.id))) or 0
        except BaseException:
            self.session.close()
            raise

    def __enter__(self) -> IngestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    # -- reading what the run starts from ----------------------------------------------------------

    def root_id(self, path: str) -> int:
        """The id of the indexed folder `path`, added on its first ingest."""
        root = self.session.scalar(select(Root).where(Root.path == path))
        if root is None:
            root = Root(path=path, added_at=utcnow())
            self.session.add(root)
            self.session.flush()
        return root.id

    def files_under(self, folder: str) -> dict[str, tuple[File, bool]]:
        """The files under `folder` by path, whichever indexed folder found them (a parent and its
        sub-folder share rows), each with whether its content is embedded."""
        with self.meta.reading():
            rows = self.session.execute(
                select(File, Content.embedded)
                .join(Content, Content.id == File.content_id)
                .where(*under_folder(File.path, folder))
            )
            return {file.path: (file, bool(embedded)) for file, embedded in rows}

    def failures_under(self, folder: str) -> dict[str, Failure]:
        """The recorded failures under `folder` by path, whichever indexed folder recorded them."""
        with self.meta.reading():
            failures = self.session.scalars(select(Failure).where(*under_folder(Failure.path, folder)))
            return {f.path: f for f in failures}

    def files_at(self, paths: Iterable[str], folders: Iterable[str] = ()) -> dict[str, tuple[File, bool]]:
        """`files_under` for a watch batch: the files at `paths` and under each of `folders`."""
        found: dict[str, tuple[File, bool]] = {}
        with self.meta.reading():
            query = select(File, Content.embedded).join(Content, Content.id == File.content_id)
            for chunk in chunked(paths):
                found.update(
                    (f.path, (f, bool(e))) for f, e in self.session.execute(query.where(File.path.in_(chunk)))
                )
            for folder in folders:
                rows = self.session.execute(query.where(*under_folder(File.path, folder)))
                found.update((f.path, (f, bool(e))) for f, e in rows)
        return found

    def failures_at(self, paths: Iterable[str], folders: Iterable[str] = ()) -> dict[str, Failure]:
        """`failures_under` for a watch batch: the failures at `paths` and under each of `folders`."""
        found: dict[str, Failure] = {}
        with self.meta.reading():
            for chunk in chunked(paths):
                found.update(
                    (f.path, f) for f in self.session.scalars(select(Failure).where(Failure.path.in_(chunk)))
                )
            for folder in folders:
                rows = self.session.scalars(select(Failure).where(*under_folder(Failure.path, folder)))
                found.update((f.path, f) for f in rows)
        return found

    def embedded_hashes(self) -> Iterator[str]:
        """The hash of every content that has its vector (what a Ray worker need not embed again)."""
        return iter(self.session.scalars(select(Content.hash).where(Content.embedded)))

    def unembedded_contents(self) -> dict[str, int]:
        """Hash -> id of contents left unembedded (by a crash, or a repair that lost their vectors)."""
        with self.meta.reading():
            rows = self.session.execute(select(Content.hash, Content.id).where(~Content.embedded))
            return {digest: content_id for digest, content_id in rows}

    # -- recording ----------------------------------------------------------------------------------

    def record_failure(
        self, failure: Failure | None, *, root_id: int, path: str, reason: str, size: int, mtime_ns: int
    ) -> Failure:
        """Record (or update) why the file at `path` could not be indexed."""
        if failure is None:
            failure = Failure(root_id=root_id, path=path)
            self.session.add(failure)
        failure.reason = reason
        failure.size = size
        failure.mtime_ns = mtime_ns
        failure.failed_at = utcnow()
        return failure

    def content(
        self,
        *,
        hash: str,
        stale_id: int | None,
        width: int,
        height: int,
        format: str,
        captured_at: datetime | None,
        photo: Any = None,
    ) -> Content:
        """The (not yet embedded) content row of new image bytes: the row `stale_id` that a crash or a repair
        left unembedded when there is one (hashes are unique), else a new row. New rows are numbered here
        (an ingest is the only writer) so that they go to SQLite once per batch, not one flush each."""
        row = self.session.get(Content, stale_id) if stale_id is not None else None
        if row is None:
            self._last_id += 1
            row = Content(id=self._last_id, hash=hash, embedded=False)
        row.width, row.height, row.format, row.captured_at = width, height, format, captured_at
        for name in PHOTO_COLUMNS:  # `photo`: what EXIF says (a PhotoInfo), or None
            setattr(row, name, getattr(photo, name, None))
        self.session.add(row)
        return row

    def refresh_content(
        self,
        content_id: int,
        *,
        width: int,
        height: int,
        format: str,
        captured_at: datetime | None,
        photo: Any,
    ) -> None:
        """Write what a file's header says again over an existing content (`ingest --refresh-metadata`):
        its vector stays."""
        row = self.session.get(Content, content_id)
        if row is None:
            return
        row.width, row.height, row.format, row.captured_at = width, height, format, captured_at
        for name in PHOTO_COLUMNS:
            setattr(row, name, getattr(photo, name, None))

    def root_path(self, root_id: int) -> str:
        """The path of indexed folder `root_id`, looked up once per run (not a query, nor a flush, per file:
        rows go to SQLite once per batch)."""
        if root_id not in self._root_paths:
            with self.session.no_autoflush:
                self._root_paths[root_id] = (
                    self.session.scalar(select(Root.path).where(Root.id == root_id)) or ""
                )
        return self._root_paths[root_id]

    def add_file(self, *, root_id: int, path: str, content_id: int, size: int, mtime_ns: int) -> File:
        row = File(root_id=root_id, path=path, content_id=content_id, size=size, mtime_ns=mtime_ns)
        row.folder = relative_folder(path, self.root_path(root_id))
        self.session.add(row)
        return row

    def set_folder(self, row: File) -> None:
        """Record the folder of `row` relative to its indexed root (rows from before revision 0003 have
        it from the upgrade; this keeps it right)."""
        row.folder = relative_folder(row.path, self.root_path(row.root_id))

    def update_file(self, row: File, *, content_id: int, size: int, mtime_ns: int) -> None:
        row.content_id, row.size, row.mtime_ns = content_id, size, mtime_ns
        self.set_folder(row)

    def mark_embedded(self, contents: Iterable[Content]) -> None:
        """Call these contents embedded and send the pending rows to SQLite (committed by `commit`)."""
        now = utcnow()
        for content in contents:
            content.embedded = True
            content.embedded_at = now
        self.session.flush()

    def forget(self, row: File | Failure) -> None:
        self.session.delete(row)

    def forget_failures(self, paths: Iterable[str]) -> None:
        for chunk in chunked(paths):
            self.session.execute(delete(Failure).where(Failure.path.in_(chunk)))

    def forget_paths(self, paths: Iterable[str]) -> list[str]:
        """Forget the files at these paths; returns those that were indexed."""
        removed: list[str] = []
        for chunk in chunked(paths):
            for row in self.session.scalars(select(File).where(File.path.in_(chunk))):
                self.session.delete(row)
                removed.append(row.path)
        self.session.flush()
        return removed

    def delete_orphans(self) -> list[int]:
        """Delete contents no file points at any more; their ids (their vectors must go too)."""
        return self.meta.delete_orphans(self.session)

    def set_manifest(self, **values: Any) -> None:
        self.meta.set_manifest(self.session, **values)

    def commit(self) -> None:
        self.session.commit()
