"""Vector stores: where an index's vectors live, behind one interface, and the one factory that opens them.

Two implementations, chosen when an index is created and recorded in its manifest (`store` key):

    "hnswlib-int8"  `hnsw/`: a folder of files next to the database (the default)
    "milvus"        `milvus.py`: a Milvus collection, either Milvus Lite (embedded, a data folder inside the
                    index: `vectors/milvus.db`) or a Milvus server named by its URI

pymilvus is imported only when a Milvus store is opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retrieval.errors import UsageError
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
    "rebuild_store",
    "saved_stats",
    "vectors_present",
    "vectors_saved",
]

#: Written by `create_store` into every store's folder: says that vectors were saved there, whichever store
#: holds them (a Milvus server keeps nothing else locally).
MARKER = "store.json"


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

        store: Store = MilvusStore.create(spec, folder, dim)
    else:
        from retrieval.vectors.hnsw.store import StoreParams, VectorStore

        store = VectorStore.create(folder, dim, StoreParams())
    _write_marker(spec, folder)
    return store


def _write_marker(spec: StoreSpec, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"store": spec.kind}))
    tmp.replace(folder / MARKER)


def vectors_present(folder: Path) -> bool:
    """Whether a store was ever created in `folder` (its database may have been lost since).

    Indexes made before the marker existed are recognised by the default store's manifest or by Milvus
    Lite's data folder."""
    from retrieval.vectors.hnsw.store import VectorStore
    from retrieval.vectors.milvus import LITE_DIR

    return (folder / MARKER).is_file() or VectorStore.exists(folder) or (folder / LITE_DIR).exists()


def saved_stats(spec: StoreSpec, folder: Path) -> dict[str, Any] | None:
    """The store's sizes and settings as last saved, read without opening it (a million-vector graph takes
    seconds to load; `retrieval stats` should not); None for a store that only its server can tell about.

    Raises:
        IndexNotFoundError: no store in `folder`.
        IndexCorruptError: its manifest is damaged.
    """
    if spec.kind != DEFAULT_KIND:
        return None
    from retrieval.vectors.hnsw.fileformat import saved_stats as from_manifest

    return from_manifest(folder)


def rebuild_store(spec: StoreSpec, folder: Path, *, dim: int | None) -> tuple[Store, int]:
    """Rebuild a damaged store from the vectors it keeps, open for writing; returns it and how many vectors
    were lost. A Milvus collection is repaired by its server, not here.

    Raises:
        IndexCorruptError: nothing could be recovered.
        UsageError: the store repairs itself elsewhere (Milvus).
    """
    if spec.kind != DEFAULT_KIND:
        raise UsageError(f"a {spec.kind} vector store is repaired by its own server, not here")
    from retrieval.vectors.hnsw.store import VectorStore

    store, lost = VectorStore.rebuild(folder, dim=dim)
    return store, lost


def vectors_saved(folder: Path) -> bool:
    """Whether a store in `folder` may hold vectors, which a lost database would orphan: a Milvus store (its
    count lives in the server), or a default store that saved at least one vector or whose manifest cannot be
    read. An empty default store (made ahead of the first ingest, say) holds nothing to lose."""
    if not folder.is_dir() or not vectors_present(folder):  # a new index imports no store module here
        return False
    from retrieval.vectors.hnsw.store import VectorStore

    try:
        kind = json.loads((folder / MARKER).read_text()).get("store", DEFAULT_KIND)
    except (OSError, ValueError, AttributeError):
        kind = DEFAULT_KIND
    count = VectorStore.saved_count(folder) if kind == DEFAULT_KIND else None
    return count != 0
