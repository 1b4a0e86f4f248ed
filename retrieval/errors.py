"""The one error hierarchy of `retrieval`.

Every error the library raises on purpose derives from `RetrievalError`; the CLI
catches that base once, prints `str(error)` as one line and exits with
`error.exit_code`. Messages name the offending value and what to do instead.

    RetrievalError                    exit 1
    ├── UsageError                    exit 2   bad argument, unknown model name, empty query
    │   └── QueryError                exit 2   a query the index cannot answer (text on ResNet, unknown id)
    ├── WeightsUnavailableError       exit 3   no cached weights and no network; names --weights
    ├── IndexError_                   exit 4   base of problems with an index on disk
    │   ├── IndexNotFoundError                 no index of that name under the home
    │   ├── IndexMismatchError                 index built by another model / dimension
    │   ├── IndexBusyError            exit 5   another process holds the ingest lock
    │   ├── IndexCorruptError         exit 6   a file is truncated, garbled or inconsistent (only real damage)
    │   ├── StorageError                       the disk refuses: full, read-only, permission, I/O error
    │   │   └── IndexWriteError                saving failed (disk full, read-only); the last version stands
    │   ├── StoreUnavailableError              the Milvus server holding the vectors cannot be reached
    │   └── SchemaTooNewError                  database written by a newer `retrieval`
    ├── DecodeError                   exit 7   one file is not a readable image (data during bulk work)
    └── ClusterError                  exit 8   a Ray cluster cannot be reached or lost its workers
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base of every error raised on purpose; rendered by the CLI as one line."""

    exit_code = 1


class UsageError(RetrievalError):
    """An argument the library cannot act on (unknown model, bad value)."""

    exit_code = 2


class QueryError(UsageError):
    """A query that this index cannot answer."""


class WeightsUnavailableError(RetrievalError):
    """Pretrained weights are neither cached nor downloadable."""

    exit_code = 3


class IndexError_(RetrievalError):
    """Base of problems with an index on disk."""

    exit_code = 4


class IndexNotFoundError(IndexError_):
    """No index of that name exists yet."""


class IndexMismatchError(IndexError_):
    """The index was built with another embedder than the one asked for."""


class IndexBusyError(IndexError_):
    """Another process is writing to this index."""

    exit_code = 5


class IndexCorruptError(IndexError_):
    """An index file or the database is damaged or inconsistent."""

    exit_code = 6


class StorageError(IndexError_):
    """The disk under the index refuses what a command needs (no space left, read-only, permission denied, an
    I/O error): nothing is damaged and nothing was changed. Commands that only read keep working where they
    can (the database opens read-only)."""


class IndexWriteError(StorageError):
    """Writing the index failed (disk full, read-only folder, I/O error); the previous version is intact."""


class StoreUnavailableError(IndexError_):
    """The vector store lives in a Milvus server that cannot be reached, or that refused an operation."""


class SchemaTooNewError(IndexError_):
    """The database was written by a newer version of retrieval."""


class DecodeError(RetrievalError):
    """A file could not be decoded as an image; `reason` is short and human-readable."""

    exit_code = 7

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ClusterError(RetrievalError):
    """A distributed ingest cannot reach its Ray cluster, or the cluster failed during the run (what was
    recorded before is saved)."""

    exit_code = 8
