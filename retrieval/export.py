"""Export an index to Parquet (`retrieval export`): one row per image, its metadata and its float32 vector.

For people who analyse embeddings elsewhere (pandas, DuckDB, Spark, Polars). The rows stream from the
database and the vectors from the store one row group at a time, so memory stays bounded whatever the size
of the index (BENCHMARKS.md, "Export"). pyarrow comes with the `export` extra.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import UsageError
from retrieval.metadata import ExportColumn

#: Rows per Parquet row group (and per read from the database and the store): 10k rows of 512-dim vectors
#: are 20 MB, big enough for fast scans, small enough to hold a few in memory.
ROW_GROUP = 10_000


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote: rows, the vector dimension, bytes on disk, and rows left out because an
    ingest removed their vector while the export ran."""

    path: str
    rows: int
    dim: int
    bytes: int
    skipped: int
    seconds: float


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError(
            "export needs pyarrow, which is not installed: pip install 'retrieval[export]'"
        ) from None
    return pyarrow


def _arrow_type(pa: Any, kind: type) -> Any:
    if kind is bool:
        return pa.bool_()
    if kind is int:
        return pa.int64()
    if kind is float:
        return pa.float64()
    if kind is datetime:
        return pa.timestamp("us")
    if kind is date:
        return pa.date32()
    if kind is bytes:
        return pa.binary()
    return pa.string()


def check_output(path: Path) -> Path:
    """The absolute output path, refused (UsageError, one line) when it cannot be written: a folder, a
    missing or read-only parent folder."""
    out = Path(os.path.abspath(Path(path).expanduser()))
    if out.is_dir():
        raise UsageError(f"cannot write {out}: it is a folder; pass a file name such as {out}/index.parquet")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {out}: folder {out.parent} is not writable")
    return out


def write_parquet(
    path: Path,
    columns: Sequence[ExportColumn],
    chunks: Iterable[list[dict[str, Any]]],
    vectors: Callable[[list[int]], tuple[list[int], np.ndarray]],
    dim: int,
) -> ExportReport:
    """Write `chunks` of metadata rows and their vectors to `path`, one row group per chunk.

    `vectors(ids)` gives back the ids it has vectors for (in order) and those (n, dim) vectors; rows without
    one are left out. The file is written beside `path` and renamed over it at the end: a failed export
    leaves no half-written file.

    Raises:
        UsageError: pyarrow is missing; `path` cannot be written.
    """
    pa = _pyarrow()
    started = time.monotonic()
    out = check_output(path)
    fields = [pa.field(c.name, _arrow_type(pa, c.kind)) for c in columns]
    schema = pa.schema([*fields, pa.field("vector", pa.list_(pa.float32(), dim))])
    rows = skipped = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with pa.parquet.ParquetWriter(tmp, schema) as writer:
            for chunk in chunks:
                kept, vecs = vectors([int(row["id"]) for row in chunk])
                if len(kept) != len(chunk):
                    wanted = set(kept)
                    skipped += len(chunk) - len(kept)
                    chunk = [row for row in chunk if int(row["id"]) in wanted]
                if not chunk:
                    continue
                arrays = [
                    pa.array([row[c.name] for row in chunk], type=f.type)
                    for c, f in zip(columns, fields, strict=True)
                ]
                flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1), type=pa.float32())
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, dim))
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=len(chunk))
                rows += len(chunk)
        os.replace(tmp, out)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportReport(str(out), rows, dim, out.stat().st_size, skipped, time.monotonic() - started)
