"""Metadata: the SQLite database of files, contents and failures, its schema owned by Alembic migrations.

Every SQL query of the project lives in this package.
"""

from retrieval.metadata.filters import Filter, parse_filter
from retrieval.metadata.models import DB_NAME, Base, Content, Failure, File, Manifest, Root, utcnow
from retrieval.metadata.store import (
    IN_CHUNK,
    ExportColumn,
    ImageRecord,
    IndexedFile,
    MetadataStore,
    chunked,
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
    "MetadataStore",
    "Root",
    "chunked",
    "head_revision",
    "parse_filter",
    "relative_folder",
    "utcnow",
]
