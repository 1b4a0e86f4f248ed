"""The few reads `retrieval stats` and `retrieval list` make, through the standard library's sqlite3.

Importing SQLAlchemy costs a command more than everything else it does (BENCHMARKS.md, "CLI start"), so a
database already at the newest schema that passes SQLite's quick check is read here, read-only. Anything
else (an older or newer schema, damage, a disk that refuses even a read-only open) is left to
`MetadataStore`, which migrates, opens read-only or refuses with the usual message.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from retrieval.errors import IndexCorruptError, StorageError

DB_NAME = "meta.sqlite"
#: The newest revision in migrations/versions. A database already at it opens without Alembic, whose imports
#: cost every command a third of a second (BENCHMARKS.md, "CLI start"); tests/test_migrations.py checks
#: that it is Alembic's head.
HEAD_REVISION = "0003"
#: Ids per `IN (...)` list: well under SQLite's bound-parameter limit, whatever the SQLite build.
IN_CHUNK = 500
#: Databases up to this size are quick-checked each time they open. The check reads every page: 1.5 s for
#: the 346 MB of a million files, warm, far more from a cold disk, before every command. Larger ones are
#: checked by `retrieval doctor`; every read still reports the damage it meets, as one line.
QUICK_CHECK_MAX_BYTES = 64 * 2**20
T = TypeVar("T")
#: SQLite's own words for a damaged file; any other failure to open is first blamed on the disk if it refuses.
_DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def _error_name(exc: BaseException) -> str:
    return str(getattr(getattr(exc, "orig", exc), "sqlite_errorname", None) or "")


def _detail(exc: BaseException) -> str:
    """The first line of a database error, short (it may quote garbage bytes)."""
    text = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _is_damage(exc: BaseException) -> bool:
    """Whether SQLite's error means a damaged file (not a refusing disk, a busy lock or a bug of ours)."""
    orig = getattr(exc, "orig", exc)
    text = str(orig)
    return (
        isinstance(orig, UnicodeError)
        or _error_name(orig).startswith(_DAMAGE)
        or text.startswith(("no such table", "no such column", "malformed", "Could not decode to UTF-8"))
    )


def chunked(values: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """`values` in lists of at most `size`, for `IN (...)` clauses."""
    batch: list[T] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class ImageRecord:
    """What a search result needs to know about one content."""

    id: int
    path: str
    root: str
    width: int
    height: int
    format: str
    captured_at: datetime | None
    copies: int


def checked_at_open(path: Path) -> bool:
    """Whether opening the database at `path` quick-checks it (see QUICK_CHECK_MAX_BYTES)."""
    try:
        return path.stat().st_size <= QUICK_CHECK_MAX_BYTES
    except OSError:
        return True


def damaged(path: Path, detail: str) -> IndexCorruptError:
    """The database holds the only record of paths: damaged, it cannot be rebuilt from the vectors."""
    return IndexCorruptError(
        f"database {path} is damaged ({detail}); restore it from a backup, or delete the index "
        f"folder {path.parent} and ingest again (the photos themselves are not touched)"
    )


class MetadataReader:
    """A read-only view of an index's database at the current schema: its manifest, counts, indexed folders
    and failed files, the same answers as `MetadataStore`'s methods of these names. Reads only, so a
    server's threads may share it. Close it explicitly."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn, self.path = conn, path

    @classmethod
    def open(cls, path: Path) -> MetadataReader | None:
        """The reader of the database at `path`, or None when `MetadataStore` must open it instead: it is
        not at HEAD_REVISION, fails the quick check, or cannot be read (the error is then left for
        `MetadataStore` to explain)."""
        try:
            conn = sqlite3.connect(
                f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30, check_same_thread=False
            )
        except sqlite3.Error:
            return None
        try:
            if checked_at_open(path) and conn.execute("PRAGMA quick_check").fetchall() != [("ok",)]:
                raise sqlite3.DatabaseError("quick_check failed")
            # A new database has no alembic_version table: "no such table", and MetadataStore creates it.
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            if revision != [(HEAD_REVISION,)]:
                raise sqlite3.DatabaseError(f"schema revision {revision}, not {HEAD_REVISION}")
            reader = cls(conn, path)
            reader.get_manifest()  # undecodable values: MetadataStore says the file is damaged
        except (sqlite3.Error, StorageError, IndexCorruptError, UnicodeError):
            conn.close()
            return None
        return reader

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, *params: object) -> list[Any]:
        """The rows of one query; garbage that `quick_check` does not look at is damage, as in
        `MetadataStore.reading`, and any other failure the disk's."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except (sqlite3.Error, UnicodeError) as exc:
            if _is_damage(exc):
                raise damaged(self.path, _detail(exc)) from exc
            raise StorageError(
                f"cannot read database {self.path}: {exc}; nothing was changed: check the disk, then run "
                "the command again"
            ) from exc

    def get_manifest(self) -> dict[str, Any]:
        rows = self._rows("SELECT key, value FROM manifest")
        try:
            return {key: json.loads(value) for key, value in rows}
        except ValueError as exc:
            raise damaged(self.path, f"{type(exc).__name__}: {exc}"[:200]) from exc

    def counts(self) -> dict[str, int]:
        (row,) = self._rows(
            "SELECT (SELECT count(*) FROM roots), (SELECT count(*) FROM files),"
            " (SELECT count(*) FROM contents), (SELECT count(*) FROM contents WHERE embedded = 1),"
            " (SELECT count(*) FROM failures)"
        )
        return dict(zip(("roots", "files", "images", "embedded", "failures"), map(int, row), strict=True))

    def roots(self) -> list[str]:
        """The folders ingested into this index, sorted."""
        return [path for (path,) in self._rows("SELECT path FROM roots ORDER BY path")]

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        rows = self._rows(
            "SELECT path, reason FROM failures ORDER BY path LIMIT ?", -1 if limit is None else limit
        )
        return [(path, reason) for path, reason in rows]

    def records(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        """Metadata of embedded contents, each with its first path (by path order) and its copy count."""
        out: dict[int, ImageRecord] = {}
        for chunk in chunked(ids):
            # SQLite takes bare columns (roots.path) from the row that min() picked. embedded_at is read, as
            # MetadataStore reads the whole row, so that garbage there is met as damage by both.
            rows = self._rows(
                "SELECT contents.id, min(files.path), roots.path, contents.width, contents.height,"
                " contents.format, contents.captured_at, contents.embedded_at, count(files.id) FROM contents"
                " JOIN files ON files.content_id = contents.id JOIN roots ON roots.id = files.root_id"
                f" WHERE contents.id IN ({', '.join('?' * len(chunk))}) AND contents.embedded = 1"
                " GROUP BY contents.id",
                *chunk,
            )
            for id, path, root, width, height, format, captured_at, embedded_at, copies in rows:
                try:
                    captured = None if captured_at is None else datetime.fromisoformat(captured_at)
                    _ = None if embedded_at is None else datetime.fromisoformat(embedded_at)
                except (TypeError, ValueError) as exc:
                    raise damaged(self.path, f"{type(exc).__name__}: {exc}"[:200]) from exc
                out[id] = ImageRecord(id, path, root, width, height, format, captured, copies)
        return out
