"""Metadata: the SQLite database of files, contents and failures, its schema owned by Alembic migrations.

Every SQL query of the project lives in this package. Names load on first use: `retrieval stats` and
`retrieval list` read through `reader` (stdlib sqlite3) and never import SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from retrieval.metadata.reader import DB_NAME, IN_CHUNK, ImageRecord, MetadataReader, chunked

if TYPE_CHECKING:
    from retrieval.metadata.filters import Filter, parse_filter
    from retrieval.metadata.models import Base, Content, Failure, File, Manifest, Root, utcnow
    from retrieval.metadata.store import (
        ExportColumn,
        IndexedFile,
        MetadataStore,
        head_revision,
        relative_folder,
    )
    from retrieval.metadata.writer import IngestWriter

__all__ = [
    "DB_NAME",
    "IN_CHUNK",
    "Base",
    "Content",
    "ExportColumn",
    "Failure",
    "File",
    "Filter",
    "ImageRecord",
    "IndexedFile",
    "IngestWriter",
    "Manifest",
    "MetadataReader",
    "MetadataStore",
    "Root",
    "chunked",
    "head_revision",
    "parse_filter",
    "relative_folder",
    "utcnow",
]

_MODULES = {
    **dict.fromkeys(("Filter", "parse_filter"), "filters"),
    **dict.fromkeys(("Base", "Content", "Failure", "File", "Manifest", "Root", "utcnow"), "models"),
    **dict.fromkeys(
        ("ExportColumn", "IndexedFile", "MetadataStore", "head_revision", "relative_folder"), "store"
    ),
    "IngestWriter": "writer",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    globals()[name] = value
    return value
