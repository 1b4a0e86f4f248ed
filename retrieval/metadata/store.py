"""Image metadata in SQLite (SQLAlchemy 2.0, WAL), its schema owned by Alembic migrations.

A *content* is one distinct image (by content hash) and owns one vector: its row id is the
vector's label in the vector store. A *file* is a path on disk pointing at a content, so
identical copies and moved files share one vector.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import quote

import numpy as np
from sqlalchemy import and_, create_engine, delete, event, func, or_, select
from sqlalchemy.engine import URL, Connection, ExceptionContext
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from retrieval.errors import IndexCorruptError, SchemaTooNewError, StorageError
from retrieval.metadata.filters import Filter, bounding_box, haversine_km
from retrieval.metadata.models import Content, Failure, File, Manifest, Root
from retrieval.metadata.reader import (
    HEAD_REVISION,
    ImageRecord,
    _detail,
    _error_name,
    _is_damage,
    checked_at_open,
    chunked,
    damaged,
)
from retrieval.storage import write_error, write_refusal

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


def under_folder(column: Any, folder: str) -> tuple[Any, Any]:
    """`column` holds a path under `folder`, as a range of the path index: SQLite compares text byte by
    byte, and every path that starts with "folder/" sorts between "folder/" and "folder0" ("0" follows "/").
    (LIKE would need its wildcards escaped in file names and would not use the index.)"""
    prefix = folder.rstrip("/") + "/"
    return column >= prefix, column < prefix[:-1] + "0"


@dataclass(frozen=True)
class IndexedFile:
    """One file holding a content, as the last ingest saw it: its path, the indexed folder it lies in, and
    its size and modification time then (what tells whether the file on disk is still that file)."""

    path: str
    root: str
    size: int
    mtime_ns: int


def relative_folder(path: str, root: str) -> str:
    """The folder of the file at `path` relative to the indexed folder `root`, "/"-separated; "" for a file
    at the top (what `files.folder` holds, for `--in FOLDER`)."""
    folder = os.path.dirname(path)
    root = root.rstrip(os.sep) or os.sep
    if folder == root:
        return ""
    try:
        relative = os.path.relpath(folder, root)
    except ValueError:
        return ""
    if relative == "." or relative.startswith(".."):
        return ""
    return relative.replace(os.sep, "/")


def _under(column: Any, folder: str) -> Any:
    """`under_folder` as one condition."""
    return and_(*under_folder(column, folder))


def _filter_conditions(flt: Filter) -> tuple[list[Any], list[Any]]:
    """The filter as SQL conditions: (on contents alone, on a content and one of its files together)."""
    on_content: list[Any] = []
    if flt.formats:
        on_content.append(Content.format.in_(flt.formats))
    if flt.min_width is not None:
        on_content.append(Content.width >= flt.min_width)
    if flt.min_height is not None:
        on_content.append(Content.height >= flt.min_height)
    if flt.camera:
        on_content.append(
            or_(
                Content.camera_make.icontains(flt.camera, autoescape=True),
                Content.camera_model.icontains(flt.camera, autoescape=True),
            )
        )
    if flt.near is not None and flt.within_km is not None:
        low, high, spans = bounding_box(flt.near, flt.within_km)
        on_content.append(Content.gps_lat.between(low, high))
        on_content.append(or_(*(Content.gps_lon.between(west, east) for west, east in spans)))
    on_file: list[Any] = []
    if flt.folders:
        on_file.append(
            or_(
                *(
                    _under(File.path, folder)
                    if folder.startswith("/")
                    else or_(File.folder == folder, _under(File.folder, folder))
                    for folder in flt.folders
                )
            )
        )
    # Capture time where EXIF has one, else the file's modification time (in local time, as people see it).
    if flt.after_moment is not None:
        after = flt.after_moment
        on_file.append(
            or_(
                Content.captured_at >= after,
                and_(Content.captured_at.is_(None), File.mtime_ns >= _epoch_ns(after)),
            )
        )
    if flt.before_moment is not None:
        before = flt.before_moment
        on_file.append(
            or_(
                and_(Content.captured_at.is_not(None), Content.captured_at < before),
                and_(Content.captured_at.is_(None), File.mtime_ns < _epoch_ns(before)),
            )
        )
    return on_content, on_file


def _epoch_ns(moment: datetime) -> int:
    """A naive local moment (or an aware one) as nanoseconds since the epoch, as `files.mtime_ns` counts."""
    return int(moment.timestamp()) * 1_000_000_000


def migrations_dir() -> Path:
    """The Alembic scripts, shipped inside this package."""
    return Path(__file__).resolve().parent / "migrations"


def _alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str:
    """Alembic's head, read from the migration scripts (`HEAD_REVISION` is the fast copy)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _on_connect(dbapi_conn: Any, _record: Any, *, read_only: bool = False) -> None:
    cur = dbapi_conn.cursor()
    try:
        if not read_only:  # a read-only connection takes the journal mode the database has
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
    except UnicodeDecodeError as exc:
        # SQLite's message quoted a garbled schema, which Python could not decode: damage, told as such.
        damage = sqlite3.DatabaseError(f"the schema holds bytes that are not text ({exc.reason})")
        damage.sqlite_errorname = "SQLITE_CORRUPT"
        raise damage from exc
    finally:
        cur.close()


#: Failures that a disk refusing writes causes (a WAL database needs its -shm file even to be read).
_STORAGE = ("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_PERM")
#: How a database is opened when its folder refuses writes: read-only through the usual locks (works while
#: the -shm file can be used), else as immutable (the file as it is, no locks, no -shm file needed).
_READ_ONLY_MODES = ({"mode": "ro"}, {"mode": "ro", "immutable": "1"})


def _reads(method: Callable[P, R]) -> Callable[P, R]:
    """A method that reads the database, inside `MetadataStore.reading()`."""

    @functools.wraps(method)
    def read(*args: P.args, **kwargs: P.kwargs) -> R:
        with args[0].reading():  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return read


def _stored_revision(conn: Connection) -> str | None:
    """The schema revision Alembic recorded in the database (None for a new database)."""
    has_table = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).first()
    if has_table is None:
        return None
    row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return None if row is None else str(row[0])


class MetadataStore:
    """The SQLite database of one index: opened (and migrated) once, closed explicitly.

    When the index folder refuses writes (a full disk, a read-only mount, no permission) the database opens
    read-only, so that commands that only read keep working; `read_only` then says why, and
    `require_writable()` refuses a write with that reason.
    """

    #: Filters' id sets `allowed_ids` keeps (each 8 bytes per allowed image).
    allowed_sets_kept = 8

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        self.path = Path(path)
        #: Why the database could only be opened read-only (the OS's words), or None.
        self.read_only: str | None = None
        # Filters' id sets by (filter, state of the database files): a server's next page or next query
        # under the same filter skips the SQL (~1 s for a million ids) and the store reuses the same array.
        self._allowed_cache: OrderedDict[tuple[Filter, tuple[int, ...]], np.ndarray] = OrderedDict()
        self._allowed_lock = threading.Lock()
        self.engine: SqlEngine = self._connect()
        try:
            self._check_and_migrate(migrate)
        except DatabaseError as exc:
            self.engine.dispose()
            self._open_read_only(exc)
        except (ValueError, UnicodeError) as exc:  # garbage bytes where Alembic reads its revision
            self.engine.dispose()
            raise self._damaged(f"{type(exc).__name__}: {exc}") from exc
        except Exception:
            self.engine.dispose()
            raise

    def _connect(self, params: dict[str, str] | None = None) -> SqlEngine:
        if params is None:
            engine = create_engine(f"sqlite:///{self.path}")
        else:
            database = "file:" + quote(str(self.path))
            engine = create_engine(URL.create("sqlite", database=database, query={**params, "uri": "true"}))
        event.listen(engine, "connect", functools.partial(_on_connect, read_only=params is not None))
        event.listen(engine, "handle_error", self._on_error)
        return engine

    def _on_error(self, context: ExceptionContext) -> None:
        """Damage met by any statement, a read or a write, is refused as damage (IndexCorruptError), in one
        line: not passed on as an OperationalError that would read as a failed write, nor as a traceback."""
        if _is_damage(context.original_exception):
            raise self._damaged(_detail(context.original_exception)) from context.original_exception

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around a read: a disk that fails it is one StorageError; a value that cannot be decoded (garbage
        bytes that `quick_check` does not look at) is damage, one IndexCorruptError."""
        try:
            yield
        except DatabaseError as exc:
            if _is_damage(exc):
                raise self._damaged(_detail(exc)) from exc
            raise StorageError(
                f"cannot read database {self.path}: {_detail(exc)}; nothing was changed: check the disk, "
                "then run the command again"
            ) from exc
        except (ValueError, UnicodeError) as exc:
            raise self._damaged(f"{type(exc).__name__}: {exc}"[:200]) from exc

    def _open_read_only(self, failure: DatabaseError) -> None:
        """After `failure` to open normally: damage is refused; a disk that refuses writes gets a read-only
        database (it must be at the schema this version writes: an upgrade would need a write)."""
        detail = _detail(failure)
        name = _error_name(failure)
        if _is_damage(failure) or not name.startswith(_STORAGE):
            raise self._damaged(detail) from failure
        refusal = write_refusal(self.path.parent)
        if refusal is None and not os.access(self.path, os.W_OK):
            refusal = os.strerror(errno.EACCES)
        if refusal is None:  # the folder takes writes: the disk itself failed SQLite, nothing is damaged
            raise StorageError(
                f"cannot open database {self.path}: {detail}; nothing was changed: check the disk, then run "
                "the command again"
            ) from failure
        for params in _READ_ONLY_MODES:
            self.engine = self._connect(params)
            try:
                self._check_and_migrate(migrate=False)
            except DatabaseError as exc:
                self.engine.dispose()
                if _is_damage(exc) or not _error_name(exc).startswith(_STORAGE):
                    raise self._damaged(_detail(exc)) from exc
                continue
            except Exception:
                self.engine.dispose()
                raise
            self.read_only = refusal
            if self.revision not in (None, head_revision()):
                self.engine.dispose()
                raise write_error(self.path.parent, f"{refusal} (the database must be upgraded first)")
            return
        raise StorageError(
            f"cannot open database {self.path}: {refusal}; nothing was changed: make room (or fix the "
            "folder) and run the command again"
        ) from failure

    def require_writable(self) -> None:
        """Raises IndexWriteError, with the OS's reason, when the database was opened read-only."""
        if self.read_only is not None:
            raise write_error(self.path.parent, self.read_only)

    def _damaged(self, detail: str) -> IndexCorruptError:
        return damaged(self.path, detail)

    def check(self) -> None:
        """Read every page (SQLite's quick_check), as an open does for a database of up to
        QUICK_CHECK_MAX_BYTES; `retrieval doctor` calls it for one of any size.

        Raises:
            IndexCorruptError: the database is damaged.
        """
        with self.engine.connect() as conn:
            self._quick_check(conn)

    def _quick_check(self, conn: Connection) -> None:
        # quick_check reports damage as rows of text, not as an error: "ok" is the only good answer.
        verdict = [str(row[0]) for row in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
        if verdict != ["ok"]:
            lines = [line for row in verdict for line in row.splitlines() if "***" not in line]
            raise self._damaged((lines or ["quick_check failed"])[0])

    def _check_and_migrate(self, migrate: bool) -> None:
        with self.engine.begin() as conn:
            if checked_at_open(self.path):
                self._quick_check(conn)
            if _stored_revision(conn) == HEAD_REVISION:
                return
            from alembic import command
            from alembic.runtime.migration import MigrationContext
            from alembic.script import ScriptDirectory

            cfg = _alembic_config()
            script = ScriptDirectory.from_config(cfg)
            current = MigrationContext.configure(conn).get_current_revision()
            known = {rev.revision for rev in script.walk_revisions()}
            if current is not None and current not in known:
                raise SchemaTooNewError(
                    f"database {self.path} has schema revision {current}, newer than this retrieval "
                    f"(knows up to {script.get_current_head()}); upgrade retrieval"
                )
            if migrate and current != script.get_current_head():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")

    @property
    @_reads
    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            return _stored_revision(conn)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifest -------------------------------------------------------------------------------

    @_reads
    def get_manifest(self) -> dict[str, Any]:
        with Session(self.engine) as s:
            return {row.key: json.loads(row.value) for row in s.scalars(select(Manifest))}

    def set_manifest(self, session: Session, **values: Any) -> None:
        for key, value in values.items():
            session.merge(Manifest(key=key, value=json.dumps(value)))

    # -- queries used by search ------------------------------------------------------------------

    @_reads
    def records(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        """Metadata of embedded contents, each with its first path (by path order) and its copy count."""
        if not ids:
            return {}
        out: dict[int, ImageRecord] = {}
        with Session(self.engine) as s:
            rows = s.execute(
                # SQLite takes bare columns (Root.path) from the row that min() picked.
                select(Content, func.min(File.path), Root.path, func.count(File.id))
                .join(File, File.content_id == Content.id)
                .join(Root, Root.id == File.root_id)
                .where(Content.id.in_(list(ids)), Content.embedded.is_(True))
                .group_by(Content.id)
            ).all()
            for content, path, root, copies in rows:
                out[content.id] = ImageRecord(
                    id=content.id,
                    path=path,
                    root=root,
                    width=content.width,
                    height=content.height,
                    format=content.format,
                    captured_at=content.captured_at,
                    copies=copies,
                )
        return out

    def allowed_ids(self, flt: Filter) -> np.ndarray:
        """The ids (sorted, unique, int64; read-only) of the embedded contents `flt` allows: what a filtered
        search asks the vector store to answer from. A content held by several files is allowed when any
        one of its files matches. Computed in SQL over indexed columns; a place filter takes the bounding
        box there and the exact great-circle distance here. The last few sets are kept until the database
        changes (any commit, from any process, changes its files' size or time)."""
        key = (flt, self._files_state())
        with self._allowed_lock:
            ids = self._allowed_cache.get(key)
            if ids is not None:
                self._allowed_cache.move_to_end(key)
                return ids
        ids = self._allowed_ids(flt)
        ids.flags.writeable = False
        with self._allowed_lock:
            self._allowed_cache[key] = ids
            while len(self._allowed_cache) > self.allowed_sets_kept:
                self._allowed_cache.popitem(last=False)
        return ids

    def _files_state(self) -> tuple[int, ...]:
        """Size, time and inode of the database and its write-ahead log: any commit changes one of them."""
        state: list[int] = []
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = path.stat()
                state += [st.st_size, st.st_mtime_ns, st.st_ino]
            except OSError:
                state += [-1, -1, -1]
        return tuple(state)

    @_reads
    def _allowed_ids(self, flt: Filter) -> np.ndarray:
        on_content, on_file = _filter_conditions(flt)
        place = flt.near is not None and flt.within_km is not None
        columns = [Content.id, Content.gps_lat, Content.gps_lon] if place else [Content.id]
        q = select(*columns).where(Content.embedded.is_(True), *on_content)
        if on_file:
            # No DISTINCT: SQLite would build a b-tree for it; the repeats are dropped below, after a sort.
            q = q.join(File, File.content_id == Content.id).where(*on_file)
        with self.engine.connect() as conn:
            # SQLAlchemy binds the parameters (dates as it stores them); the rows are read from the driver's
            # own cursor: 0.6 s for a million ids where SQLAlchemy's rows took 3.3 s (and numpy reading a
            # list of rows as a 2-d array 74 s).
            result = conn.execute(q)
            rows = result.cursor.fetchall() if result.cursor is not None else []
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        if place:
            assert flt.near is not None and flt.within_km is not None
            lat = np.fromiter((row[1] for row in rows), dtype=np.float64, count=len(rows))
            lon = np.fromiter((row[2] for row in rows), dtype=np.float64, count=len(rows))
            ids = ids[haversine_km(lat, lon, flt.near) <= flt.within_km]
        # Sorted, then repeats (a content found through two of its files) dropped: np.unique's hashing took
        # 1.8 s for a million ids, a sort 30 ms.
        ids.sort()
        return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids

    @_reads
    def matching_paths(self, ids: Sequence[int], flt: Filter) -> dict[int, tuple[str, str]]:
        """Content id -> (path, root) of its first file (in path order) that `flt` allows: the path a
        filtered hit reports, so that "only in Holidays/" shows the copy in Holidays/."""
        _, on_file = _filter_conditions(flt)
        out: dict[int, tuple[str, str]] = {}
        with Session(self.engine) as s:
            for chunk in chunked(ids):
                rows = s.execute(
                    # SQLite takes the bare column (Root.path) from the row that min() picked.
                    select(File.content_id, func.min(File.path), Root.path)
                    .join(Content, Content.id == File.content_id)
                    .join(Root, Root.id == File.root_id)
                    .where(File.content_id.in_(chunk), *on_file)
                    .group_by(File.content_id)
                )
                out.update((int(i), (str(p), str(r))) for i, p, r in rows)
        return out

    @_reads
    def content_id_for_path(self, path: Path | str) -> int | None:
        with Session(self.engine) as s:
            return s.scalar(select(File.content_id).where(File.path == str(path)))

    @_reads
    def embedded_content_id(self, digest: str) -> int | None:
        """The id of the embedded content with this hash, if any (safe from the decode threads)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(Content.id).where(Content.hash == digest, Content.embedded.is_(True))
            ).first()
        return row[0] if row else None

    @_reads
    def embedded_ids(self) -> set[int]:
        with Session(self.engine) as s:
            return set(s.scalars(select(Content.id).where(Content.embedded.is_(True))))

    @_reads
    def embedded_count(self) -> int:
        """How many contents are embedded: a count in SQLite, where `embedded_ids` builds a Python set."""
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count(Content.id)).where(Content.embedded.is_(True))) or 0)

    @_reads
    def counts(self) -> dict[str, int]:
        with Session(self.engine) as s:
            return {
                "roots": s.scalar(select(func.count(Root.id))) or 0,
                "files": s.scalar(select(func.count(File.id))) or 0,
                "images": s.scalar(select(func.count(Content.id))) or 0,
                "embedded": s.scalar(select(func.count(Content.id)).where(Content.embedded.is_(True))) or 0,
                "failures": s.scalar(select(func.count(Failure.id))) or 0,
            }

    @_reads
    def roots(self) -> list[str]:
        """The folders ingested into this index, sorted."""
        with Session(self.engine) as s:
            return list(s.scalars(select(Root.path).order_by(Root.path)))

    @_reads
    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        with Session(self.engine) as s:
            q = select(Failure.path, Failure.reason).order_by(Failure.path)
            if limit is not None:
                q = q.limit(limit)
            return [(p, r) for p, r in s.execute(q)]

    def mark_not_embedded(self, session: Session, ids: Iterable[int]) -> None:
        for chunk in chunked(ids):
            for content in session.scalars(select(Content).where(Content.id.in_(chunk))):
                content.embedded = False
                content.embedded_at = None

    def delete_orphans(self, session: Session) -> list[int]:
        """Delete contents that no file points at any more; return their ids (their vectors must go too)."""
        orphan_ids = list(
            session.scalars(
                select(Content.id).where(~select(File.id).where(File.content_id == Content.id).exists())
            )
        )
        for chunk in chunked(orphan_ids):
            session.execute(delete(Content).where(Content.id.in_(chunk)))
        return orphan_ids

    @_reads
    def content_hashes(self, ids: Iterable[int]) -> dict[int, str]:
        """Content id -> content hash (what thumbnails and ETags are keyed on)."""
        out: dict[int, str] = {}
        with Session(self.engine) as s:
            for chunk in chunked(ids):
                rows = s.execute(select(Content.id, Content.hash).where(Content.id.in_(chunk)))
                out.update((int(i), str(h)) for i, h in rows)
        return out

    @_reads
    def paths_of(self, ids: Iterable[int]) -> dict[int, list[str]]:
        """Content id -> every file path holding it, in path order."""
        out: dict[int, list[str]] = {}
        with Session(self.engine) as s:
            for chunk in chunked(ids):
                rows = s.execute(
                    select(File.content_id, File.path).where(File.content_id.in_(chunk)).order_by(File.path)
                )
                for content_id, path in rows:
                    out.setdefault(int(content_id), []).append(str(path))
        return out

    @_reads
    def files_of(self, content_id: int) -> list[IndexedFile]:
        """Every file holding `content_id`, in path order, with its root folder and its recorded stat."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(File.path, Root.path, File.size, File.mtime_ns)
                .join(Root, Root.id == File.root_id)
                .where(File.content_id == content_id)
                .order_by(File.path)
            )
            return [IndexedFile(str(p), str(r), int(size), int(mtime)) for p, r, size, mtime in rows]

    @_reads
    def last_and_pending_ids(self) -> tuple[int, list[int]]:
        """The highest content id committed, and the ids of contents still waiting for their vector: where
        a crash can have left vectors without rows."""
        with Session(self.engine) as s:
            last = s.scalar(select(func.max(Content.id))) or 0
            return int(last), [int(i) for i in s.scalars(select(Content.id).where(~Content.embedded))]

    @_reads
    def copied_ids(self) -> list[int]:
        """Contents stored under more than one file path (byte-identical copies)."""
        with Session(self.engine) as s:
            return list(
                s.scalars(select(File.content_id).group_by(File.content_id).having(func.count(File.id) > 1))
            )

    @_reads
    def count_files_under(self, folder: str) -> int:
        """How many indexed files lie under `folder` (whichever indexed folder found them)."""
        with Session(self.engine) as s:
            return s.scalar(select(func.count(File.id)).where(*under_folder(File.path, folder))) or 0

    # -- export ------------------------------------------------------------------------------------

    def export_columns(self) -> list[ExportColumn]:
        """The columns `export_rows` gives, read from the tables so that a new metadata column is exported
        with no change here: id, path (the first file, by path), root, copies, then every column of the
        content and of that file but the keys between tables and the ingest's own state. A file column
        named like a content column is prefixed "file_"."""
        return [ExportColumn(name, kind) for name, kind, _ in self._export_selection()]

    def _export_selection(self) -> list[tuple[str, type, Any]]:
        picked: list[tuple[str, type, Any]] = [
            ("id", int, Content.id),
            ("path", str, func.min(File.path)),  # SQLite takes the bare columns below from min()'s row
            ("root", str, Root.path),
            ("copies", int, func.count(File.id)),
        ]
        taken = {name for name, _, _ in picked}
        for table, prefix in ((Content.__table__, ""), (File.__table__, "file_")):
            left_out = _NOT_EXPORTED | ({"id", "path"} if prefix else {"id"})
            for column in table.columns:
                if column.name in left_out:
                    continue
                name = column.name if column.name not in taken else prefix + column.name
                taken.add(name)
                picked.append((name, _python_type(column), column))
        return picked

    def export_rows(self, chunk: int = 10_000) -> Generator[list[dict[str, Any]], None, None]:
        """Every embedded content as a row of `export_columns`, in id order, `chunk` rows at a time.

        The rows come from one SQL statement, read as they are needed: memory stays flat whatever the size
        of the index, and the rows are one snapshot of the database (WAL), however long the caller takes
        and whatever an ingest commits meanwhile."""
        selection = self._export_selection()
        stmt = (
            select(*(expr.label(name) for name, _, expr in selection))
            .select_from(Content)
            .join(File, File.content_id == Content.id)
            .join(Root, Root.id == File.root_id)
            .where(Content.embedded.is_(True))
            .group_by(Content.id)
            .order_by(Content.id)
        )
        with self.reading(), self.engine.connect() as conn:
            result = conn.execution_options(yield_per=chunk).execute(stmt)
            for part in result.mappings().partitions(chunk):
                yield [dict(row) for row in part]


#: Columns an export leaves out: the keys between tables and the ingest's bookkeeping.
_NOT_EXPORTED = frozenset({"root_id", "content_id", "embedded"})


@dataclass(frozen=True)
class ExportColumn:
    """One column of an export: its name and the Python type of its values (int, float, str, bool,
    datetime, bytes); values may be None."""

    name: str
    kind: type


def _python_type(column: Any) -> type:
    try:
        return column.type.python_type
    except NotImplementedError:
        return str
