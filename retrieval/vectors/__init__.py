"""Vector stores: where an index's vectors live, behind one interface, and the one factory that opens them.

Two implementations, chosen when an index is created and recorded in its manifest (`store` key):

    "hnswlib-int8"  `hnsw/`: a folder of files next to the database (the default)
    "milvus"        `milvus.py`: a Milvus collection, either Milvus Lite (embedded, a data folder inside the
                    index: `vectors/milvus.db`) or a Milvus server named by its URI

pymilvus is imported only when a Milvus store is opened.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.vectors.base import DEFAULT_KIND, KINDS, Store, StoreSpec, parse_kind

__all__ = [
    "DEFAULT_KIND",
    "KINDS",
    "Store",
    "StoreSpec",
    "check_available",
    "create_store",
    "open_store",
    "parse_kind",
]


def check_available(spec: StoreSpec) -> None:
    """Fail early, before a new index records `spec`, when its store cannot be used here.

    Raises:
        UsageError: a Milvus store is asked for and the `milvus` extra is not installed.
        StoreUnavailableError: the Milvus server it names does not answer.
    """
    if spec.kind == "milvus":
        from retrieval.vectors.milvus import probe_server, require_client

        require_client(lite=spec.milvus_uri is None)
        probe_server(spec)


def open_store(spec: StoreSpec, folder: Path, *, writable: bool = False) -> Store:
    """Open the index's vector store.

    Raises:
        IndexNotFoundError: it was never created.
        IndexCorruptError: its files are damaged (the default store).
        StoreUnavailableError: the Milvus server cannot be reached, or Milvus Lite's data is in use.
        UsageError: the Milvus store is asked for and the `milvus` extra is not installed.
    """
    if spec.kind == "milvus":
        from retrieval.vectors.milvus import MilvusStore

        return MilvusStore.open(spec, folder, writable=writable)
    from retrieval.vectors.hnsw.store import VectorStore

    return VectorStore.open(folder, writable=writable)


def create_store(spec: StoreSpec, folder: Path, dim: int) -> Store:
    """Create an empty vector store for `dim`-dimensional vectors and return it open for writing.

    Raises: as `open_store`, and UsageError when one exists already.
    """
    if spec.kind == "milvus":
        from retrieval.vectors.milvus import MilvusStore

        return MilvusStore.create(spec, folder, dim)
    from retrieval.vectors.hnsw.store import StoreParams, VectorStore

    return VectorStore.create(folder, dim, StoreParams())
